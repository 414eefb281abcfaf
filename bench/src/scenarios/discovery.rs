//! Workload 3, discovery: while small requests flow through a router that follows Consul,
//! instances are registered, failed, restored, drained, returned and deregistered in Consul,
//! round after round. Measured: the time from the Consul write until routing follows (the new
//! node gets its first request; a failed or drained one gets its last), and how many requests
//! still reached a node after it was failed or drained.
//!
//! Only the router takes part: nginx and HAProxy have static upstreams (Traefik's Consul
//! Catalog provider, for scale, polls every 15 s by default).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ollama_mesh_consul::agent::{CheckDefinition, CheckKind, ServiceRegistration, Weights};
use ollama_mesh_consul::contract::{self, kv as layout, InstanceId, ModelList, NodeMeta};
use ollama_mesh_consul::health::CheckStatus;
use ollama_mesh_consul::kv::WriteCondition;
use ollama_mesh_consul::{Client, ConsulSettings};
use ollama_mesh_test_support::ConsulDev;

use crate::load::{self, Arrivals, LoadSpec};
use crate::peers::Api;
use crate::procs::{wait_ready, Pinned};
use crate::report::{ms, Section, Table};

use super::fleets::instant_node;
use super::sims::{SimFleet, SimProcess};
use super::workloads::small_chat;
use super::{failed_section, percentiles_row, Context, Findings, Goal};

const HEADING: &str = "3. Discovery: Consul changes under load";
const MODEL: &str = "llama3.2:3b";
const RATE: f64 = 1_000.0;
/// How often the moving node's counter is read.
const POLL: Duration = Duration::from_millis(2);
/// A node that got nothing for this long has stopped getting work.
const QUIET: Duration = Duration::from_millis(500);
/// Longest wait for routing to follow one change.
const GIVE_UP: Duration = Duration::from_secs(10);

/// What one round's changes showed.
#[derive(Default)]
struct Observed {
    /// Consul write → first request on the node.
    appear: Vec<Duration>,
    /// Consul write → last request on the node.
    leave: Vec<Duration>,
    /// Requests that reached a node after it was failed or drained.
    late_requests: u64,
    /// Changes routing did not follow within [`GIVE_UP`].
    missed: u64,
}

/// Runs the workload.
pub async fn run(context: &Context) -> Findings {
    match measure(context).await {
        Ok(findings) => findings,
        Err(error) => failed_section(HEADING, error),
    }
}

async fn measure(context: &Context) -> Result<Findings, Box<dyn std::error::Error>> {
    let consul = ConsulDev::start().await;
    let client = Client::new(
        &ConsulSettings {
            http_addr: Some(consul.http_url()),
            ..ConsulSettings::default()
        }
        .validate()?,
    )?;
    let nodes: Vec<(String, String)> = (1..=4)
        .map(|i| {
            (
                format!("node-{i}"),
                instant_node(&format!("node-{i}"), MODEL, 64),
            )
        })
        .collect();
    let fleet = SimFleet::start(context, &nodes).await?;
    let (steady, moving) = fleet.nodes().split_at(3);
    let moving = &moving[0];
    for node in steady {
        register(&client, node).await?;
    }

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
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let router = Pinned::spawn(command, &context.cores.system)?;
    wait_ready(&format!("http://{ops}/readyz"), Duration::from_secs(10)).await?;

    let rounds = context.pick(8, 2);
    let run_for = Duration::from_secs(60 * 10);
    let spec = LoadSpec {
        base_url: format!("http://{listen}"),
        arrivals: Arrivals::Open { per_second: RATE },
        duration: run_for,
        ramp: Duration::ZERO,
        request_timeout: Duration::from_secs(5),
        stall_after: Duration::from_secs(5),
        max_in_flight: 1_024,
        bearer: None,
    };
    let traffic =
        tokio::spawn(async move { load::run(&spec, |_| small_chat(Api::Native, MODEL)).await });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut observed = Observed::default();
    let id = instance_id(moving);
    let heartbeat = format!("{id}:heartbeat");
    let drain_key = layout::drain_key(&id);
    for _ in 0..rounds {
        let at = Instant::now();
        register(&client, moving).await?;
        observed.appeared(first_request_after(moving, at).await);

        let at = Instant::now();
        client
            .update_ttl_check(&heartbeat, CheckStatus::Critical, "failed by the benchmark")
            .await?;
        observed.left(last_request_after(moving, at).await);

        let at = Instant::now();
        client
            .update_ttl_check(&heartbeat, CheckStatus::Passing, "back")
            .await?;
        observed.appeared(first_request_after(moving, at).await);

        let at = Instant::now();
        client
            .kv_put(
                &drain_key,
                "drained by the benchmark",
                WriteCondition::Always,
            )
            .await?;
        observed.left(last_request_after(moving, at).await);

        let at = Instant::now();
        client.kv_delete(&drain_key).await?;
        observed.appeared(first_request_after(moving, at).await);

        let at = Instant::now();
        client.deregister_service(id.as_str()).await?;
        observed.left(last_request_after(moving, at).await);
    }
    traffic.abort();
    router.kill().await;
    let _ = traffic.await;
    Ok(Findings {
        goals: goals(&observed),
        section: section(&observed, rounds),
    })
}

