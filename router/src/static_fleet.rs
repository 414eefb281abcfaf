//! Backends given as URLs (`--backend URL`) instead of discovered in Consul: one laptop, a quick
//! trial. The router reads each one's `/api/version`, `/api/tags` and `/api/ps` itself, every few
//! seconds, and describes it the way a sidecar would in Consul: a health entry with the
//! contract's Meta and one check, passing while the backend answers and critical when it stops.
//! The set is then built by [`BackendSet::build`], so model-aware routing and the routing-state
//! rules are exactly those of Consul discovery: a backend that stops answering is taken out,
//! and put back when it answers again.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use ollama_mesh_consul::agent::Weights;
use ollama_mesh_consul::contract::{InstanceId, ModelList, NodeMeta};
use ollama_mesh_consul::health::{CatalogService, CheckStatus, HealthCheck, Node, ServiceEntry};
use ollama_mesh_consul::watch::WatchStatus;
use ollama_mesh_daemon::AbortOnDrop;
use ollama_mesh_ollama_client::{AskError, NodeClient, NodeState};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::backend::MeshPolicy;
use crate::backend_tls::{self, BackendTls};
use crate::{BackendSet, Fleet};

/// Prefix of a static backend's instance ID: `static-<host>-<port>`.
const ID_PREFIX: &str = "static";

/// One `--backend` URL, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticBackend {
    url: String,
    host: String,
    port: u16,
    id: InstanceId,
    tls: bool,
    /// Parallel slots (`--slots`; Ollama does not report them).
    slots: u32,
}

/// Why a `--backend` value is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?}: {reason}")]
pub struct InvalidBackendUrl {
    /// The value given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl StaticBackend {
    /// Parses `http://host[:port]` or `https://host[:port]` (port 80 or 443 when absent, as for
    /// any URL; Ollama's 11434 must be written). `https` is for an Ollama behind a
    /// TLS-terminating proxy such as nginx; Ollama itself serves no TLS.
    pub fn parse(url: &str) -> Result<Self, InvalidBackendUrl> {
        let reject = |reason: &str| InvalidBackendUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| reject("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(reject("only http:// and https:// URLs are supported")),
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(reject("must be http(s)://HOST:PORT without a path"));
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| reject("has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let id = InstanceId::for_node(ID_PREFIX, &host, port)
            .map_err(|e| reject(&format!("cannot name it: {e}")))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            host,
            port,
            id,
            tls,
            slots: 1,
        })
    }

    /// This backend serving `slots` requests per loaded model at once (its
    /// `OLLAMA_NUM_PARALLEL`).
    pub fn with_slots(self, slots: u32) -> Self {
        Self { slots, ..self }
    }

    /// Requests it serves per loaded model at once.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Whether it is reached over HTTPS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The URL without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The instance ID it appears under (`static-<host>-<port>`).
    pub fn id(&self) -> &InstanceId {
        &self.id
    }

    /// Its health entry for the latest reading: `last_good` describes it (models, version);
    /// `error` says why the latest poll failed, if it did.
    fn entry(&self, last_good: Option<&NodeState>, error: Option<&str>) -> ServiceEntry {
        let meta = NodeMeta {
            parallel_slots: self.slots,
            models_on_disk: ModelList::new(last_good.map_or(&[][..], |r| &r.models_on_disk)),
            models_loaded: ModelList::new(
                last_good
                    .into_iter()
                    .flat_map(|r| r.models_loaded.iter().map(|m| m.name.as_str())),
            ),
            ollama_version: last_good.map(|r| r.version.clone()),
            ..NodeMeta::default()
        };
        let (status, output) = match (error, last_good) {
            (Some(error), _) => (CheckStatus::Critical, error.to_owned()),
            (None, Some(reading)) => (
                CheckStatus::Passing,
                format!("ollama {} answers", reading.version),
            ),
            (None, None) => (CheckStatus::Critical, "not polled yet".to_owned()),
        };
        ServiceEntry {
            node: Node {
                node: self.host.clone(),
                address: self.host.clone(),
                ..Node::default()
            },
            service: CatalogService {
                id: self.id.to_string(),
                service: ID_PREFIX.to_owned(),
                address: self.host.clone(),
                port: self.port,
                meta: meta.to_consul_meta(),
                weights: Weights::default(),
                ..CatalogService::default()
            },
            checks: vec![HealthCheck {
                check_id: format!("{}:poll", self.id),
                name: "Ollama API (polled by the router)".to_owned(),
                status,
                output,
                service_id: self.id.to_string(),
                ..HealthCheck::default()
            }],
        }
    }
}

/// How the backends are polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollConfig {
    /// Time between two rounds.
    pub interval: Duration,
    /// Longest one backend may take to answer all three reads.
    pub timeout: Duration,
}

