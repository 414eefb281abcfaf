//! The systems under test: the ollama-mesh router and the proxies users would otherwise pick,
//! each started in front of the same nodes, configured alike and pinned to the same CPUs.
//!
//! "Alike" means: `workers` worker processes or threads where the peer has such a setting, kept
//! alive connections to the nodes, no access logs, 600 s read timeouts and unbuffered responses
//! (so NDJSON and SSE streams pass chunk by chunk), room for 10 000 concurrent streams, and a
//! least-connections-like policy. Each peer's exact configuration is kept in
//! [`RunningPeer::config`] so the report can print it.
//!
//! Peers are installed by `bench/setup`; one that is missing gives
//! [`PeerError::Unavailable`], which the report shows as skipped with its reason.

mod direct;
mod haproxy;
mod litellm;
mod nginx;
mod oracle;
mod router;
mod smg;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procs::{self, Pinned, ProcError};

/// Concurrent streams every peer must accept: the largest scenario's concurrency.
pub const MAX_STREAMS: usize = 10_000;

/// Read timeout (longest silence from a node) of every peer that has one: the router's default,
/// long enough for a model load before the first token.
pub const READ_TIMEOUT_SECS: u64 = 600;

/// Client connections each proxy accepts: [`MAX_STREAMS`] and a fifth more, but no more than the
/// open-files limit allows with two descriptors per stream (client and node side) and a few for
/// listeners and logs. The same number for every proxy that has such a setting, so none is
/// handicapped by its configuration; a scenario should not ask for more concurrent streams.
pub fn max_client_connections() -> usize {
    let by_files = procs::nofile_limit().saturating_sub(64) / 2;
    let wanted = MAX_STREAMS + MAX_STREAMS / 5;
    usize::try_from(by_files).map_or(wanted, |by_files| wanted.min(by_files))
}

/// How long a stopping peer gets to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// No proxy: clients talk to the first node (the floor for a proxy's overhead).
    Direct,
    /// nginx (Debian), `least_conn` upstream.
    Nginx,
    /// HAProxy (Debian), `balance leastconn`.
    Haproxy,
    /// The SGLang Model Gateway, `power_of_two`; OpenAI routes only.
    Smg,
    /// The LiteLLM proxy, `least-busy`; OpenAI routes only.
    Litellm,
    /// ollama-mesh's router (release build).
    Router,
    /// Models placed by hand, each request sent to a warm node with a free slot: the limit a
    /// scheduler is compared with (see [`crate::oracle`]).
    Oracle,
}

/// Which client APIs a peer serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Ollama's native `/api/*` routes and the OpenAI-compatible `/v1/*` ones.
    Native,
    /// Only the OpenAI-compatible `/v1/*` routes (SMG, LiteLLM): the report runs only the
    /// OpenAI-path workloads against these and says so.
    OpenAiOnly,
}

impl PeerKind {
    /// Every peer, in the report's order (the floor first, the router, then its limit).
    pub const ALL: [PeerKind; 7] = [
        PeerKind::Direct,
        PeerKind::Nginx,
        PeerKind::Haproxy,
        PeerKind::Smg,
        PeerKind::Litellm,
        PeerKind::Router,
        PeerKind::Oracle,
    ];

    /// Whether it proxies any workload: every peer but the oracle, which needs its models
    /// placed by hand for the one workload it serves.
    pub fn is_proxy(self) -> bool {
        self != PeerKind::Oracle
    }

    /// The client APIs this peer serves.
    pub fn api(self) -> Api {
        match self {
            PeerKind::Smg | PeerKind::Litellm => Api::OpenAiOnly,
            PeerKind::Direct
            | PeerKind::Nginx
            | PeerKind::Haproxy
            | PeerKind::Router
            | PeerKind::Oracle => Api::Native,
        }
    }

