//! The fault suite. Each case names the fault, states what the system must do, and asserts
//! it against the real binaries: simulated nodes (`ollama-sim`) registered by real sidecars in
//! a real `consul agent -dev`, behind a real router, under a steady load of non-streamed and
//! streamed requests.
//!
//! The goals, for every case: no non-streamed request fails where a retry before its first
//! byte was possible; every request that fails gets a clear error in its dialect; nothing
//! panics (the processes stay up). Run with `--nocapture` to see each case's figures
//! (`RESULT …` lines), which docs/reliability.md quotes.

use std::time::{Duration, Instant};

use ollama_mesh_resilience::{
    assert_goals, client, generate, report, until, Ending, Load, LoadSpec, RouterProcess, Sidecar,
    SidecarOptions, Sim, PATIENCE,
};
use ollama_mesh_test_support::{http, ConsulDev};
use serde_json::json;

/// Real seconds per simulated second: an answer of [`TOKENS`] takes a few hundred ms.
const TIME_SCALE: f64 = 0.05;
/// Tokens per answer.
const TOKENS: u32 = 32;

/// Consul, `n` nodes with their sidecars, and a router that sees them all.
struct Fleet {
    consul: ConsulDev,
    sims: Vec<Sim>,
    sidecars: Vec<Sidecar>,
    router: RouterProcess,
}

impl Fleet {
    async fn start(n: usize) -> Self {
        Self::with(n, &[], |_| SidecarOptions::default()).await
    }

    async fn with(
        n: usize,
        router_flags: &[&str],
        options: impl Fn(usize) -> SidecarOptions,
    ) -> Self {
        let consul = ConsulDev::start().await;
        let mut sims = Vec::new();
        let mut sidecars = Vec::new();
        for i in 0..n {
            let sim = Sim::start(&format!("gpu-{i}"), TIME_SCALE).await;
            sidecars.push(Sidecar::start(&consul, &sim, &format!("gpu-{i}"), options(i)).await);
            sims.push(sim);
        }
        let router = RouterProcess::start(Some(&consul), router_flags, n).await;
        Self {
            consul,
            sims,
            sidecars,
            router,
        }
    }

    fn load(&self, concurrency: usize, limit: usize) -> Load {
        Load::start(LoadSpec {
            concurrency,
            stream_every: 3,
            tokens: TOKENS,
            limit,
            routers: vec![self.router.addr],
        })
    }
}

/// Waits until `router` routes to `n` instances (failing with `otherwise`); how long it took.
async fn routing_to(router: &RouterProcess, n: usize, otherwise: &str) -> Duration {
    let since = Instant::now();
    let reached = until(PATIENCE, || async { router.routable().await == n }).await;
    assert!(reached, "{otherwise}");
    since.elapsed()
}

/// SIGKILL of a node under load: its connections are refused or reset before any byte, so
/// every request on it is retried elsewhere and the node is ejected at once; Consul's checks
/// then take it out. Streams that had started on it end with an error chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_costs_no_request_that_could_move() {
    let mut fleet = Fleet::start(3).await;
    let load = fleet.load(8, 150);
    load.wait_for(20).await;
    fleet.sims[0].process.kill();
    let recovered = routing_to(&fleet.router, 2, "the killed node stayed in rotation").await;
    let tally = load.stop().await;
    report("node SIGKILLed", &tally, Some(recovered));
    assert_goals(&tally, true, &fleet.router);
}

/// SIGSTOP of a node with requests in flight and queued (its port still accepts, nothing
/// answers, like a wedged GPU driver): Consul's check times out and marks it critical within
/// ~2 s, and the router moves the requests waiting for their first byte from it at once; the
/// first-byte deadline covers them if Consul is slower. Queued requests are bound late and
/// never go there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_costs_no_request_that_could_move() {
    let fleet = Fleet::start(3).await;
    // More callers than the fleet's 12 slots: some wait at the router.
    let load = fleet.load(16, 200);
    load.wait_for(20).await;
    fleet.sims[0].process.signal("STOP");
    let recovered = routing_to(&fleet.router, 2, "the frozen node stayed in rotation").await;
    let tally = load.stop().await;
    fleet.sims[0].process.signal("CONT");
    report("node frozen (SIGSTOP)", &tally, Some(recovered));
    assert_goals(&tally, true, &fleet.router);
    // Nothing waited for the 600 s read timeout: the deadlines and the verdict cut in.
    assert!(
        tally.slowest() < Duration::from_secs(20),
        "{}",
        tally.summary()
    );
}

