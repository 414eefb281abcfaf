//! Simulated nodes as separate `ollama-sim` processes, pinned to the load generator's core so
//! the system under test keeps its own; with their counters (`/sim/stats`) and faults
//! (`/sim/faults`) at hand.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::Context;
use crate::procs::Pinned;

/// How long a simulator may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a simulator could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// It did not start.
    #[error("ollama-sim {name}: {message}")]
    Start {
        /// The node.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// Its control API did not answer.
    #[error("ollama-sim at {addr}: {message}")]
    Control {
        /// The node's address.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
}

/// One running simulator, killed on drop.
pub struct SimProcess {
    name: String,
    addr: SocketAddr,
    process: Option<Pinned>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl SimProcess {
    /// Starts a simulator configured by the TOML text `config` on a free loopback port.
    pub async fn start(context: &Context, name: &str, config: &str) -> Result<Self, SimError> {
        let start_error = |message: String| SimError::Start {
            name: name.to_owned(),
            message,
        };
        let path = context.work_dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).map_err(|e| start_error(e.to_string()))?;
        let mut command = tokio::process::Command::new(&context.bins.sim);
        command
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut process =
            Pinned::spawn(command, &context.cores.load).map_err(|e| start_error(e.to_string()))?;
        let stdout = process
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| start_error("no stdout".to_owned()))?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| start_error("did not say where it listens".to_owned()))?
            .map_err(|e| start_error(e.to_string()))?
            .unwrap_or_default();
        let addr = first
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| start_error(format!("unexpected first line {first:?}")))?;
        Ok(Self {
            name: name.to_owned(),
            addr,
            process: Some(process),
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its counters (`/sim/stats`).
    pub async fn stats(&self) -> Result<Value, SimError> {
        self.call(Method::GET, "/sim/stats", Bytes::new()).await
    }

    /// Changes its faults (`{"busy": true}`, `{"stall_ms": 100}`…).
    pub async fn set_faults(&self, faults: Value) -> Result<(), SimError> {
        self.call(Method::POST, "/sim/faults", Bytes::from(faults.to_string()))
            .await
            .map(drop)
    }

    /// Kills it abruptly (SIGKILL), as a preempted machine disappears.
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill().await;
        }
    }

    async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<Value, SimError> {
        let error = |message: String| SimError::Control {
            addr: self.addr,
            message,
        };
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| error(e.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| error(e.to_string()))?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| error(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| error(e.to_string()))
    }
}

/// Several simulators.
pub struct SimFleet {
    nodes: Vec<SimProcess>,
}

impl SimFleet {
    /// Starts one simulator per `(name, config)`.
    pub async fn start(context: &Context, nodes: &[(String, String)]) -> Result<Self, SimError> {
        let mut started = Vec::with_capacity(nodes.len());
        for (name, config) in nodes {
            started.push(SimProcess::start(context, name, config).await?);
        }
        Ok(Self { nodes: started })
    }

    /// The nodes, in the order given.
    pub fn nodes(&self) -> &[SimProcess] {
        &self.nodes
    }

    /// The nodes, to kill one.
    pub fn nodes_mut(&mut self) -> &mut [SimProcess] {
        &mut self.nodes
    }

    /// Every node's address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(SimProcess::addr).collect()
    }

    /// A counter of `/sim/stats` summed over the nodes that still answer.
    pub async fn total(&self, counter: &str) -> u64 {
        let mut total = 0;
        for node in &self.nodes {
            if let Ok(stats) = node.stats().await {
                total += stats[counter].as_u64().unwrap_or(0);
            }
        }
        total
    }
}
