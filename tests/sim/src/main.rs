//! `ollama-sim`: serve a simulated Ollama node.
//!
//! Prints `listening on ADDR` (the bound address, so `--listen 127.0.0.1:0` works) as the first
//! line on stdout; logs go to stderr (`RUST_LOG`). Exits 0 on SIGINT/SIGTERM and 137 when a fault
//! kills the node.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use ollama_mesh_sim::{FaultSpec, HealthMode, NodeSpec, ServeExit, Simulator};

/// A simulated Ollama node: Ollama's API and scheduler dynamics without a GPU.
#[derive(Debug, Parser)]
#[command(name = "ollama-sim", version)]
struct Cli {
    /// Address to listen on, e.g. 127.0.0.1:11434 (port 0 picks a free one).
    #[arg(long)]
    listen: String,
    /// Models on disk, comma separated (replaces the config file's list).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Real seconds per simulated second: 1 is real time, 0 never sleeps.
    #[arg(long)]
    time_scale: Option<f64>,
    /// Name reported in /sim/stats.
    #[arg(long)]
    node_name: Option<String>,
    /// TOML node description.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Parallel slots per loaded model.
    #[arg(long, env = "OLLAMA_NUM_PARALLEL")]
    num_parallel: Option<usize>,
    /// Capacity of the pending-load queue.
    #[arg(long, env = "OLLAMA_MAX_QUEUE")]
    max_queue: Option<usize>,
    /// Loaded models at most (0 = 3 per GPU).
    #[arg(long, env = "OLLAMA_MAX_LOADED_MODELS")]
    max_loaded_models: Option<usize>,
    /// Default keep-alive, a Go duration (negative = forever).
    #[arg(long, env = "OLLAMA_KEEP_ALIVE", allow_hyphen_values = true)]
    keep_alive: Option<String>,
    /// Fail the next N inference requests with 500.
    #[arg(long)]
    fail_next: Option<u64>,
    /// Stall every inference request this many milliseconds before its first byte.
    #[arg(long)]
    stall_ms: Option<u64>,
    /// Cut every generation after K tokens with Ollama's mid-stream error.
    #[arg(long)]
    cut_after_tokens: Option<u64>,
    /// Hang every generation after K tokens, sending nothing more.
    #[arg(long)]
    stall_after_tokens: Option<u64>,
    /// How `/` and `/api/version` answer: normal, slow or hang.
    #[arg(long, value_parser = parse_health)]
    health: Option<HealthMode>,
    /// Delay of slow health checks, in milliseconds.
    #[arg(long)]
    health_delay_ms: Option<u64>,
    /// Exit abruptly when the Nth inference request arrives.
    #[arg(long)]
    exit_after_requests: Option<u64>,
}

fn parse_health(text: &str) -> Result<HealthMode, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("{text:?} is not one of normal, slow, hang"))
}

impl Cli {
    fn node_spec(&self) -> anyhow::Result<NodeSpec> {
        let mut spec = match &self.config {
            Some(path) => NodeSpec::from_file(path)?,
            None => NodeSpec::default(),
        };
        if !self.models.is_empty() {
            spec = spec.models(&self.models);
        }
        if let Some(scale) = self.time_scale {
            spec = spec.time_scale(scale);
        }
        if let Some(name) = &self.node_name {
            spec = spec.node_name(name);
        }
        if let Some(n) = self.num_parallel {
            spec = spec.num_parallel(n);
        }
        if let Some(n) = self.max_queue {
            spec = spec.max_queue(n);
        }
        if let Some(n) = self.max_loaded_models {
            spec = spec.max_loaded_models(n);
        }
        if let Some(k) = &self.keep_alive {
            spec = spec.keep_alive(k);
        }
        let faults = &mut spec.faults;
        let cli_faults = FaultSpec {
            fail_next: self.fail_next.or(faults.fail_next),
            stall_ms: self.stall_ms.or(faults.stall_ms),
            cut_after_tokens: self.cut_after_tokens.map(Some).or(faults.cut_after_tokens),
            stall_after_tokens: self
                .stall_after_tokens
                .map(Some)
                .or(faults.stall_after_tokens),
            health: self.health.or(faults.health),
            health_delay_ms: self.health_delay_ms.or(faults.health_delay_ms),
            exit_after_requests: self.exit_after_requests.or(faults.exit_after_requests),
            busy: faults.busy,
        };
        *faults = cli_faults;
        Ok(spec)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = cli.node_spec()?.build().context("invalid configuration")?;
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}")?;
    stdout.flush()?;
    let sim = Simulator::new(config);
    match sim.serve(listener, shutdown_signal()).await? {
        ServeExit::Shutdown => Ok(()),
        ServeExit::Killed => std::process::exit(137),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
