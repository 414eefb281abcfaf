//! Workload 6, the service mesh: the router's overhead when it reaches the nodes through Consul
//! Connect mTLS (sidecars in mesh mode in front of each node) against plain HTTP through plain
//! sidecars, on workloads 1 (small requests) and 2 (concurrent streams). Both routers follow the
//! same Consul agent; each node has a plain and a mesh sidecar, so both see the same fleet.
//! The sidecars run on the load generator's core, as they would on the GPU nodes.

use std::net::SocketAddr;
use std::time::Duration;

use ollama_mesh_test_support::ConsulDev;

use crate::load::{self, Arrivals, LoadSpec, Summary};
use crate::peers::Api;
use crate::procs::{wait_ready, Pinned};
use crate::report::{ms, ratio, Section, Table};

use super::fleets::{instant_node, streaming_node};
use super::sims::SimFleet;
use super::workloads::{long_stream, small_chat};
use super::{failed_section, Context, Findings};

const HEADING: &str = "6. Service mesh: Consul Connect mTLS against plain HTTP";
const MODEL: &str = "llama3.2:3b";
const STREAM_TOKENS_PER_SECOND: f64 = 2.0;

/// The two routers' results on one workload.
struct Pair {
    workload: String,
    plain: Summary,
    mesh: Summary,
}

/// Runs the workload.
pub async fn run(context: &Context) -> Findings {
    match measure(context).await {
        Ok(pairs) => section(&pairs).into(),
        Err(error) => failed_section(HEADING, error),
    }
}

async fn measure(context: &Context) -> Result<Vec<Pair>, Box<dyn std::error::Error>> {
    let streams = context.pick(1_000, 500);
    let mut pairs = Vec::new();

    let instant: Vec<(String, String)> = (1..=3)
        .map(|i| {
            (
                format!("mesh-instant-{i}"),
                instant_node(&format!("mesh-instant-{i}"), MODEL, 64),
            )
        })
        .collect();
    let small = LoadSpec {
        base_url: String::new(),
        arrivals: Arrivals::Closed { connections: 32 },
        duration: context.period(5, 2),
        ramp: Duration::ZERO,
        request_timeout: Duration::from_secs(10),
        stall_after: Duration::from_secs(5),
        max_in_flight: 4_096,
        bearer: None,
    };
    let (plain, mesh) = both(
        context,
        &instant,
        &small,
        |_| small_chat(Api::Native, MODEL),
        |r| r.summary(),
    )
    .await?;
    pairs.push(Pair {
        workload: "small requests, 32 connections".into(),
        plain,
        mesh,
    });

    let streaming: Vec<(String, String)> = (1..=3)
        .map(|i| {
            let name = format!("mesh-stream-{i}");
            let config = streaming_node(&name, MODEL, STREAM_TOKENS_PER_SECOND, streams);
            (name, config)
        })
        .collect();
    let ramp = context.period(5, 3);
    let hold = context.period(10, 5);
    let tokens = ((ramp + hold).as_secs_f64() * STREAM_TOKENS_PER_SECOND).ceil() as u32 + 2;
    let long = LoadSpec {
        base_url: String::new(),
        arrivals: Arrivals::Closed {
            connections: streams,
        },
        duration: ramp + hold,
        ramp,
        request_timeout: ramp + hold + Duration::from_secs(30),
        stall_after: Duration::from_secs(5),
        max_in_flight: streams,
        bearer: None,
    };
    let (plain, mesh) = both(
        context,
        &streaming,
        &long,
        move |_| long_stream(MODEL, tokens),
        move |r| r.summary_where(|o| o.scheduled_at <= ramp),
    )
    .await?;
    pairs.push(Pair {
        workload: format!("{streams} concurrent NDJSON streams"),
        plain,
        mesh,
    });
    Ok(pairs)
}

