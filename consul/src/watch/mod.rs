//! Following a Consul result with blocking queries, by Consul's published rules:
//!
//! * block with the last `X-Consul-Index`; never block on index 0;
//! * an index that goes backwards (a restored snapshot, a restarted `-dev` agent) resets to 0,
//!   which re-reads everything at once;
//! * the client timeout outlasts `wait` plus Consul's jitter (`wait / 16`);
//! * a token bucket spaces queries under churn, so a busy catalog cannot make a busy loop;
//! * errors and HTTP 429 back off exponentially with jitter, and the next query after an error
//!   does not block (a restarted agent's index may be lower than ours);
//! * a response is not proof of change: unchanged data is not republished;
//! * while Consul is unreachable the last good snapshot stays published.
//!
//! A [`Watch`] publishes snapshots through [`tokio::sync::watch`], so readers always see the
//! latest complete value and never block the watcher.

mod backoff;
mod rate_limit;
mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ollama_mesh_daemon::AbortOnDrop;
use tokio::sync::watch;

use crate::client::{Client, Consistency, QueryOptions, QueryResponse};
use crate::connect::{CaRoots, Intention, LeafCert};
use crate::health::ServiceEntry;
use crate::kv::KvPair;
use crate::Error;

use backoff::Backoff;
use rate_limit::TokenBucket;
pub use status::WatchStatus;

/// How a watch queries.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchConfig {
    /// Longest a query blocks (at most 10 minutes in Consul).
    pub wait: Duration,
    /// Read consistency; `Stale` spreads reads over all servers.
    pub consistency: Consistency,
    /// Queries allowed back to back before spacing starts.
    pub burst: u32,
    /// Sustained queries per second under churn.
    pub per_second: f64,
    /// First delay after an error.
    pub initial_backoff: Duration,
    /// Longest delay after repeated errors.
    pub max_backoff: Duration,
}

impl Default for WatchConfig {
    /// Five-minute waits; a burst of 4 then at most 5 queries a second, which keeps the
    /// reaction to a change well under a second while capping a churning catalog's load;
    /// backoff from 250 ms to 30 s.
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(300),
            consistency: Consistency::Default,
            burst: 4,
            per_second: 5.0,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// A running watch. Dropping it stops the query loop.
pub struct Watch<T> {
    snapshots: watch::Receiver<Option<Arc<T>>>,
    status: Arc<WatchStatus>,
    _task: AbortOnDrop<()>,
}

impl<T: PartialEq + Send + Sync + 'static> Watch<T> {
    /// Starts following whatever `fetch` returns. `fetch` is called with the options for each
    /// query (index, wait, consistency) and performs one read.
    pub fn spawn<F, Fut>(name: impl Into<String>, config: WatchConfig, fetch: F) -> Self
    where
        F: FnMut(QueryOptions) -> Fut + Send + 'static,
        Fut: Future<Output = Result<QueryResponse<T>, Error>> + Send + 'static,
    {
        let (sender, snapshots) = watch::channel(None);
        let status = Arc::new(WatchStatus::default());
        let task = AbortOnDrop::spawn(run(name.into(), config, fetch, sender, status.clone()));
        Self {
            snapshots,
            status,
            _task: task,
        }
    }

    /// The latest snapshot; `None` until the first successful query.
    pub fn current(&self) -> Option<Arc<T>> {
        self.snapshots.borrow().clone()
    }

    /// A receiver that is notified of every published snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<T>>> {
        self.snapshots.clone()
    }

    /// Health and counters of the query loop.
    pub fn status(&self) -> Arc<WatchStatus> {
        self.status.clone()
    }
}

impl Watch<Vec<ServiceEntry>> {
    /// Follows every instance of `service`, with checks (no `?passing`: routers apply the
    /// contract's rules to warning and maintenance instances themselves).
    pub fn health_service(client: Client, service: impl Into<String>, config: WatchConfig) -> Self {
        let service = service.into();
        Self::spawn(
            format!("health/service/{service}"),
            config,
            move |options| {
                let client = client.clone();
                let service = service.clone();
                async move { client.health_service(&service, &options).await }
            },
        )
    }
}

