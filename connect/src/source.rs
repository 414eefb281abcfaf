//! Following a service's Connect identity in Consul: the leaf certificate and the CA roots are
//! each watched with blocking queries, and every change to either becomes a new [`Identity`]
//! in the shared [`MeshTls`]. A renewal or a rotation therefore reaches the next handshake
//! within a blocking query's round trip.

use std::sync::Arc;
use std::time::Duration;

use ollama_mesh_consul::connect::{CaRoots, LeafCert};
use ollama_mesh_consul::watch::{Watch, WatchConfig, WatchStatus};
use ollama_mesh_consul::Client;
use ollama_mesh_daemon::AbortOnDrop;
use tokio::sync::watch;

use crate::identity::Identity;
use crate::metrics;
use crate::tls::MeshTls;

/// How often the expiry gauge is brought up to date between changes.
const EXPIRY_REFRESH: Duration = Duration::from_secs(15);

/// A running identity watch. Dropping it stops following Consul; the last identity stays in
/// use.
pub struct IdentitySource {
    tls: MeshTls,
    generation: watch::Receiver<u64>,
    leaf_status: Arc<WatchStatus>,
    roots_status: Arc<WatchStatus>,
    _task: AbortOnDrop<()>,
}

impl IdentitySource {
    /// Starts following the leaf certificate of `service` (the token needs `service:write` on
    /// it) and the CA roots.
    pub fn start(client: Client, service: impl Into<String>, config: WatchConfig) -> Self {
        let service = service.into();
        let leaf = Watch::connect_leaf(client.clone(), service.clone(), config.clone());
        let roots = Watch::connect_roots(client, config);
        let tls = MeshTls::default();
        let (generation_tx, generation) = watch::channel(0);
        Self {
            tls: tls.clone(),
            generation,
            leaf_status: leaf.status(),
            roots_status: roots.status(),
            _task: AbortOnDrop::spawn(follow(service, leaf, roots, tls, generation_tx)),
        }
    }

    /// The configurations' shared identity.
    pub fn tls(&self) -> MeshTls {
        self.tls.clone()
    }

    /// Whether a first identity has been issued.
    pub fn is_ready(&self) -> bool {
        *self.generation.borrow() > 0
    }

    /// Waits for the first identity.
    pub async fn ready(&self) {
        let mut generation = self.generation.clone();
        if generation.wait_for(|g| *g > 0).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// A receiver of the number of identities published so far.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }

    /// The leaf watch's errors and staleness.
    pub fn leaf_status(&self) -> Arc<WatchStatus> {
        self.leaf_status.clone()
    }

    /// The roots watch's errors and staleness.
    pub fn roots_status(&self) -> Arc<WatchStatus> {
        self.roots_status.clone()
    }
}

async fn follow(
    service: String,
    leaf: Watch<LeafCert>,
    roots: Watch<CaRoots>,
    tls: MeshTls,
    generation: watch::Sender<u64>,
) {
    let mut leaf_updates = leaf.subscribe();
    let mut root_updates = roots.subscribe();
    let mut refresh = tokio::time::interval(EXPIRY_REFRESH);
    loop {
        let leaf = leaf_updates.borrow_and_update().clone();
        let roots = root_updates.borrow_and_update().clone();
        if let (Some(leaf), Some(roots)) = (leaf, roots) {
            match Identity::new(&leaf, &roots) {
                Ok(identity) => {
                    tracing::info!(
                        service = %identity.service(),
                        serial = identity.serial(),
                        valid_before = leaf.valid_before,
                        roots = identity.root_count(),
                        active_root = roots.active_root_id,
                        "Connect identity issued"
                    );
                    metrics::certificate_expiry(&service, identity.expires_at());
                    tls.set(identity);
                    generation.send_modify(|g| *g += 1);
                }
                Err(error) => tracing::error!(
                    %error,
                    serial = leaf.serial_number,
                    "unusable Connect certificate from Consul; keeping the previous one"
                ),
            }
        }
        loop {
            tokio::select! {
                changed = leaf_updates.changed() => {
                    if changed.is_err() { return; }
                    break;
                }
                changed = root_updates.changed() => {
                    if changed.is_err() { return; }
                    break;
                }
                _ = refresh.tick() => {
                    if let Some(identity) = tls.identity() {
                        metrics::certificate_expiry(&service, identity.expires_at());
                    }
                }
            }
        }
    }
}
