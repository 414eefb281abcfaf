//! The oracle: the limit a scheduler is measured against, and the yardstick of a fleet's
//! capacity.
//!
//! Models are placed by hand, once for each phase of the workload's model mix, and loaded before
//! the run (`keep_alive: -1`, so Ollama never unloads them on its own). Each request goes to a
//! node where its model is placed and a slot is free — the one with the most free slots — and
//! waits here, first come first served, while every such slot is taken. So the oracle never
//! loads a model on demand and never queues a request inside a node, which no online scheduler
//! can match without knowing the workload in advance.
//!
//! A phase starts with the first request for a model that only a later phase places: the
//! oracle then loads that phase's placement and unloads the models it no longer places (the
//! loads the shift costs every system). Requests without a model go to the first node.
//!
//! It runs as `ollama-mesh-bench oracle --config FILE --listen ADDR`, a process of its own like
//! the other peers, so it is pinned to the system-under-test's core.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ollama_mesh_ollama_client::{error_chain, NodeClient};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest a model may take to load or unload where it is placed.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest request body read (the workload's longest conversation is a few KiB).
const MAX_BODY: usize = 16 << 20;

/// One node the oracle sends to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OracleNode {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its parallel slots per loaded model (`OLLAMA_NUM_PARALLEL`).
    pub slots: usize,
}

/// Where each model is placed for one phase of the mix: model names and their node indices,
/// in the order they are loaded (which decides what fits beside what, as in Ollama).
pub type Placement = Vec<(String, Vec<usize>)>;

/// The oracle's whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OracleConfig {
    /// The nodes, in the order placements name them.
    pub nodes: Vec<OracleNode>,
    /// One placement per phase of the mix, in order.
    pub phases: Vec<Placement>,
}