    /// A short lowercase name for file names and command-line selection (`nginx`, `smg`…).
    pub fn slug(self) -> &'static str {
        match self {
            PeerKind::Direct => "direct",
            PeerKind::Nginx => "nginx",
            PeerKind::Haproxy => "haproxy",
            PeerKind::Smg => "smg",
            PeerKind::Litellm => "litellm",
            PeerKind::Router => "router",
            PeerKind::Oracle => "oracle",
        }
    }
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerKind::Direct => "direct",
            PeerKind::Nginx => "nginx least_conn",
            PeerKind::Haproxy => "HAProxy leastconn",
            PeerKind::Smg => "SMG power_of_two",
            PeerKind::Litellm => "LiteLLM least-busy",
            PeerKind::Router => "ollama-mesh router",
            PeerKind::Oracle => "oracle",
        })
    }
}

/// What every peer is started with.
#[derive(Debug, Clone)]
pub struct PeerSetup {
    /// The nodes (simulators), in order; `Direct` uses the first.
    pub backends: Vec<SocketAddr>,
    /// Worker processes or threads, for the peers that have such a setting.
    pub workers: usize,
    /// The CPUs of the system under test, as a `taskset -c` list (e.g. `"0"`).
    pub cpus: String,
    /// Where config files and logs go (a subdirectory per peer is made).
    pub work_dir: PathBuf,
    /// The model the OpenAI-path peers route (LiteLLM's model group; clients send this name).
    pub model: String,
    /// The `ollama-mesh-router` binary (a release build).
    pub router_bin: PathBuf,
    /// This bench's own binary: the oracle runs as its `oracle` subcommand.
    pub bench_bin: PathBuf,
    /// Simulated seconds per real second of the nodes (1.0 for real time). A peer's own
    /// periodic work (the router reading its backends every 2 s) is scaled to match, so that
    /// its view of the nodes is as fresh as it would be in front of real ones.
    pub time_scale: f64,
    /// Each node's parallel slots (its `OLLAMA_NUM_PARALLEL`), in `backends`' order, for the
    /// router (`--slots`), which cannot read them from a node; empty leaves its default.
    pub slots: Vec<u32>,
    /// The routing policy for peers that have several: the router's `--schedule`, SMG's
    /// `--policy`; `None` for the peer's default in this benchmark.
    pub policy: Option<&'static str>,
    /// Where the oracle places each model, one placement per phase of the workload's mix
    /// (node indices into `backends`); empty where the scenario has no oracle.
    pub placement: Vec<crate::oracle::Placement>,
}

/// A started peer; stopped (its whole process tree killed) on drop if not [`RunningPeer::stop`]ped.
#[derive(Debug)]
pub struct RunningPeer {
    /// Which peer.
    pub kind: PeerKind,
    /// The base URL clients use (`http://127.0.0.1:PORT`, no trailing slash).
    pub url: String,
    /// The exact configuration: command line, environment and config files, for the report.
    pub config: String,
    /// The peer's version as it reports it (e.g. `nginx version: nginx/1.22.1`).
    pub version: String,
    /// A bearer token clients must send (`Authorization: Bearer …`): LiteLLM refuses to start
    /// without a master key.
    pub bearer: Option<String>,
    /// From spawning to the first successful readiness probe.
    pub startup: Duration,
    /// `None` for `Direct`, which has no process of its own.
    proc: Option<Pinned>,
}

impl RunningPeer {
    /// Resident memory of the peer's processes (all of them: nginx's master and workers,
    /// LiteLLM's), KiB; `None` for `Direct` or once the peer has exited.
    pub fn rss_kib(&self) -> Option<u64> {
        self.proc.as_ref()?.rss_kib()
    }

    /// CPU seconds (user + system) the peer's processes have used since they started; `None` for
    /// `Direct` or once the peer has exited. Sample before and after a phase and subtract.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.proc.as_ref()?.cpu_seconds()
    }

    /// The peer's main pid (for `perf record -p`); `None` for `Direct`.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Pinned::pid)
    }

    /// SIGTERM, a few seconds to exit, then SIGKILL to the whole process tree.
    pub async fn stop(self) {
        if let Some(proc) = self.proc {
            proc.stop(STOP_GRACE).await;
        }
    }
}

