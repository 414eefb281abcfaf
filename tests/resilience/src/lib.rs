//! The fault suite's harness: the workspace's real binaries (router, sidecar, simulator) as
//! child processes around a real `consul agent -dev`, the faults done to them (SIGKILL,
//! SIGSTOP, the simulator's fault API), and a bounded load that tallies every answer.
//!
//! Every process is killed when its handle drops, so a failing test leaves nothing behind.
//! Times are short: the simulator runs at a small time scale so an answer takes a fraction of a
//! second, the sidecar checks every second, and the router's deadlines are a few seconds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use ollama_mesh_test_support::{free_port, http, workspace_binary, ConsulDev};
use serde_json::{json, Value};

/// The model every simulated node has.
pub const MODEL: &str = "llama3.2:3b";
/// The longest any condition is awaited.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A child process, killed (SIGKILL) when dropped.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, mut command: Command) -> Self {
        let log = std::env::temp_dir().join(format!(
            "ollama-mesh-resilience-{}-{name}-{}.log",
            std::process::id(),
            free_port()
        ));
        let file = std::fs::File::create(&log).expect("create a log file");
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Open file descriptors (Linux).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// Resident memory in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A stopped process cannot die until continued.
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A simulated Ollama node: the `ollama-sim` binary.
pub struct Sim {
    pub process: Process,
    pub addr: SocketAddr,
}

impl Sim {
    /// A node with [`MODEL`] at `time_scale` of real time, on a free port (or `addr`).
    pub async fn start(name: &str, time_scale: f64) -> Self {
        Self::start_on(name, time_scale, free_addr()).await
    }

    /// The same on `addr`.
    pub async fn start_on(name: &str, time_scale: f64, addr: SocketAddr) -> Self {
        Self::spawn(
            name,
            time_scale,
            addr,
            Command::new(workspace_binary("ollama-sim")),
        )
        .await
    }

    /// The same inside network namespace `namespace`, listening on `addr` there.
    pub async fn start_in(namespace: &str, name: &str, time_scale: f64, addr: SocketAddr) -> Self {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", namespace])
            .arg(workspace_binary("ollama-sim"));
        Self::spawn(name, time_scale, addr, command).await
    }

    async fn spawn(name: &str, time_scale: f64, addr: SocketAddr, mut command: Command) -> Self {
        command.args([
            "--listen",
            &addr.to_string(),
            "--models",
            MODEL,
            "--time-scale",
            &time_scale.to_string(),
            "--node-name",
            name,
            "--num-parallel",
            "4",
        ]);
        let sim = Self {
            process: Process::spawn(name, command),
            addr,
        };
        let ready = until(PATIENCE, || async {
            http::get(sim.addr, "/api/version").await.is_some()
        })
        .await;
        assert!(ready, "{name} did not start: {}", sim.process.log_tail());
        sim
    }

    /// Sets faults through the simulator's API (`POST /sim/faults`).
    pub async fn faults(&self, spec: Value) {
        let answer = http::post(self.addr, "/sim/faults", &spec.to_string()).await;
        assert!(
            matches!(answer, Some((200, _))),
            "POST /sim/faults {spec}: {answer:?}"
        );
    }