/// Why the oracle could not start.
#[derive(Debug, thiserror::Error)]
pub enum OracleError {
    /// The configuration is not usable.
    #[error("oracle configuration: {0}")]
    Config(String),
    /// A model could not be loaded where it is placed.
    #[error("loading {model} on {addr}: {message}")]
    Load {
        /// The model.
        model: String,
        /// The node.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The listener failed.
    #[error("oracle listener: {0}")]
    Io(#[from] std::io::Error),
}

impl OracleConfig {
    /// Checks that every placement names nodes that exist and that there is a phase.
    pub fn validate(&self) -> Result<(), OracleError> {
        if self.nodes.is_empty() || self.phases.is_empty() {
            return Err(OracleError::Config(
                "needs nodes and at least one phase".into(),
            ));
        }
        for (phase, placement) in self.phases.iter().enumerate() {
            for (model, nodes) in placement {
                if nodes.is_empty() || nodes.iter().any(|&n| n >= self.nodes.len()) {
                    return Err(OracleError::Config(format!(
                        "phase {phase}: {model} is placed on {nodes:?}, but there are {} nodes",
                        self.nodes.len()
                    )));
                }
            }
        }
        Ok(())
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One model's share of a phase: a FIFO gate that admits as many requests as its nodes have
/// slots, so an admitted request always finds a free slot.
struct Gate {
    nodes: Vec<usize>,
    admit: Arc<Semaphore>,
}

struct Phase {
    gates: HashMap<String, Gate>,
}

struct Oracle {
    config: OracleConfig,
    phases: Vec<Phase>,
    http: HttpClient,
    /// Loads and unloads the placement (whole answers, bounded in time).
    loads: NodeClient,
    state: Mutex<State>,
}

struct State {
    phase: usize,
    /// Requests in flight per (node, model).
    in_flight: HashMap<(usize, String), usize>,
}

/// Loads the first phase's placement, then serves on `listener` until the process ends.
pub async fn serve(listener: TcpListener, config: OracleConfig) -> Result<(), OracleError> {
    config.validate()?;
    let phases = config
        .phases
        .iter()
        .map(|placement| Phase {
            gates: placement
                .iter()
                .map(|(model, nodes)| {
                    let slots = nodes.iter().map(|&n| config.nodes[n].slots).sum();
                    let gate = Gate {
                        nodes: nodes.clone(),
                        admit: Arc::new(Semaphore::new(slots)),
                    };
                    (model.clone(), gate)
                })
                .collect(),
        })
        .collect();
    let oracle = Arc::new(Oracle {
        http: Client::builder(TokioExecutor::new()).build_http(),
        loads: NodeClient::http(),
        phases,
        state: Mutex::new(State {
            phase: 0,
            in_flight: HashMap::new(),
        }),
        config,
    });
    oracle.place(0, None).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let oracle = oracle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let oracle = oracle.clone();
                async move { Ok::<_, Infallible>(oracle.handle(request).await) }
            });
            // A client that goes away mid-request is not the oracle's concern.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

impl Oracle {
    async fn handle(self: &Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(error) => return answer(StatusCode::BAD_REQUEST, &error.to_string()),
        };
        let model = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("model")?.as_str().map(str::to_owned))
            .filter(|m| !m.is_empty());
        let (node, slot) = match &model {
            Some(model) => {
                let (node, slot) = self.acquire(model).await;
                (node, Some(slot))
            }
            None => (0, None),
        };
        let addr = self.config.nodes[node].addr;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut forward = Request::builder()
            .method(parts.method)
            .uri(format!("http://{addr}{path}"));
        for (name, value) in &parts.headers {
            if name != http::header::HOST {
                forward = forward.header(name, value);
            }
        }
        let Ok(forward) = forward.body(Full::new(body)) else {
            return answer(StatusCode::BAD_REQUEST, "request could not be forwarded");
        };
        match self.http.request(forward).await {
            Ok(response) => response.map(|body| {
                // The slot is held until the answer's last byte has passed (or the client
                // went away), as a node's slot is.
                body.map_frame(move |frame| {
                    let _held = &slot;
                    frame
                })
                .boxed()
            }),
            Err(error) => answer(StatusCode::BAD_GATEWAY, &error.to_string()),
        }
    }

    /// Waits for a slot for `model` on a node of the current phase's placement and takes it.
    async fn acquire(self: &Arc<Self>, model: &str) -> (usize, Slot) {
        let phase = self.phase_for(model);
        let Some(gate) = self.phases[phase].gates.get(model) else {
            // Placed nowhere: the first node, outside any slot count.
            let slot = Slot {
                oracle: self.clone(),
                counted: None,
                _admitted: None,
            };
            return (0, slot);
        };
        let admitted = gate.admit.clone().acquire_owned().await.ok();
        let mut state = self.lock();
        let node = gate
            .nodes
            .iter()
            .copied()
            .max_by_key(|&n| {
                let used = state
                    .in_flight
                    .get(&(n, model.to_owned()))
                    .copied()
                    .unwrap_or(0);
                // Most free slots; ties to the first placed.
                (
                    self.config.nodes[n].slots as isize - used as isize,
                    std::cmp::Reverse(n),
                )
            })
            .unwrap_or(0);
        *state.in_flight.entry((node, model.to_owned())).or_default() += 1;
        drop(state);
        let slot = Slot {
            oracle: self.clone(),
            counted: Some((node, model.to_owned())),
            _admitted: admitted,
        };
        (node, slot)
    }

    /// The phase a request for `model` belongs to: the current one, unless only a later phase
    /// places the model, which then begins.
    fn phase_for(self: &Arc<Self>, model: &str) -> usize {
        let mut state = self.lock();
        let current = state.phase;
        if self.phases[current].gates.contains_key(model) {
            return current;
        }
        let Some(next) =
            (current + 1..self.phases.len()).find(|&p| self.phases[p].gates.contains_key(model))
        else {
            return current;
        };
        state.phase = next;
        drop(state);
        let oracle = self.clone();
        tokio::spawn(async move {
            if let Err(error) = oracle.place(next, Some(current)).await {
                tracing::warn!(%error, "the oracle's next placement did not load");
            }
        });
        next
    }

    /// Unloads what phase `from` placed and phase `to` does not, then loads `to`'s placement.
    async fn place(&self, to: usize, from: Option<usize>) -> Result<(), OracleError> {
        let placed = |phase: usize| -> Vec<(usize, String)> {
            self.config.phases[phase]
                .iter()
                .flat_map(|(model, nodes)| nodes.iter().map(move |&n| (n, model.clone())))
                .collect()
        };
        let wanted = placed(to);
        if let Some(from) = from {
            for (node, model) in placed(from) {
                if !wanted.contains(&(node, model.clone())) {
                    self.keep_alive(node, &model, 0).await?;
                }
            }
        }
        for (node, model) in wanted {
            self.keep_alive(node, &model, -1).await?;
        }
        Ok(())
    }

    /// Ollama's empty generate request: loads `model` on `node` (or, with 0, unloads it) and
    /// sets how long it stays.
    async fn keep_alive(
        &self,
        node: usize,
        model: &str,
        keep_alive: i64,
    ) -> Result<(), OracleError> {
        let addr = self.config.nodes[node].addr;
        let error = |message: String| OracleError::Load {
            model: model.to_owned(),
            addr,
            message,
        };
        let body = serde_json::json!({"model": model, "keep_alive": keep_alive}).to_string();
        let request = Request::post(format!("http://{addr}/api/generate"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| error(e.to_string()))?;
        let answer = self
            .loads
            .send(request, LOAD_TIMEOUT)
            .await
            .map_err(|e| error(error_chain(&e)))?;
        if !answer.status.is_success() {
            let text = String::from_utf8_lossy(&answer.body);
            return Err(error(format!("{}: {text}", answer.status)));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A request's slot on a node: freed when dropped.
struct Slot {
    oracle: Arc<Oracle>,
    /// The (node, model) counted, `None` for a model placed nowhere.
    counted: Option<(usize, String)>,
    /// The place in the model's gate, given back with the slot.
    _admitted: Option<OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(key) = &self.counted else {
            return;
        };
        let mut state = self.oracle.lock();
        if let Some(count) = state.in_flight.get_mut(key) {
            *count = count.saturating_sub(1);
        }
    }
}

/// An answer of the oracle's own, in Ollama's error shape.
fn answer(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}