impl Default for PollConfig {
    /// Every 2 s with a 2 s limit: a dead backend is out within about 4 s, which is what a
    /// sidecar's agent check achieves too, and three small GETs every 2 s cost Ollama nothing.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
        }
    }
}

/// The live set of static backends. Dropping it stops the polling.
pub struct StaticFleet {
    current: Arc<ArcSwap<BackendSet>>,
    /// Sets published so far; the first one follows the first round.
    generation: watch::Receiver<u64>,
    _task: AbortOnDrop<()>,
}

impl StaticFleet {
    /// Starts polling `backends`, over HTTPS with `tls` (which https:// backends need). The set
    /// is empty until the first round has finished (see [`StaticFleet::ready`]).
    pub fn start(
        backends: Vec<StaticBackend>,
        config: PollConfig,
        tls: Option<&BackendTls>,
    ) -> Self {
        let current = Arc::new(ArcSwap::from_pointee(BackendSet::default()));
        let (generation_tx, generation) = watch::channel(0);
        let task = AbortOnDrop::spawn(poll(
            backends,
            config,
            probe(config.timeout, tls),
            current.clone(),
            generation_tx,
        ));
        Self {
            current,
            generation,
            _task: task,
        }
    }

    /// Waits until the first round has been published.
    pub async fn ready(&self) {
        let mut generation = self.generation.clone();
        // Only fails once the task has ended, and then readiness can never come.
        if generation.wait_for(|n| *n > 0).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Fleet for StaticFleet {
    fn backends(&self) -> Arc<BackendSet> {
        self.current.load_full()
    }

    fn is_ready(&self) -> bool {
        *self.generation.borrow() > 0
    }

    fn watches(&self) -> Vec<(&'static str, Arc<WatchStatus>)> {
        Vec::new()
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.generation.clone())
    }
}

/// The client reading the backends: the three GETs a sidecar would make, done by the router.
type Probe = NodeClient<HttpsConnector<HttpConnector>>;

/// A probe that gives up connecting after `timeout` (each reading is bounded by it too), reaching
/// https:// backends with `tls`'s trust.
fn probe(timeout: Duration, tls: Option<&BackendTls>) -> Probe {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    connector.set_nodelay(true);
    NodeClient::with_connector(backend_tls::connector(tls, connector))
}

/// What the router knows of one backend between rounds.
struct Polled {
    backend: StaticBackend,
    last_good: Option<NodeState>,
    error: Option<String>,
}

/// Polls every backend at once each round, then publishes the set they make if it changed.
async fn poll(
    backends: Vec<StaticBackend>,
    config: PollConfig,
    probe: Probe,
    current: Arc<ArcSwap<BackendSet>>,
    generation: watch::Sender<u64>,
) {
    let mut polled: Vec<Polled> = backends
        .into_iter()
        .map(|backend| Polled {
            backend,
            last_good: None,
            error: None,
        })
        .collect();
    let mut published: Option<Vec<ServiceEntry>> = None;
    let mut interval = tokio::time::interval(config.interval);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let mut reads = JoinSet::new();
        for (index, p) in polled.iter().enumerate() {
            let probe = probe.clone();
            let url = p.backend.url().to_owned();
            let timeout = config.timeout;
            reads.spawn(async move { (index, probe.read_state(&url, timeout).await) });
        }
        while let Some(joined) = reads.join_next().await {
            let Ok((index, result)) = joined else {
                continue;
            };
            record(&mut polled[index], result);
        }
        let entries: Vec<ServiceEntry> = polled
            .iter()
            .map(|p| p.backend.entry(p.last_good.as_ref(), p.error.as_deref()))
            .collect();
        // An unchanged fleet is not republished: readers keep the same set.
        if published.as_ref() != Some(&entries) {
            let next =
                BackendSet::build(&entries, &[], &current.load_full(), MeshPolicy::default());
            current.store(Arc::new(next));
            published = Some(entries);
            generation.send_modify(|n| *n += 1);
        }
    }
}

/// Keeps the last good reading across failures (so the operator still sees what the backend
/// had) and logs once per change between answering and not.
fn record(polled: &mut Polled, result: Result<NodeState, AskError>) {
    let url = polled.backend.url();
    match result {
        Ok(reading) => {
            if polled.error.take().is_some() {
                tracing::info!(
                    backend = url,
                    "static backend answers again; back in service"
                );
            }
            polled.last_good = Some(reading);
        }
        Err(error) => {
            match (&polled.error, &polled.last_good) {
                (Some(_), _) => {}
                (None, Some(_)) => {
                    tracing::warn!(backend = url, %error, "static backend stopped answering; taken out")
                }
                (None, None) => {
                    tracing::warn!(backend = url, %error, "static backend does not answer; out until it does")
                }
            }
            polled.error = Some(error.to_string());
        }
    }
}

#[cfg(test)]
mod tests;