/// A node answering Ollama's 503 "server busy" to every inference while its health passes:
/// each 503 is retried elsewhere and ejects the node, so it gets a handful of requests (the
/// probes), not most of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_whose_health_passes_is_ejected_and_costs_no_request() {
    let fleet = Fleet::start(2).await;
    // The busy node is the scheduler's first choice: the model is loaded there.
    let warm = ollama_mesh_test_support::http::post(
        fleet.sims[0].addr,
        "/api/generate",
        &json!({"model": ollama_mesh_resilience::MODEL, "prompt": "hi", "stream": false})
            .to_string(),
    )
    .await;
    assert!(matches!(warm, Some((200, _))), "{warm:?}");
    let loaded = until(PATIENCE, || async {
        fleet.router.nodes().await.iter().any(|n| {
            n["id"] == "gpu-0"
                && n["models"]["loaded"]["names"]
                    .as_array()
                    .is_some_and(|names| !names.is_empty())
        })
    })
    .await;
    assert!(loaded, "the router never saw the model loaded on gpu-0");
    fleet.sims[0].faults(json!({"busy": true})).await;
    let before = fleet.sims[0].requests().await;
    let load = fleet.load(6, 120);
    load.wait_for(120).await;
    let tally = load.stop().await;
    let on_busy = fleet.sims[0].requests().await - before;
    report("node answering 503, health passing", &tally, None);
    assert_goals(&tally, false, &fleet.router);
    assert!(
        (1..tally.sent() as u64 / 5).contains(&on_busy),
        "the busy node drew {on_busy} of {} requests",
        tally.sent()
    );
    let counted = until(PATIENCE, || async {
        let metrics = fleet.router.metrics().await;
        metrics
            .lines()
            .any(|l| l.starts_with("ollama_mesh_node_ejections_total") && l.contains("gpu-0"))
            && metrics.contains("ollama_mesh_retries_total")
    })
    .await;
    let metrics = fleet.router.metrics().await;
    let shown: Vec<&str> = metrics
        .lines()
        .filter(|l| l.contains("eject") || l.contains("retries"))
        .collect();
    assert!(
        counted,
        "ejections and retries are counted in /metrics: {shown:?}"
    );
}

/// A node ten times slower than the others: nothing fails, and the requests it does take
/// finish (slow is not dead: its streams keep sending within the stream gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_costs_no_request() {
    let consul = ConsulDev::start().await;
    let fast = Sim::start("fast", TIME_SCALE).await;
    let slow = Sim::start("slow", TIME_SCALE * 10.0).await;
    let _sidecars = [
        Sidecar::start(&consul, &fast, "fast", SidecarOptions::default()).await,
        Sidecar::start(&consul, &slow, "slow", SidecarOptions::default()).await,
    ];
    let router = RouterProcess::start(Some(&consul), &[], 2).await;
    let load = Load::start(LoadSpec {
        concurrency: 6,
        stream_every: 3,
        tokens: TOKENS,
        limit: 60,
        routers: vec![router.addr],
    });
    load.wait_for(60).await;
    let tally = load.stop().await;
    report("node 10x slower", &tally, None);
    assert_goals(&tally, false, &router);
}

/// A node flapping between busy and healthy every 2 s: its ejections grow while it keeps
/// failing, and no request is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_node_costs_no_request() {
    let fleet = Fleet::start(2).await;
    let load = fleet.load(6, 100_000);
    let flapping = async {
        for round in 0..5 {
            fleet.sims[0].faults(json!({"busy": round % 2 == 0})).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        fleet.sims[0].faults(json!({"busy": false})).await;
    };
    flapping.await;
    let tally = load.stop().await;
    report("node flapping every 2 s", &tally, None);
    assert_goals(&tally, false, &fleet.router);
}

