//! The systemd path end to end: each example unit's `ExecStart=` is run the way systemd runs it
//! (a clean environment, the unit's env file, its `Environment=` lines, its credentials
//! directory, `NOTIFY_SOCKET` and `WATCHDOG_USEC`), with the workspace's binaries in place of
//! `/usr/local/bin`, against a real `consul agent -dev` and a simulated Ollama node. Both must
//! report `READY=1`, find each other through Consul, and on the unit's `KillSignal=` report
//! `STOPPING=1`, deregister and exit 0 well within `TimeoutStopSec=`.
//!
//! Only what cannot hold on a test machine is overridden, and nothing else: the addresses
//! (Consul's dev agent, the simulator, free loopback ports instead of 11434/11435), the GPU
//! probe (no nvidia-smi here), the drain period (1 s instead of a minute, to keep the test
//! short; the units' stop timeouts are checked against the real values in `systemd_units.rs`)
//! and the sidecar's instance ID (fixed, so the test can look it up; the default derives it
//! from the host name).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ollama_mesh_deploy_tests::{read_env_file, workspace_root, Unit};
use ollama_mesh_test_support::{free_port, http, workspace_binary, ConsulDev, SimNode};
use tokio::net::UnixDatagram;

/// Debug binaries start in well under a second; this allows for a loaded CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A unit's `ExecStart=` running as a child process, killed if the test fails midway.
struct Service {
    name: &'static str,
    child: Child,
    notify: UnixDatagram,
    kill_signal: String,
    stop_timeout: Duration,
}

