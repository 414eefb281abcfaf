//! Where the backend set comes from: Consul discovery or a static list of URLs. Request handling
//! and the ops endpoints only see this trait.

use std::sync::Arc;

use ollama_mesh_consul::watch::WatchStatus;
use tokio::sync::watch;

use crate::{BackendSet, Discovery};

/// A source of backend sets.
pub trait Fleet: Send + Sync + 'static {
    /// The current set; cheap (an `Arc` clone), never blocks.
    fn backends(&self) -> Arc<BackendSet>;

    /// Whether a first set has been published (readiness).
    fn is_ready(&self) -> bool;

    /// The Consul watches feeding the set, by name, for metrics and readiness details; empty
    /// for sources that do not use Consul.
    fn watches(&self) -> Vec<(&'static str, Arc<WatchStatus>)>;

    /// Notified after each new set is published; `None` for sources whose set never changes.
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

impl Fleet for Discovery {
    fn backends(&self) -> Arc<BackendSet> {
        Discovery::backends(self)
    }

    fn is_ready(&self) -> bool {
        Discovery::is_ready(self)
    }

    fn watches(&self) -> Vec<(&'static str, Arc<WatchStatus>)> {
        let mut watches = vec![
            ("health", self.health_status()),
            ("drain", self.drain_status()),
        ];
        watches.extend(self.mesh_watches());
        watches
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.subscribe())
    }
}
