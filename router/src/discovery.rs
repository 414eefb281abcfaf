//! Following the fleet in Consul: a background task watches the service's health (without
//! `?passing`, so warning and maintenance instances are seen and judged by the contract's
//! rules) and the drain keys, rebuilds the [`BackendSet`] on every change, and publishes it
//! through an [`ArcSwap`] that request handling reads without locks.
//!
//! While Consul is unreachable the watches keep their last snapshots, so routing goes on with
//! the last good set; [`Discovery::health_status`] and [`Discovery::drain_status`] say so for
//! metrics and readiness. When Consul suddenly lists no instance at all where it listed some
//! (an agent restarted empty, a catalog being rebuilt), the last set is kept for
//! [`EMPTY_CATALOG_GRACE`] while the sidecars register again, unless an instance appears.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ollama_mesh_consul::contract::kv as layout;
use ollama_mesh_consul::health::ServiceEntry;
use ollama_mesh_consul::kv::KvPair;
use ollama_mesh_consul::watch::{Watch, WatchConfig, WatchStatus};
use ollama_mesh_consul::Client;
use ollama_mesh_daemon::AbortOnDrop;
use tokio::sync::watch;

use crate::backend::{Backend, MeshPolicy};
use crate::backend_set::BackendSet;
use crate::mesh::MeshClient;

/// How long the last set is kept when Consul's list of instances turns empty at once: several
/// of the sidecars' registration retries.
pub const EMPTY_CATALOG_GRACE: Duration = Duration::from_secs(30);

/// The live backend set of one service. Dropping it stops the watches.
pub struct Discovery {
    current: Arc<ArcSwap<BackendSet>>,
    mesh: Option<Arc<MeshClient>>,
    generation: watch::Receiver<u64>,
    health_status: Arc<WatchStatus>,
    drain_status: Arc<WatchStatus>,
    _task: AbortOnDrop<()>,
}

impl Discovery {
    /// Starts following the instances of `service` and the drain keys. The set is empty until
    /// both watches have answered once (see [`Discovery::ready`]): routing on health alone
    /// could send work to an instance an operator has drained. With `mesh`, Connect-native
    /// instances are reached through the service mesh, and readiness also waits for the
    /// router's certificate.
    pub fn start(
        client: Client,
        service: impl Into<String>,
        config: WatchConfig,
        mesh: Option<Arc<MeshClient>>,
    ) -> Self {
        let health = Watch::health_service(client.clone(), service, config.clone());
        let drains = Watch::kv_prefix(client, layout::DRAIN_PREFIX, config);
        let current = Arc::new(ArcSwap::from_pointee(BackendSet::default()));
        let (generation_tx, generation) = watch::channel(0);
        let policy = mesh.as_ref().map(|m| m.policy()).unwrap_or_default();
        Self {
            current: current.clone(),
            mesh,
            generation,
            health_status: health.status(),
            drain_status: drains.status(),
            _task: AbortOnDrop::spawn(follow(health, drains, current, generation_tx, policy)),
        }
    }

    /// The current set: a lock-free read, cheap enough for every request.
    pub fn backends(&self) -> Arc<BackendSet> {
        self.current.load_full()
    }

    /// Whether the first set from Consul has been published (and, in the mesh, the router has
    /// its certificate).
    pub fn is_ready(&self) -> bool {
        *self.generation.borrow() > 0 && self.mesh.as_ref().is_none_or(|m| m.is_ready())
    }

    /// The mesh identity's watches, when the router is in the mesh.
    pub fn mesh_watches(&self) -> Vec<(&'static str, Arc<WatchStatus>)> {
        self.mesh.iter().flat_map(|m| m.watches()).collect()
    }

    /// Waits until the first set from Consul has been published (and, in the mesh, the
    /// router's certificate issued).
    pub async fn ready(&self) {
        let mut generation = self.generation.clone();
        // Only fails once the task has ended, and then readiness can never come.
        if generation.wait_for(|g| *g > 0).await.is_err() {
            std::future::pending::<()>().await;
        }
        if let Some(mesh) = &self.mesh {
            mesh.ready().await;
        }
    }

    /// A receiver of the number of sets published so far, notified after each one.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }

    /// The health watch's errors, index and staleness.
    pub fn health_status(&self) -> Arc<WatchStatus> {
        self.health_status.clone()
    }

    /// The drain-key watch's errors, index and staleness.
    pub fn drain_status(&self) -> Arc<WatchStatus> {
        self.drain_status.clone()
    }
}

/// Rebuilds and publishes the set whenever either watch publishes, until a watch stops.
async fn follow(
    health: Watch<Vec<ServiceEntry>>,
    drains: Watch<Vec<KvPair>>,
    current: Arc<ArcSwap<BackendSet>>,
    generation: watch::Sender<u64>,
    policy: MeshPolicy,
) {
    let mut health_updates = health.subscribe();
    let mut drain_updates = drains.subscribe();
    // Since when Consul has listed nothing where the published set has instances.
    let mut emptied: Option<tokio::time::Instant> = None;
    loop {
        let entries = health_updates.borrow_and_update().clone();
        let keys = drain_updates.borrow_and_update().clone();
        if let (Some(entries), Some(keys)) = (entries, keys) {
            let previous = current.load_full();
            let now = tokio::time::Instant::now();
            let sudden_empty = entries.is_empty() && !previous.is_empty();
            if !sudden_empty {
                emptied = None;
            } else if emptied.is_none() {
                tracing::warn!(
                    instances = previous.len(),
                    grace = ?EMPTY_CATALOG_GRACE,
                    "Consul lists no instance at all; routing on the last set while they register again"
                );
                emptied = Some(now);
            }
            let holding = emptied.is_some_and(|since| now < since + EMPTY_CATALOG_GRACE);
            if !holding {
                let next = BackendSet::build(&entries, &keys, &previous, policy);
                log_changes(&previous, &next);
                current.store(Arc::new(next));
                generation.send_modify(|g| *g += 1);
            }
        }
        let grace_over = async {
            match emptied {
                Some(since) => tokio::time::sleep_until(since + EMPTY_CATALOG_GRACE).await,
                None => std::future::pending().await,
            }
        };
        let changed = tokio::select! {
            changed = health_updates.changed() => changed,
            changed = drain_updates.changed() => changed,
            () = grace_over => Ok(()),
        };
        if changed.is_err() {
            tracing::error!("a Consul watch stopped; routing stays on the last backend set");
            return;
        }
    }
}

/// Logs every instance that appeared, left, or changed routing state.
fn log_changes(previous: &BackendSet, next: &BackendSet) {
    let key = |b: &Arc<Backend>| (b.node().to_owned(), b.id().clone());
    let before: HashMap<_, &Arc<Backend>> =
        previous.backends().iter().map(|b| (key(b), b)).collect();
    let after: HashMap<_, &Arc<Backend>> = next.backends().iter().map(|b| (key(b), b)).collect();
    for (key, backend) in &after {
        match before.get(key) {
            None => tracing::info!(
                instance = %backend.id(),
                node = backend.node(),
                address = backend.address(),
                state = ?backend.state(),
                reach = ?backend.reach(),
                meta_error = ?backend.meta().err(),
                "instance appeared"
            ),
            Some(old) if old.state() != backend.state() => tracing::info!(
                instance = %backend.id(),
                node = backend.node(),
                from = ?old.state(),
                to = ?backend.state(),
                "instance changed state"
            ),
            Some(_) => {}
        }
    }
    for (key, backend) in &before {
        if !after.contains_key(key) {
            tracing::info!(instance = %backend.id(), node = backend.node(), "instance left");
        }
    }
}