/// Consul unreachable for a while as the router serves (the agent killed, then started again,
/// empty, as a dev agent restarts): routing goes on with the last set; once the agent is back
/// the sidecars register again and the router follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_unreachable_for_a_while_costs_no_request() {
    let mut fleet = Fleet::start(2).await;
    let load = fleet.load(4, 100_000);
    load.wait_for(10).await;
    fleet.consul.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = load.finished();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(load.finished() > during, "routing stopped without Consul");
    let restarted = Instant::now();
    fleet.consul.restart().await;
    let back = until(PATIENCE, || async {
        ollama_mesh_resilience::instance_state(&fleet.consul, "gpu-0")
            .await
            .as_deref()
            == Some("passing")
    })
    .await;
    assert!(back, "the sidecar did not register again");
    let recovered = restarted.elapsed();
    let tally = load.stop().await;
    report(
        "Consul down 5 s, then restarted empty",
        &tally,
        Some(recovered),
    );
    assert_goals(&tally, false, &fleet.router);
}

/// Consul unreachable when the router starts: the router is not ready and answers requests
/// with a clear 503 in the caller's dialect; once the agent is up the router follows it and
/// serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_unreachable_at_router_start_delays_readiness_not_correctness() {
    let mut consul = ConsulDev::start().await;
    let sim = Sim::start("gpu-0", TIME_SCALE).await;
    let _sidecar = Sidecar::start(&consul, &sim, "gpu-0", SidecarOptions::default()).await;
    consul.kill();
    let router = RouterProcess::start(Some(&consul), &[], 0).await;
    let not_ready = until(PATIENCE, || async {
        matches!(http::get(router.ops, "/readyz").await, Some((503, _)))
    })
    .await;
    assert!(not_ready, "the router said it was ready without Consul");
    let early = generate(&client(), router.addr, false, TOKENS).await;
    assert!(
        matches!(&early, Ending::Failed { status: 503, error } if !error.is_empty()),
        "{early:?}"
    );
    let started = Instant::now();
    consul.restart().await;
    routing_to(
        &router,
        1,
        "the router never followed Consul once it was up",
    )
    .await;
    let recovered = started.elapsed();
    let load = Load::start(LoadSpec {
        concurrency: 2,
        stream_every: 3,
        tokens: TOKENS,
        limit: 20,
        routers: vec![router.addr],
    });
    load.wait_for(20).await;
    let tally = load.stop().await;
    report(
        "Consul unreachable at router start",
        &tally,
        Some(recovered),
    );
    assert_goals(&tally, false, &router);
}

/// A sidecar SIGKILLed: its registration lingers in Consul, but its heartbeat check goes
/// critical after its TTL and takes the node out, while the node itself keeps answering (so
/// no non-streamed request fails); a restarted sidecar puts it back. A stream running on the
/// node when its check goes critical ends with an error chunk: the router cannot tell a dead
/// sidecar from a dead node, and no longer vouches for either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_and_restarted_costs_no_request() {
    let mut fleet = Fleet::start(2).await;
    let load = fleet.load(4, 100_000);
    load.wait_for(10).await;
    fleet.sidecars[0].process.kill();
    let taken_out = routing_to(
        &fleet.router,
        1,
        "the node of a dead sidecar stayed in rotation",
    )
    .await;
    fleet.sidecars[0] = Sidecar::start(
        &fleet.consul,
        &fleet.sims[0],
        "gpu-0",
        SidecarOptions::default(),
    )
    .await;
    routing_to(
        &fleet.router,
        2,
        "the restarted sidecar's node did not come back",
    )
    .await;
    let tally = load.stop().await;
    report("sidecar SIGKILLed, restarted", &tally, Some(taken_out));
    assert_goals(&tally, true, &fleet.router);
}

/// A router replica SIGKILLed while a second serves: a client that retries on the other
/// replica when its connection breaks loses nothing non-streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_replica_killed_loses_nothing_a_client_retry_can_save() {
    let fleet = Fleet::start(2).await;
    let mut second = RouterProcess::start(Some(&fleet.consul), &[], 2).await;
    let load = Load::start(LoadSpec {
        concurrency: 6,
        stream_every: 3,
        tokens: TOKENS,
        limit: 150,
        routers: vec![second.addr, fleet.router.addr],
    });
    load.wait_for(20).await;
    second.process.kill();
    let tally = load.stop().await;
    report("router replica SIGKILLed", &tally, None);
    // A stream cut by the dying replica is lost (the client saw part of it); a request that
    // broke before an answer was retried on the other replica.
    assert!(
        tally.failed(false).is_empty(),
        "non-streamed requests lost: {}",
        tally.summary()
    );
}

