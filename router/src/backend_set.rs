//! The fleet at one moment: every instance of the service with its routing state, built from
//! one health snapshot and the drain keys, and never changed afterwards. Request handling
//! shares it through an `Arc` and reads it without locks.

use std::collections::HashMap;
use std::sync::Arc;

use ollama_mesh_consul::contract::kv as layout;
use ollama_mesh_consul::health::ServiceEntry;
use ollama_mesh_consul::kv::KvPair;

use crate::backend::{Backend, InFlight, MeshPolicy};

/// Every known instance, sorted by instance ID then node.
#[derive(Debug, Default)]
pub struct BackendSet {
    backends: Vec<Arc<Backend>>,
}

impl BackendSet {
    /// Builds the set for `entries` (a `/v1/health/service/<name>` result) and `drain_keys` (the
    /// keys under [`layout::DRAIN_PREFIX`]); `mesh` decides how each instance is reached.
    ///
    /// An instance that was in `previous` keeps its in-flight counter, so requests running
    /// across the change are still counted. Instances are told apart by node and ID, since
    /// Consul only makes IDs unique per agent.
    pub fn build(
        entries: &[ServiceEntry],
        drain_keys: &[KvPair],
        previous: &BackendSet,
        mesh: MeshPolicy,
    ) -> Self {
        let drains: HashMap<String, &str> = drain_keys
            .iter()
            .filter_map(|pair| {
                let instance = layout::instance_from_drain_key(&pair.key)?;
                Some((instance.as_str().to_owned(), pair.value_str().unwrap_or("")))
            })
            .collect();
        let counters: HashMap<(&str, &str), &InFlight> = previous
            .backends
            .iter()
            .map(|b| ((b.node(), &**b.id()), b.in_flight()))
            .collect();
        let mut backends: Vec<Arc<Backend>> = entries
            .iter()
            .map(|entry| {
                let id = entry.service.id.as_str();
                let in_flight = counters
                    .get(&(entry.node.node.as_str(), id))
                    .map_or_else(InFlight::default, |counter| (*counter).clone());
                let drain_reason = drains.get(id).copied();
                Arc::new(Backend::from_entry(entry, drain_reason, in_flight, mesh))
            })
            .collect();
        backends.sort_by(|a, b| (a.id(), a.node()).cmp(&(b.id(), b.node())));
        Self { backends }
    }

    /// Every instance, whatever its state.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The instances that take new work (see [`crate::backend::Backend::state`]).
    pub fn accepting(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.iter().filter(|b| b.accepts_new_work())
    }

    /// The instance with this ID (the first, should two nodes register the same ID).
    pub fn get(&self, id: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| &**b.id() == id)
    }

    /// How many instances the set holds.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether the set holds no instance.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

#[cfg(test)]
mod tests;
