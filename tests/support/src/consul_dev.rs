//! A real Consul agent in dev mode, one per test, on ports nobody else uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{free_port, http, workspace_root};

/// How long an agent may take to elect itself leader (about 1–2 s normally; CI machines are slow).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `consul agent -dev`, killed on drop.
pub struct ConsulDev {
    binary: PathBuf,
    ports: Ports,
    log: PathBuf,
    child: Option<Child>,
}

#[derive(Clone, Copy)]
struct Ports {
    http: u16,
    dns: u16,
    serf_lan: u16,
    serf_wan: u16,
    server: u16,
    grpc: u16,
}

impl Ports {
    fn pick() -> Self {
        Self {
            http: free_port(),
            dns: free_port(),
            serf_lan: free_port(),
            serf_wan: free_port(),
            server: free_port(),
            grpc: free_port(),
        }
    }
}

/// The consul binary: `CONSUL_BIN`, else whatever `scripts/ensure-consul` prints (which
/// prefers `consul` on PATH and builds a pinned release only when nothing else is there).
pub fn consul_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("CONSUL_BIN").filter(|b| !b.is_empty()) {
                return PathBuf::from(bin);
            }
            let script = workspace_root().join("scripts/ensure-consul");
            let output = Command::new(&script)
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(output.status.success(), "{} failed", script.display());
            let stdout = String::from_utf8_lossy(&output.stdout);
            PathBuf::from(
                stdout
                    .lines()
                    .last()
                    .expect("ensure-consul printed a path")
                    .trim(),
            )
        })
        .clone()
}

impl ConsulDev {
    /// Starts an agent and waits until it has a leader. Panics with the agent's log if it
    /// cannot start.
    pub async fn start() -> Self {
        let binary = consul_binary();
        let mut last_log = String::new();
        // Ports are free when picked but could be taken before Consul binds them: retry.
        for _ in 0..3 {
            let ports = Ports::pick();
            let log = std::env::temp_dir().join(format!(
                "ollama-mesh-consul-{}-{}.log",
                std::process::id(),
                ports.http
            ));
            let mut agent = Self {
                binary: binary.clone(),
                ports,
                log,
                child: None,
            };
            agent.spawn();
            if agent.wait_ready().await {
                return agent;
            }
            last_log = agent.log_tail();
        }
        panic!("consul agent -dev did not become ready; last log:\n{last_log}");
    }

    /// The HTTP API address.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.http))
    }

    /// The HTTP API address as `CONSUL_HTTP_ADDR` takes it.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// PUTs `body` to the agent's HTTP API and panics unless it answers 200.
    pub async fn put(&self, path: &str, body: &str) -> String {
        match http::put(self.http_addr(), path, body).await {
            Some((200, answer)) => answer,
            other => panic!("PUT {path} {body}: {other:?}"),
        }
    }

    /// Replaces the intentions for `destination` with `sources`, each `(service, "allow" |
    /// "deny")`, as an operator does in the UI's Intentions page.
    pub async fn set_intentions(&self, destination: &str, sources: &[(&str, &str)]) {
        let sources: Vec<String> = sources
            .iter()
            .map(|(name, action)| format!(r#"{{"Name":"{name}","Action":"{action}"}}"#))
            .collect();
        let entry = format!(
            r#"{{"Kind":"service-intentions","Name":"{destination}","Sources":[{}]}}"#,
            sources.join(",")
        );
        self.put("/v1/config", &entry).await;
    }

    /// Rotates the Connect CA to a new root signed by `private_key_pem` (an EC P-256 key).
    pub async fn rotate_ca(&self, private_key_pem: &str) {
        let key = private_key_pem.replace('\n', "\\n");
        let config = format!(
            r#"{{"Provider":"consul","Config":{{"PrivateKey":"{key}","LeafCertTTL":"72h"}}}}"#
        );
        self.put("/v1/connect/ca/configuration", &config).await;
    }

    /// Kills the agent abruptly, as a crash or a preempted node would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again on the same ports. Dev mode keeps nothing, so every registration
    /// and key is gone, and the Raft index starts over.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        assert!(
            self.wait_ready().await,
            "consul agent -dev did not come back; log:\n{}",
            self.log_tail()
        );
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("create consul log");
        let p = self.ports;
        let child = Command::new(&self.binary)
            .args([
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
            ])
            .args(["-log-level", "warn"])
            .arg(format!("-http-port={}", p.http))
            .arg(format!("-dns-port={}", p.dns))
            .arg(format!("-serf-lan-port={}", p.serf_lan))
            .arg(format!("-serf-wan-port={}", p.serf_wan))
            .arg(format!("-server-port={}", p.server))
            .arg(format!("-grpc-port={}", p.grpc))
            .arg("-grpc-tls-port=-1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if let Some((200, body)) = http::get(self.http_addr(), "/v1/status/leader").await {
                if body.trim() != "\"\"" && !body.trim().is_empty() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ConsulDev {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}