impl Service {
    /// Starts `unit` as systemd would, with `overrides` applied last.
    fn start(
        name: &'static str,
        env_file: &str,
        overrides: &[(&str, String)],
        scratch: &Path,
    ) -> Self {
        let dir = workspace_root().join("examples/systemd");
        let unit = Unit::read(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
        let command = unit.exec_start().unwrap();
        let program = Path::new(&command[0]);
        assert!(
            program.starts_with("/usr/local/bin"),
            "{name}: ExecStart={} (the test maps /usr/local/bin to the build)",
            program.display()
        );
        // The workspace's binaries stand in for /usr/local/bin.
        let binary = workspace_binary(program.file_name().unwrap().to_str().unwrap());

        // A clean environment, as systemd gives a service: PATH, then the env file, then the
        // unit's Environment= lines (which systemd applies before EnvironmentFile=; neither
        // unit sets a variable in both, checked below).
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
        let file_env = read_env_file(&dir.join(env_file)).unwrap();
        let unit_env = unit.environment().unwrap();
        for (key, _) in &unit_env {
            assert!(
                !file_env.contains_key(key),
                "{name}: {key} is set in both the unit and {env_file}"
            );
        }

        // LoadCredential=: systemd copies each file into $CREDENTIALS_DIRECTORY (%d). The
        // token's value does not matter to a dev agent (ACLs off), but the binaries read it.
        let credentials = scratch.join(format!("{name}.credentials"));
        std::fs::create_dir_all(&credentials).unwrap();
        for credential in unit.all("Service", "LoadCredential") {
            let (id, _source) = credential
                .split_once(':')
                .unwrap_or_else(|| panic!("{name}: LoadCredential={credential}"));
            std::fs::write(
                credentials.join(id),
                "00000000-0000-0000-0000-000000000001\n",
            )
            .unwrap();
        }
        env.extend(file_env);
        for (key, value) in unit_env {
            env.insert(key, value.replace("%d", credentials.to_str().unwrap()));
        }
        env.insert(
            "CREDENTIALS_DIRECTORY".into(),
            credentials.display().to_string(),
        );

        let socket = scratch.join(format!("{name}.notify"));
        let notify = UnixDatagram::bind(&socket).unwrap();
        env.insert("NOTIFY_SOCKET".into(), socket.display().to_string());
        let watchdog = unit.duration("Service", "WatchdogSec").unwrap();
        env.insert("WATCHDOG_USEC".into(), watchdog.as_micros().to_string());
        for (key, value) in overrides {
            env.insert((*key).to_owned(), value.clone());
        }

        let log = std::fs::File::create(scratch.join(format!("{name}.log"))).unwrap();
        let child = Command::new(&binary)
            .args(&command[1..])
            .env_clear()
            .envs(&env)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self {
            name,
            child,
            notify,
            kill_signal: unit
                .get("Service", "KillSignal")
                .unwrap_or("SIGTERM")
                .to_owned(),
            stop_timeout: unit.duration("Service", "TimeoutStopSec").unwrap(),
        }
    }

    /// Waits for the sd_notify message `wanted`, failing with the service's log on timeout.
    async fn expect(&self, wanted: &str, timeout: Duration, scratch: &Path) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.notify.recv(&mut buf)).await {
                Ok(received) => {
                    let n = received.unwrap();
                    // One datagram may carry several newline-separated assignments.
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if text.lines().any(|line| line == wanted) {
                        return;
                    }
                }
                Err(_) => panic!(
                    "{}: no {wanted} within {timeout:?}; its log:\n{}",
                    self.name,
                    std::fs::read_to_string(scratch.join(format!("{}.log", self.name)))
                        .unwrap_or_default()
                ),
            }
        }
    }

    /// Sends the unit's KillSignal, as `systemctl stop` does.
    fn stop(&self) {
        let signal = self.kill_signal.trim_start_matches("SIG");
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.child.id());
    }

    /// Waits for the process to exit within the unit's stop timeout; returns how long it took.
    async fn exited_cleanly(&mut self, scratch: &Path) -> Duration {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{} exited with {status}; its log:\n{}",
                    self.name,
                    std::fs::read_to_string(scratch.join(format!("{}.log", self.name)))
                        .unwrap_or_default()
                );
                return started.elapsed();
            }
            assert!(
                started.elapsed() < self.stop_timeout,
                "{} still running after TimeoutStopSec={:?}",
                self.name,
                self.stop_timeout
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Only reached with the process still running when the test failed midway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `path` on `addr` until `accept` holds for its answer.
async fn until(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    accept: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((status, body)) = http::get(addr, path).await {
            if accept(status, &body) {
                return (status, body);
            }
            last = Some((status, body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("GET {path} on {addr}: still {last:?} after {timeout:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_start_the_binaries_which_find_each_other_and_stop_cleanly() {
    let consul = ConsulDev::start().await;
    let node = SimNode::with_models(&["llama3.2:3b"]).await;
    let scratch = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let ops = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sidecar_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let instance = format!("ollama-deploy-test-{}", node.addr().port());

    let mut sidecar = Service::start(
        "ollama-mesh-sidecar.service",
        "sidecar.env",
        &[
            ("CONSUL_HTTP_ADDR", consul.http_url()),
            ("OLLAMA_MESH_OLLAMA_URL", node.url()),
            ("OLLAMA_MESH_INSTANCE_ID", instance.clone()),
            ("OLLAMA_MESH_GPU_PROBE", "none".into()),
            ("OLLAMA_MESH_METRICS_LISTEN", sidecar_metrics.to_string()),
            ("OLLAMA_MESH_DRAIN_TIMEOUT", "1s".into()),
        ],
        scratch.path(),
    );
    let mut router = Service::start(
        "ollama-mesh-router.service",
        "router.env",
        &[
            ("CONSUL_HTTP_ADDR", consul.http_url()),
            ("OLLAMA_MESH_LISTEN", listen.to_string()),
            ("OLLAMA_MESH_OPS_LISTEN", ops.to_string()),
        ],
        scratch.path(),
    );

    let started = Instant::now();
    sidecar
        .expect("READY=1", READY_TIMEOUT, scratch.path())
        .await;
    router
        .expect("READY=1", READY_TIMEOUT, scratch.path())
        .await;
    eprintln!("both units READY after {:?}", started.elapsed());

    // The router found the node the sidecar registered, through Consul.
    until(
        ops,
        "/v1/mesh/nodes",
        Duration::from_secs(10),
        |status, body| status == 200 && body.contains(&instance) && body.contains("llama3.2:3b"),
    )
    .await;
    until(ops, "/readyz", Duration::from_secs(5), |status, _| {
        status == 200
    })
    .await;
    // router.env requires API keys from Consul KV: a request without one is refused.
    let (status, _) = http::get(listen, "/api/tags")
        .await
        .expect("the router answers");
    assert_eq!(status, 401, "router.env turns API keys on");
    // The env files' other settings are in force: the router registered itself
    // (OLLAMA_MESH_REGISTER) and the sidecar serves metrics.
    let (_, services) = http::get(consul.http_addr(), "/v1/agent/services")
        .await
        .expect("Consul answers");
    assert!(services.contains(&instance), "{services}");
    assert!(services.contains("\"ollama-mesh-router\""), "{services}");
    until(
        sidecar_metrics,
        "/metrics",
        Duration::from_secs(5),
        |status, _| status == 200,
    )
    .await;

    // systemctl stop: the KillSignal, STOPPING=1, deregistration, exit 0 within TimeoutStopSec.
    sidecar.stop();
    router.stop();
    sidecar
        .expect("STOPPING=1", Duration::from_secs(10), scratch.path())
        .await;
    router
        .expect("STOPPING=1", Duration::from_secs(10), scratch.path())
        .await;
    let sidecar_stop = sidecar.exited_cleanly(scratch.path()).await;
    let router_stop = router.exited_cleanly(scratch.path()).await;
    eprintln!("stopped: sidecar in {sidecar_stop:?}, router in {router_stop:?}");
    let (_, services) = http::get(consul.http_addr(), "/v1/agent/services")
        .await
        .expect("Consul answers");
    assert!(
        !services.contains(&instance),
        "the sidecar deregistered: {services}"
    );
    assert!(
        !services.contains("\"ollama-mesh-router\""),
        "the router deregistered: {services}"
    );
}