/// Preemption end to end: the cloud's notice (the sidecar's `--preemption-notice-url`) drains
/// the node, the requests in flight on it finish, the sidecar deregisters it, and only then
/// does the machine go. With the notice at least one answer's length before the end, no
/// request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_node_costs_no_request() {
    let notice = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let notice_url = format!(
        "http://{}/spot/instance-action",
        notice.local_addr().unwrap()
    );
    let preempted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = preempted.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = notice.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let status = if flag.load(std::sync::atomic::Ordering::SeqCst) {
                "200 OK"
            } else {
                "404 Not Found"
            };
            let _ = stream
                .write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    let mut fleet = Fleet::with(2, &[], |i| SidecarOptions {
        preemption_notice_url: (i == 0).then(|| notice_url.clone()),
        drain_timeout: Some(Duration::from_secs(3)),
    })
    .await;
    let load = fleet.load(8, 100_000);
    load.wait_for(20).await;
    preempted.store(true, std::sync::atomic::Ordering::SeqCst);
    let noticed = Instant::now();
    let gone = until(PATIENCE, || async {
        ollama_mesh_resilience::instance_state(&fleet.consul, "gpu-0")
            .await
            .is_none()
    })
    .await;
    assert!(gone, "the preempted node was never deregistered");
    let deregistered = noticed.elapsed();
    // The machine goes.
    fleet.sims[0].process.kill();
    load.wait_for(load.finished() + 20).await;
    let tally = load.stop().await;
    report(
        "preemption notice, then the machine goes",
        &tally,
        Some(deregistered),
    );
    assert_goals(&tally, false, &fleet.router);
}

/// 10 000 connections opened and dropped (half of them after sending part of a request):
/// the router's open file descriptors come back to where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_storm_leaks_no_descriptor() {
    let fleet = Fleet::start(1).await;
    let baseline = fleet.router.process.open_fds();
    let addr = fleet.router.addr;
    let storm = (0..4).map(|worker| {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for i in 0..2_500 {
                if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
                    if (i + worker) % 2 == 0 {
                        let _ = stream.write_all(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mo").await;
                    }
                }
            }
        })
    });
    for worker in storm {
        worker.await.unwrap();
    }
    let settled = until(PATIENCE, || async {
        fleet.router.process.open_fds() <= baseline + 4
    })
    .await;
    let after = fleet.router.process.open_fds();
    assert!(
        settled,
        "{after} descriptors open after the storm, {baseline} before"
    );
    println!("RESULT connection storm: 10000 connections; router descriptors {baseline} before, {after} after");
    // Still serving.
    let load = fleet.load(2, 10);
    load.wait_for(10).await;
    assert_goals(&load.stop().await, false, &fleet.router);
}

/// The soak, on demand only (`OLLAMA_MESH_SOAK_SECONDS=600`): a steady mixed load while RSS
/// and open descriptors are sampled; after the warm-up both stay flat (within 20 % and 16
/// descriptors of the first sample after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_leaves_memory_and_descriptors_flat() {
    let Some(seconds) = std::env::var("OLLAMA_MESH_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        println!("soak skipped: set OLLAMA_MESH_SOAK_SECONDS (e.g. 600) to run it");
        return;
    };
    let fleet = Fleet::start(3).await;
    let load = fleet.load(8, usize::MAX);
    let warm_up = Duration::from_secs(seconds / 10);
    tokio::time::sleep(warm_up).await;
    let (rss0, fds0) = (
        fleet.router.process.rss_kib(),
        fleet.router.process.open_fds(),
    );
    let end = Instant::now() + Duration::from_secs(seconds) - warm_up;
    let (mut rss_max, mut fds_max) = (rss0, fds0);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(5)).await;
        rss_max = rss_max.max(fleet.router.process.rss_kib());
        fds_max = fds_max.max(fleet.router.process.open_fds());
    }
    let tally = load.stop().await;
    println!(
        "RESULT soak {seconds} s: {}; RSS {rss0} KiB after warm-up, at most {rss_max} KiB; fds {fds0}, at most {fds_max}",
        tally.summary()
    );
    assert_goals(&tally, false, &fleet.router);
    assert!(
        rss_max * 5 <= rss0 * 6,
        "RSS grew from {rss0} to {rss_max} KiB"
    );
    assert!(
        fds_max <= fds0 + 16,
        "descriptors grew from {fds0} to {fds_max}"
    );
}