impl Watch<Vec<KvPair>> {
    /// Follows every key under `prefix` (an empty list when there are none).
    pub fn kv_prefix(client: Client, prefix: impl Into<String>, config: WatchConfig) -> Self {
        let prefix = prefix.into();
        Self::spawn(format!("kv/{prefix}"), config, move |options| {
            let client = client.clone();
            let prefix = prefix.clone();
            async move { client.kv_list(&prefix, &options).await }
        })
    }
}

impl Watch<CaRoots> {
    /// Follows the mesh's CA roots (a rotation adds a root and changes the active one).
    pub fn connect_roots(client: Client, config: WatchConfig) -> Self {
        Self::spawn("connect/ca/roots", config, move |options| {
            let client = client.clone();
            async move { client.connect_ca_roots(&options).await }
        })
    }
}

impl Watch<LeafCert> {
    /// Follows `service`'s leaf certificate through renewals and CA rotations.
    pub fn connect_leaf(client: Client, service: impl Into<String>, config: WatchConfig) -> Self {
        let service = service.into();
        Self::spawn(
            format!("connect/ca/leaf/{service}"),
            config,
            move |options| {
                let client = client.clone();
                let service = service.clone();
                async move { client.connect_ca_leaf(&service, &options).await }
            },
        )
    }
}

impl Watch<Vec<Intention>> {
    /// Follows the intentions that decide who may reach `destination`.
    pub fn intentions(client: Client, destination: impl Into<String>, config: WatchConfig) -> Self {
        let destination = destination.into();
        Self::spawn(
            format!("connect/intentions/{destination}"),
            config,
            move |options| {
                let client = client.clone();
                let destination = destination.clone();
                async move {
                    client
                        .intentions_for_destination(&destination, &options)
                        .await
                }
            },
        )
    }
}

/// The index to block on after a response: reset when it went backwards from the last one
/// received, and never 0 (Consul answers a query on index 0 at once).
fn next_index(last_seen: u64, received: u64) -> u64 {
    if received < last_seen {
        0
    } else {
        received.max(1)
    }
}

async fn run<T, F, Fut>(
    name: String,
    config: WatchConfig,
    mut fetch: F,
    sender: watch::Sender<Option<Arc<T>>>,
    status: Arc<WatchStatus>,
) where
    T: PartialEq + Send + Sync + 'static,
    F: FnMut(QueryOptions) -> Fut + Send + 'static,
    Fut: Future<Output = Result<QueryResponse<T>, Error>> + Send,
{
    let mut bucket = TokenBucket::new(config.burst, config.per_second);
    let mut backoff = Backoff::new(config.initial_backoff, config.max_backoff);
    // `index` is what the next query blocks on; `last_seen` is the raw index Consul last sent.
    let mut index = 0;
    let mut last_seen = 0;
    let mut failing = false;
    loop {
        bucket.acquire().await;
        status.record_request();
        let options = QueryOptions {
            index,
            wait: Some(config.wait),
            consistency: config.consistency,
        };
        let outcome = tokio::select! {
            outcome = fetch(options) => outcome,
            () = sender.closed() => return,
        };
        match outcome {
            Ok(response) => {
                if failing {
                    tracing::info!(watch = %name, "Consul watch recovered");
                    failing = false;
                }
                backoff.reset();
                if response.index < last_seen {
                    tracing::info!(watch = %name, from = last_seen, to = response.index, "Consul index went backwards; re-reading");
                }
                index = next_index(last_seen, response.index);
                last_seen = response.index;
                status.record_success(response.index);
                let published = sender.send_if_modified(|current| {
                    if current.as_deref() == Some(&response.value) {
                        return false;
                    }
                    *current = Some(Arc::new(response.value));
                    true
                });
                if published {
                    status.record_update();
                }
            }
            Err(error) => {
                status.record_error();
                // After a failure the agent may have restarted with a lower index; blocking on
                // the old one would then wait out a whole `wait` for the next change. Re-read
                // at once instead (unchanged data is still not republished).
                index = 0;
                last_seen = 0;
                let delay = backoff.next_delay(error.is_rate_limited());
                if !failing {
                    tracing::warn!(watch = %name, %error, "Consul watch failing; keeping the last snapshot and retrying with backoff");
                    failing = true;
                } else {
                    tracing::debug!(watch = %name, %error, ?delay, "Consul watch still failing");
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = sender.closed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