    /// Inference requests the node has received, from `/sim/stats`.
    pub async fn requests(&self) -> u64 {
        let Some((200, body)) = http::get(self.addr, "/sim/stats").await else {
            return 0;
        };
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|stats| stats["requests_total"].as_u64())
            .unwrap_or(0)
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The sidecar for one node.
pub struct Sidecar {
    pub process: Process,
    pub id: String,
}

/// How a sidecar is set up beyond the suite's defaults.
#[derive(Debug, Clone, Default)]
pub struct SidecarOptions {
    /// `--preemption-notice-url`.
    pub preemption_notice_url: Option<String>,
    /// `--drain-timeout` (default 2s).
    pub drain_timeout: Option<Duration>,
}

impl Sidecar {
    /// Registers `sim` in `consul` as instance `id`.
    pub async fn start(consul: &ConsulDev, sim: &Sim, id: &str, options: SidecarOptions) -> Self {
        let mut command = Command::new(workspace_binary("ollama-mesh-sidecar"));
        let drain = options.drain_timeout.unwrap_or(Duration::from_secs(2));
        command
            .args(["--instance-id", id, "--gpu-probe", "none"])
            .args(["--ollama-url", &sim.url()])
            .args(["--poll-interval", "250ms", "--meta-min-interval", "250ms"])
            .args(["--check-interval", "1s", "--check-timeout", "500ms"])
            .args(["--heartbeat-ttl", "3s", "--parallel-slots", "4"])
            .args(["--drain-timeout", &format!("{}ms", drain.as_millis())])
            .args(["--preemption-poll-interval", "200ms"])
            .env("CONSUL_HTTP_ADDR", consul.http_url());
        if let Some(url) = &options.preemption_notice_url {
            command.args(["--preemption-notice-url", url]);
        }
        let sidecar = Self {
            process: Process::spawn(id, command),
            id: id.to_owned(),
        };
        let passing = until(PATIENCE, || async {
            instance_state(consul, id).await.as_deref() == Some("passing")
        })
        .await;
        assert!(
            passing,
            "{id} never passed its checks: {}",
            sidecar.process.log_tail()
        );
        sidecar
    }
}

/// The aggregated check status Consul gives instance `id` (`passing`, `warning`, `critical`),
/// or `None` when it is not registered.
pub async fn instance_state(consul: &ConsulDev, id: &str) -> Option<String> {
    let (status, body) = http::get(consul.http_addr(), "/v1/health/service/ollama").await?;
    if status != 200 {
        return None;
    }
    let entries: Value = serde_json::from_str(&body).ok()?;
    let entry = entries
        .as_array()?
        .iter()
        .find(|e| e["Service"]["ID"] == id)?;
    let checks = entry["Checks"].as_array()?;
    let worst = checks
        .iter()
        .filter_map(|c| c["Status"].as_str())
        .max_by_key(|s| match *s {
            "passing" => 0,
            "warning" => 1,
            _ => 2,
        })?;
    Some(worst.to_owned())
}

/// A router following `consul`.
pub struct RouterProcess {
    pub process: Process,
    pub addr: SocketAddr,
    pub ops: SocketAddr,
}

impl RouterProcess {
    /// A router over `consul` (or `--backend`s when `consul` is `None`) with the suite's
    /// deadlines and `extra` flags, ready to route to `nodes` instances.
    pub async fn start(consul: Option<&ConsulDev>, extra: &[&str], nodes: usize) -> Self {
        let addr = free_addr();
        let ops = free_addr();
        let mut command = Command::new(workspace_binary("ollama-mesh-router"));
        command
            .args([
                "--listen",
                &addr.to_string(),
                "--ops-listen",
                &ops.to_string(),
            ])
            .args(["--first-byte-timeout", "2s", "--stream-idle-timeout", "2s"])
            .args(["--threads", "2"])
            .args(extra);
        if let Some(consul) = consul {
            command.args(["--consul-addr", &consul.http_url()]);
        }
        let router = Self {
            process: Process::spawn("router", command),
            addr,
            ops,
        };
        let ready = until(PATIENCE, || async { router.routable().await >= nodes }).await;
        assert!(
            ready,
            "the router never saw {nodes} nodes: {}",
            router.process.log_tail()
        );
        router
    }

    /// Instances the router would send new work to.
    pub async fn routable(&self) -> usize {
        self.nodes()
            .await
            .iter()
            .filter(|n| n["state"] == "active")
            .count()
    }

    /// `/v1/mesh/nodes`.
    pub async fn nodes(&self) -> Vec<Value> {
        let Some((200, body)) = http::get(self.ops, "/v1/mesh/nodes").await else {
            return Vec::new();
        };
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| {
                v.as_array()
                    .cloned()
                    .or_else(|| v["nodes"].as_array().cloned())
            })
            .unwrap_or_default()
    }