/// Runs `spec` through a plain router and a router in the mesh, in front of a fleet of
/// `nodes`, each with a plain and a mesh sidecar.
async fn both(
    context: &Context,
    nodes: &[(String, String)],
    spec: &LoadSpec,
    request: impl Fn(u64) -> crate::load::RequestSpec + Clone + Send + 'static,
    summarize: impl Fn(&crate::load::LoadResult) -> Summary,
) -> Result<(Summary, Summary), Box<dyn std::error::Error>> {
    load::raise_open_files_limit()?;
    let consul = ConsulDev::start().await;
    let fleet = SimFleet::start(context, nodes).await?;
    let mut sidecars = Vec::new();
    for node in fleet.nodes() {
        for mesh in [false, true] {
            let mut command = tokio::process::Command::new(&context.bins.sidecar);
            command
                .args(["--consul-addr", &consul.http_url()])
                .args(["--ollama-url", &format!("http://{}", node.addr())])
                .args([
                    "--instance-id",
                    &format!("{}-{}", node.name(), if mesh { "mesh" } else { "plain" }),
                ])
                .args(["--gpu-probe", "none", "--parallel-slots", "64"])
                .args(["--poll-interval", "1s", "--meta-min-interval", "0s"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            if mesh {
                command.args(["--mesh", "--mesh-listen", &free_addr()?.to_string()]);
            }
            sidecars.push(Pinned::spawn(command, &context.cores.load)?);
        }
    }
    let mut summaries = Vec::new();
    for mesh in [false, true] {
        let listen = free_addr()?;
        let ops = free_addr()?;
        let mut command = tokio::process::Command::new(&context.bins.router);
        command
            .args([
                "--listen",
                &listen.to_string(),
                "--ops-listen",
                &ops.to_string(),
            ])
            .args(["--consul-addr", &consul.http_url(), "--threads", "1"])
            .args(["--max-connections", "20000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if mesh {
            command.arg("--mesh");
        }
        let router = Pinned::spawn(command, &context.cores.system)?;
        wait_ready(&format!("http://{ops}/readyz"), Duration::from_secs(20)).await?;
        wait_for_nodes(&format!("http://{ops}/v1/mesh/nodes"), nodes.len()).await;
        let spec = LoadSpec {
            base_url: format!("http://{listen}"),
            ..spec.clone()
        };
        // Warm-up: connections, handshakes, the nodes' model load.
        load::run(
            &LoadSpec {
                arrivals: Arrivals::Closed { connections: 4 },
                duration: Duration::from_secs(1),
                ramp: Duration::ZERO,
                ..spec.clone()
            },
            |_| small_chat(Api::Native, MODEL),
        )
        .await;
        let result = load::run(&spec, request.clone()).await;
        summaries.push(summarize(&result));
        router.kill().await;
    }
    for sidecar in sidecars {
        sidecar.kill().await;
    }
    let mesh = summaries.pop().expect("two runs");
    let plain = summaries.pop().expect("two runs");
    Ok((plain, mesh))
}

/// Waits (up to 20 s) until the router reaches `count` nodes its way (`reached` not
/// `skipped`).
async fn wait_for_nodes(url: &str, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if let Some(body) = crate::procs::get_text(url).await {
            let reached = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|nodes| {
                    nodes.as_array().map(|nodes| {
                        nodes
                            .iter()
                            .filter(|n| n["reached"] != "skipped" && n["state"] == "active")
                            .count()
                    })
                })
                .unwrap_or(0);
            if reached >= count {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn section(pairs: &[Pair]) -> Section {
    let mut table = Table {
        columns: [
            "workload",
            "plain: req/s or completed",
            "mesh",
            "mesh × plain",
            "p50 plain / mesh",
            "p99 plain / mesh",
            "TTFT p99 plain / mesh",
            "failed plain / mesh",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    for pair in pairs {
        let (p, m) = (&pair.plain, &pair.mesh);
        let (plain_rate, mesh_rate) = if pair.workload.contains("streams") {
            (p.ok as f64, m.ok as f64)
        } else {
            (p.throughput, m.throughput)
        };
        table.rows.push(vec![
            pair.workload.clone(),
            format!("{plain_rate:.0}"),
            format!("{mesh_rate:.0}"),
            ratio(mesh_rate, plain_rate),
            format!("{} / {}", ms(p.latency.p50), ms(m.latency.p50)),
            format!("{} / {}", ms(p.latency.p99), ms(m.latency.p99)),
            format!("{} / {}", ms(p.first_byte.p99), ms(m.first_byte.p99)),
            format!("{} / {}", p.failed + p.dropped, m.failed + m.dropped),
        ]);
    }
    Section {
        heading: HEADING.to_owned(),
        text: "Two routers (one thread each) follow one Consul agent; every simulated node has \
               a plain sidecar and one in mesh mode (`--mesh`), so `ollama-mesh-router` \
               reaches the nodes over plain HTTP and `ollama-mesh-router --mesh` over mutual \
               TLS with Consul Connect certificates, through the sidecar's L4 proxy. The \
               difference is the mesh's whole cost: TLS on the router, the sidecar's TLS \
               termination and its extra loopback hop."
            .to_owned(),
        tables: vec![table],
        charts: Vec::new(),
    }
}