/// Why a peer could not be run.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Not installed (or not usable) here: the report lists the peer as skipped with this text.
    #[error("{0}")]
    Unavailable(String),
    /// The peer's work directory or config file could not be written.
    #[error("{peer}: cannot write {}: {source}", path.display())]
    Write {
        /// Which peer.
        peer: PeerKind,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No free loopback port could be found for the peer's listeners.
    #[error("{peer}: no free loopback port: {source}")]
    Port {
        /// Which peer.
        peer: PeerKind,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The peer's process could not be spawned.
    #[error("{peer}: {source}")]
    Spawn {
        /// Which peer.
        peer: PeerKind,
        /// Why.
        source: ProcError,
    },
    /// The peer exited during startup.
    #[error("{peer} exited during startup ({status}); its log ends with:\n{log_tail}")]
    Exited {
        /// Which peer.
        peer: PeerKind,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last lines of its output.
        log_tail: String,
    },
    /// The peer did not answer its readiness probe in time.
    #[error("{peer} did not become ready: {source}; its log ends with:\n{log_tail}")]
    NotReady {
        /// Which peer.
        peer: PeerKind,
        /// The probe's last result.
        source: ProcError,
        /// The last lines of its output (empty for `Direct`).
        log_tail: String,
    },
}

/// How to start one peer: what each peer module decides; spawning and waiting are shared.
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// Config files written before the start: (path, contents).
    files: Vec<(PathBuf, String)>,
    /// The port clients use.
    port: u16,
    /// The path answered with 200 once the peer can route.
    ready_path: &'static str,
    /// Sent on the readiness probe and by clients.
    bearer: Option<String>,
    /// How long startup may take (LiteLLM imports for seconds; pinned to one busy core, longer).
    ready_within: Duration,
    /// The command whose first output line is the peer's version.
    version_command: Vec<String>,
}

/// Starts `kind` in front of `setup.backends` and waits until it answers.
pub async fn start(kind: PeerKind, setup: &PeerSetup) -> Result<RunningPeer, PeerError> {
    if setup.backends.is_empty() {
        return Err(PeerError::Unavailable(format!(
            "{kind}: no backends to route to"
        )));
    }
    let dir = setup.work_dir.join(kind.slug());
    let launch = match kind {
        PeerKind::Direct => return direct::start(setup).await,
        PeerKind::Nginx => nginx::launch(setup, &dir, free_port(kind)?)?,
        PeerKind::Haproxy => haproxy::launch(setup, &dir, free_port(kind)?)?,
        PeerKind::Smg => smg::launch(setup, free_port(kind)?)?,
        PeerKind::Litellm => litellm::launch(setup, &dir, free_port(kind)?)?,
        PeerKind::Router => router::launch(setup, free_port(kind)?)?,
        PeerKind::Oracle => oracle::launch(setup, &dir, free_port(kind)?)?,
    };
    std::fs::create_dir_all(&dir).map_err(|source| PeerError::Write {
        peer: kind,
        path: dir.clone(),
        source,
    })?;
    run(kind, setup, &dir, launch).await
}