/// A Consul change reaches routing within 500 ms at p99.
fn goals(observed: &Observed) -> Vec<Goal> {
    let all = crate::load::percentiles(observed.appear.iter().chain(&observed.leave).copied());
    vec![Goal {
        goal: "Consul change → routing change: p99 ≤ 500 ms".into(),
        measured: format!(
            "p99 {} over {} changes ({} not followed)",
            ms(all.p99),
            all.count,
            observed.missed
        ),
        met: all.count > 0 && all.p99 <= Duration::from_millis(500) && observed.missed == 0,
    }]
}

impl Observed {
    fn appeared(&mut self, took: Option<Duration>) {
        match took {
            Some(took) => self.appear.push(took),
            None => self.missed += 1,
        }
    }

    fn left(&mut self, outcome: Option<(Duration, u64)>) {
        match outcome {
            Some((took, late)) => {
                self.leave.push(took);
                self.late_requests += late;
            }
            None => self.missed += 1,
        }
    }
}

/// Time from `since` until `node` received a request.
async fn first_request_after(node: &SimProcess, since: Instant) -> Option<Duration> {
    let before = requests(node).await;
    while since.elapsed() < GIVE_UP {
        if requests(node).await > before {
            return Some(since.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// Time from `since` until `node` received its last request (none for [`QUIET`]), and how
/// many it received meanwhile.
async fn last_request_after(node: &SimProcess, since: Instant) -> Option<(Duration, u64)> {
    let at_change = requests(node).await;
    let (mut last_count, mut last_seen) = (at_change, since);
    while since.elapsed() < GIVE_UP {
        let count = requests(node).await;
        if count > last_count {
            (last_count, last_seen) = (count, Instant::now());
        } else if last_seen.elapsed() >= QUIET {
            return Some((last_seen - since, last_count - at_change));
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

async fn requests(node: &SimProcess) -> u64 {
    node.stats()
        .await
        .map_or(0, |stats| stats["requests_total"].as_u64().unwrap_or(0))
}

fn instance_id(node: &SimProcess) -> InstanceId {
    InstanceId::for_node(
        contract::DEFAULT_SERVICE_NAME,
        node.name(),
        node.addr().port(),
    )
    .expect("node names are valid")
}

/// Registers `node` as its sidecar would: contract Meta, a passing TTL heartbeat.
async fn register(client: &Client, node: &SimProcess) -> Result<(), ollama_mesh_consul::Error> {
    let id = instance_id(node);
    let meta = NodeMeta {
        gpu_count: 1,
        parallel_slots: 64,
        models_on_disk: ModelList::new([MODEL]),
        models_loaded: ModelList::new([MODEL]),
        sidecar_version: env!("CARGO_PKG_VERSION").to_owned(),
        ..NodeMeta::default()
    };
    let heartbeat = CheckDefinition {
        check_id: format!("{id}:heartbeat"),
        name: "benchmark heartbeat".into(),
        notes: "set by the discovery benchmark".into(),
        kind: CheckKind::Ttl {
            ttl: Duration::from_secs(600),
        },
        status: Some(CheckStatus::Passing),
        deregister_critical_after: None,
    };
    client
        .register_service(&ServiceRegistration {
            id: id.to_string(),
            name: contract::DEFAULT_SERVICE_NAME.into(),
            tags: vec![contract::MESH_TAG.into()],
            address: node.addr().ip().to_string(),
            port: node.addr().port(),
            meta: meta.to_consul_meta(),
            weights: Weights::default(),
            checks: vec![heartbeat],
            connect: None,
        })
        .await
}

fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn section(observed: &Observed, rounds: u64) -> Section {
    let appear = crate::load::percentiles(observed.appear.iter().copied());
    let leave = crate::load::percentiles(observed.leave.iter().copied());
    let table = Table {
        columns: ["change", "samples", "p50", "p99", "max"]
            .map(String::from)
            .to_vec(),
        rows: vec![
            percentiles_row("registered, restored or returned → first request", &appear),
            percentiles_row("failed, drained or deregistered → last request", &leave),
        ],
    };
    let text = format!(
        "A router (one thread) follows Consul with blocking queries while {RATE:.0} small \
         requests a second flow through it to four simulated nodes. One node is, {rounds} \
         times over: registered, failed (its TTL check set critical), restored, drained \
         (`ollama-mesh/drain/<id>` written), returned (key deleted) and deregistered — each \
         written straight to the Consul agent. Times run from the write until the node gets \
         its first request, or its last (nothing more for {}). \n\n\
         - Requests that reached the node after it was failed, drained or deregistered: \
         **{}** (they were still answered: the node itself was up).\n\
         - Changes routing did not follow within {}: **{}**.\n\
         - For scale: Traefik's Consul Catalog provider polls every 15 s by default.",
        ms(QUIET),
        observed.late_requests,
        ms(GIVE_UP),
        observed.missed,
    );
    Section {
        heading: HEADING.to_owned(),
        text,
        tables: vec![table],
        charts: Vec::new(),
    }
}