    /// `/metrics`.
    pub async fn metrics(&self) -> String {
        http::get(self.ops, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A loopback address whose port was free a moment ago.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls `condition` every 50 ms until it holds (true) or `within` passes (false).
pub async fn until<F, Fut>(within: Duration, condition: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return true;
        }
        if started.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How a request of the load ended.
#[derive(Debug, Clone)]
pub enum Ending {
    /// A complete answer (a final `done: true`).
    Answered,
    /// An error the caller can read: the status and the error text in its dialect.
    Failed { status: u16, error: String },
    /// No usable answer: a reset, a hang past the client's timeout, a body that is not the
    /// dialect's (the suite's goals forbid these outright).
    Broken(String),
}

/// Everything a load saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub endings: Vec<(bool, Ending, Duration)>,
}

impl Tally {
    /// Requests sent.
    pub fn sent(&self) -> usize {
        self.endings.len()
    }

    /// Requests not answered, streamed or not.
    pub fn failed(&self, streamed: bool) -> Vec<&Ending> {
        self.endings
            .iter()
            .filter(|(s, e, _)| *s == streamed && !matches!(e, Ending::Answered))
            .map(|(_, e, _)| e)
            .collect()
    }

    /// Requests that got no clear error: always a bug.
    pub fn broken(&self) -> Vec<&Ending> {
        self.endings
            .iter()
            .filter(|(_, e, _)| matches!(e, Ending::Broken(_)))
            .map(|(_, e, _)| e)
            .collect()
    }

    /// The slowest request.
    pub fn slowest(&self) -> Duration {
        self.endings
            .iter()
            .map(|(_, _, took)| *took)
            .max()
            .unwrap_or_default()
    }

    /// `failed/sent` for the report.
    pub fn summary(&self) -> String {
        format!(
            "{} of {} non-streamed and {} streamed failed, {} without a clear error, slowest {:?}",
            self.failed(false).len(),
            self.endings.iter().filter(|(s, _, _)| !s).count(),
            self.failed(true).len(),
            self.broken().len(),
            self.slowest()
        )
    }
}

/// A steady load on the router: `concurrency` callers, each sending requests one after the
/// other (every `stream_every`-th streamed, the rest not), until stopped or `limit` requests.
pub struct Load {
    tally: Arc<Mutex<Tally>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a [`Load`] sends.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Callers at once.
    pub concurrency: usize,
    /// Every this many requests is streamed (0: none).
    pub stream_every: usize,
    /// Tokens per answer.
    pub tokens: u32,
    /// Most requests in all.
    pub limit: usize,
    /// Routers to send to, in turn; a caller that fails on one retries once on the next (as a
    /// client behind a load balancer with two replicas would).
    pub routers: Vec<SocketAddr>,
}

impl Load {
    /// Starts the load.
    pub fn start(spec: LoadSpec) -> Self {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client = client();
        let tasks = (0..spec.concurrency)
            .map(|caller| {
                let (tally, stop, sent, client, spec) = (
                    tally.clone(),
                    stop.clone(),
                    sent.clone(),
                    client.clone(),
                    spec.clone(),
                );
                tokio::spawn(async move {
                    use std::sync::atomic::Ordering;
                    while !stop.load(Ordering::Relaxed) {
                        let n = sent.fetch_add(1, Ordering::Relaxed);
                        if n >= spec.limit {
                            return;
                        }
                        let streamed = spec.stream_every > 0 && n % spec.stream_every == 0;
                        let started = Instant::now();
                        let mut ending = Ending::Broken(String::new());
                        for attempt in 0..spec.routers.len().min(2) {
                            let router = spec.routers[(caller + attempt) % spec.routers.len()];
                            ending = generate(&client, router, streamed, spec.tokens).await;
                            // A client-side retry only where nothing was answered.
                            if !matches!(ending, Ending::Broken(_)) {
                                break;
                            }
                        }
                        tally
                            .lock()
                            .unwrap()
                            .endings
                            .push((streamed, ending, started.elapsed()));
                    }
                })
            })
            .collect();
        Self { tally, stop, tasks }
    }

    /// Requests finished so far.
    pub fn finished(&self) -> usize {
        self.tally.lock().unwrap().sent()
    }

    /// Waits until `n` requests have finished.
    pub async fn wait_for(&self, n: usize) {
        let done = until(PATIENCE * 2, || async { self.finished() >= n }).await;
        assert!(done, "only {} requests finished", self.finished());
    }

    /// Stops sending, waits for the requests in flight and returns the tally.
    pub async fn stop(self) -> Tally {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a caller panicked");
        }
        let tally = self.tally.lock().unwrap().clone();
        tally
    }
}

/// The suite's HTTP client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One `/api/generate` through `router`, judged.
pub async fn generate(
    client: &Client<HttpConnector, Full<Bytes>>,
    router: SocketAddr,
    streamed: bool,
    tokens: u32,
) -> Ending {
    let body = json!({
        "model": MODEL,
        "prompt": "tell me about resilience",
        "stream": streamed,
        "options": {"num_predict": tokens},
    });
    let request = ::http::Request::post(format!("http://{router}/api/generate"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request");
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        })?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body broke after {status}: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = match tokio::time::timeout(Duration::from_secs(60), exchange).await {
        Err(_) => return Ending::Broken("no answer within 60 s".to_owned()),
        Ok(Err(error)) => return Ending::Broken(error),
        Ok(Ok(answer)) => answer,
    };
    let last = body
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .and_then(|l| serde_json::from_slice::<Value>(l).ok());
    match last {
        Some(line) if line["done"] == true && status == 200 => Ending::Answered,
        Some(line) if line["error"].is_string() => Ending::Failed {
            status,
            error: line["error"].as_str().unwrap_or_default().to_owned(),
        },
        _ => Ending::Broken(format!(
            "{status}: {:?}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )),
    }
}

/// Fails the test, with the router's log, when `tally` holds a request that was not
/// answered (non-streamed ones always, streamed ones unless `streams_may_fail`) or one that got
/// no clear error.
pub fn assert_goals(tally: &Tally, streams_may_fail: bool, router: &RouterProcess) {
    assert!(tally.sent() > 0, "nothing was sent");
    assert!(
        tally.broken().is_empty(),
        "requests without a clear error: {:?}\n{}\nrouter log:\n{}",
        tally.broken(),
        tally.summary(),
        router.process.log_tail()
    );
    assert!(
        tally.failed(false).is_empty(),
        "non-streamed requests failed: {:?}\n{}\nrouter log:\n{}",
        tally.failed(false),
        tally.summary(),
        router.process.log_tail()
    );
    if !streams_may_fail {
        assert!(
            tally.failed(true).is_empty(),
            "streams failed: {:?}\n{}",
            tally.failed(true),
            tally.summary()
        );
    }
}

/// Prints a figure for docs/reliability.md (run with `--nocapture` to see them).
pub fn report(case: &str, tally: &Tally, recovered: Option<Duration>) {
    println!(
        "RESULT {case}: {}{}",
        tally.summary(),
        recovered.map_or_else(String::new, |r| format!("; recovered in {r:?}"))
    );
}