async fn run(
    kind: PeerKind,
    setup: &PeerSetup,
    dir: &Path,
    launch: Launch,
) -> Result<RunningPeer, PeerError> {
    for (path, contents) in &launch.files {
        std::fs::write(path, contents).map_err(|source| PeerError::Write {
            peer: kind,
            path: path.clone(),
            source,
        })?;
    }
    let log = dir.join("peer.log");
    let write_error = |source| PeerError::Write {
        peer: kind,
        path: log.clone(),
        source,
    };
    // A fresh log per start, so a failure's tail is this start's.
    let out = std::fs::File::create(&log).map_err(write_error)?;
    let err = out.try_clone().map_err(write_error)?;

    let version = version(&launch.version_command).await;
    let mut command = procs::pinned_command(&launch.program, &setup.cpus);
    command
        .args(&launch.args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    for (name, value) in &launch.env {
        command.env(name, value);
    }
    let config = describe(&launch, &setup.cpus);
    // Raised before the first spawn, so every peer inherits the whole limit.
    procs::nofile_limit();
    let started = Instant::now();
    let mut proc = Pinned::spawn(command, &setup.cpus)
        .map_err(|source| PeerError::Spawn { peer: kind, source })?;

    let url = format!("http://127.0.0.1:{}", launch.port);
    let probe = format!("{url}{}", launch.ready_path);
    let auth = launch.bearer.as_ref().map(|key| format!("Bearer {key}"));
    let headers: Vec<(&str, &str)> = auth
        .iter()
        .map(|value| ("Authorization", value.as_str()))
        .collect();
    loop {
        if let Some(status) = proc.exited() {
            return Err(PeerError::Exited {
                peer: kind,
                status,
                log_tail: procs::log_tail(&log, 20),
            });
        }
        // Short probe windows, so an early exit is noticed within half a second.
        let window = Duration::from_millis(500);
        match procs::wait_http_ok(&probe, &headers, window).await {
            Ok(()) => break,
            Err(source) if started.elapsed() >= launch.ready_within => {
                let log_tail = procs::log_tail(&log, 20);
                proc.stop(STOP_GRACE).await;
                return Err(PeerError::NotReady {
                    peer: kind,
                    source,
                    log_tail,
                });
            }
            Err(_) => {}
        }
    }
    Ok(RunningPeer {
        kind,
        url,
        config,
        version,
        bearer: launch.bearer,
        startup: started.elapsed(),
        proc: Some(proc),
    })
}

/// The report's account of a launch: pinning, command line, environment, config files.
fn describe(launch: &Launch, cpus: &str) -> String {
    let mut text = String::new();
    for (name, value) in &launch.env {
        text.push_str(&format!("{name}={value} "));
    }
    text.push_str(&format!(
        "taskset -c {cpus} {}\n",
        procs::command_line(&launch.program, &launch.args)
    ));
    for (path, contents) in &launch.files {
        text.push_str(&format!("\n# {}\n{contents}", path.display()));
    }
    text
}

/// The first non-empty line `command` prints (stdout, then stderr: nginx prints its version to
/// stderr), or a note that it could not be run.
async fn version(command: &[String]) -> String {
    let Some((program, args)) = command.split_first() else {
        return String::new();
    };
    match tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
    {
        Ok(out) => [out.stdout, out.stderr]
            .iter()
            .flat_map(|bytes| {
                String::from_utf8_lossy(bytes)
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .next()
            .unwrap_or_default(),
        Err(err) => format!("unknown ({program}: {err})"),
    }
}

/// The bench venv's `bin` directory: where `bench/setup` installs the Python peers.
fn venv_bin() -> PathBuf {
    let cache = std::env::var_os("OLLAMA_MESH_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("ollama-mesh"))
        })
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ollama-mesh")))
        .unwrap_or_else(|| PathBuf::from(".cache/ollama-mesh"));
    cache.join("bench-venv/bin")
}

/// A Debian-installed peer's binary (PATH or the sbin directories).
fn system_binary(name: &str) -> Result<PathBuf, PeerError> {
    procs::find_program(name)
        .ok_or_else(|| PeerError::Unavailable(format!("{name} is not installed: run bench/setup")))
}

/// A Python peer's binary: the bench venv's pinned install first, then PATH.
fn python_binary(name: &str) -> Result<PathBuf, PeerError> {
    let pinned = venv_bin().join(name);
    if procs::is_executable(&pinned) {
        return Ok(pinned);
    }
    procs::find_program(name).ok_or_else(|| {
        PeerError::Unavailable(format!(
            "{name} is not installed (looked in {} and on PATH): run bench/setup",
            venv_bin().display()
        ))
    })
}

/// A free loopback port for one of `peer`'s listeners.
fn free_port(peer: PeerKind) -> Result<u16, PeerError> {
    procs::free_loopback_port().map_err(|source| PeerError::Port { peer, source })
}

/// The nodes as `http://ADDR` URLs.
fn backend_urls(setup: &PeerSetup) -> Vec<String> {
    setup
        .backends
        .iter()
        .map(|a| format!("http://{a}"))
        .collect()
}

#[cfg(test)]
mod tests;
