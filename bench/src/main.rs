use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ollama_mesh_bench::load::{self, Arrivals, LoadSpec};
use ollama_mesh_bench::peers::Api;
use ollama_mesh_bench::report::ms;
use ollama_mesh_bench::scenarios::workloads::{long_stream, small_chat};
use ollama_mesh_bench::scenarios::{Bins, Context, Cores, Scenario};
use ollama_mesh_bench::suite;

/// ollama-mesh against the proxies users would otherwise pick, measured in one run.
///
/// Without a subcommand: runs the scenarios (all by default) and writes the report. Run it
/// through `bench/run`, which installs the peers and builds everything in release mode.
#[derive(Debug, Parser)]
#[command(name = "ollama-mesh-bench")]
struct Cli {
    /// Shorter runs and fewer steps (the whole suite in about 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Where the report (README.md and charts) goes.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Scenarios to run, in order; all when none are named.
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load any Ollama-compatible URL (a router, a real fleet) and print what was measured.
    Load {
        /// Base URL, e.g. http://router:11434.
        #[arg(long)]
        url: String,
        /// The model to ask for.
        #[arg(long)]
        model: String,
        /// Open-loop Poisson arrivals per second; without it, a closed loop of --connections.
        #[arg(long)]
        rate: Option<f64>,
        /// Closed-loop connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// How long to send.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Long streamed generations of this many tokens instead of one-token chats.
        #[arg(long)]
        stream_tokens: Option<u32>,
        /// Use the OpenAI route (/v1/chat/completions) instead of Ollama's.
        #[arg(long)]
        openai: bool,
    },
    /// Serve as the oracle peer (models placed by hand; the fleet scenarios start it).
    Oracle {
        /// Its configuration (JSON: nodes and one placement per phase).
        #[arg(long)]
        config: PathBuf,
        /// Where to listen.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

/// The core the system under test gets; the rest of the bench runs on the other.
const SYSTEM_CORE: &str = "0";
const LOAD_CORE: &str = "1";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Load {
            url,
            model,
            rate,
            connections,
            duration,
            stream_tokens,
            openai,
        }) => {
            load::raise_open_files_limit().context("raising the open-files limit")?;
            let spec = LoadSpec {
                base_url: url.trim_end_matches('/').to_owned(),
                arrivals: match rate {
                    Some(per_second) => Arrivals::Open { per_second },
                    None => Arrivals::Closed { connections },
                },
                duration,
                ramp: Duration::ZERO,
                request_timeout: Duration::from_secs(600),
                stall_after: Duration::from_secs(10),
                max_in_flight: 100_000,
                bearer: None,
            };
            let api = if openai { Api::OpenAiOnly } else { Api::Native };
            let result = load::run(&spec, move |_| match stream_tokens {
                Some(tokens) => long_stream(&model, tokens),
                None => small_chat(api, &model),
            })
            .await;
            let summary = result.summary();
            println!(
                "ok {} failed {} dropped {} | {:.1} requests/s | latency p50 {} p99 {} max {} | \
                 first byte p50 {} p99 {} | stalled {}",
                summary.ok,
                summary.failed,
                summary.dropped,
                summary.throughput,
                ms(summary.latency.p50),
                ms(summary.latency.p99),
                ms(summary.latency.max),
                ms(summary.first_byte.p50),
                ms(summary.first_byte.p99),
                summary.stalled,
            );
            for (reason, count) in result.failure_reasons().iter().take(5) {
                println!("failed {count}× {reason}");
            }
            Ok(())
        }
        Some(Command::Oracle { config, listen }) => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let config = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", config.display()))?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            ollama_mesh_bench::oracle::serve(listener, config).await?;
            Ok(())
        }
        None => {
            let context = Context {
                quick: cli.quick,
                bins: bins()?,
                cores: Cores {
                    system: SYSTEM_CORE.into(),
                    load: LOAD_CORE.into(),
                },
                work_dir: scratch_dir()?,
            };
            let scenarios = if cli.scenarios.is_empty() {
                Scenario::ALL.to_vec()
            } else {
                cli.scenarios.clone()
            };
            let command_line = std::env::args().collect::<Vec<_>>().join(" ");
            let report = suite::run(&context, &scenarios, &cli.out, &command_line).await?;
            println!("report: {}", report.display());
            Ok(())
        }
    }
}

/// The release binaries next to this one, and Consul from `CONSUL_BIN` (set by `bench/run`).
fn bins() -> anyhow::Result<Bins> {
    let dir = std::env::current_exe()?
        .parent()
        .context("the bench binary has no directory")?
        .to_owned();
    let find = |name: &str| {
        let path = dir.join(name);
        anyhow::ensure!(
            path.exists(),
            "{} is missing: build it with `cargo build --release -p ...` (bench/run does)",
            path.display()
        );
        Ok(path)
    };
    Ok(Bins {
        router: find("ollama-mesh-router")?,
        sidecar: find("ollama-mesh-sidecar")?,
        sim: find("ollama-sim")?,
        consul: std::env::var_os("CONSUL_BIN")
            .map(PathBuf::from)
            .context("CONSUL_BIN is not set (bench/run sets it from scripts/ensure-consul)")?,
        bench: std::env::current_exe()?,
    })
}

fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ollama-mesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
