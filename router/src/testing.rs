//! Health entries as a sidecar would register them, and API keys, for the unit tests of every
//! module.

use std::collections::BTreeMap;

use ollama_mesh_consul::agent::Weights;
use ollama_mesh_consul::contract::meta::keys;
use ollama_mesh_consul::contract::{ModelList, NodeMeta};
use ollama_mesh_consul::health::{CatalogService, CheckStatus, HealthCheck, Node, ServiceEntry};

use crate::backend::MeshPolicy;
use crate::backend_set::BackendSet;
use crate::keys::{hex, sha256, ApiKey, KeyEntry};

/// The key `secret` as the entry called `name` with `extra` JSON fields (`, "rpm": 2`) makes it.
pub(crate) fn api_key(name: &str, secret: &str, extra: &str) -> ApiKey {
    let json = format!(
        r#"{{"sha256": "{}"{extra}}}"#,
        hex(&sha256(secret.as_bytes()))
    );
    KeyEntry::parse(&json).unwrap().check(name).unwrap()
}

/// An instance on its own node, passing, weight 1, one GPU with one slot, no models.
pub(crate) fn instance(id: &str) -> Instance {
    Instance {
        id: id.to_owned(),
        meta: NodeMeta {
            gpu_count: 1,
            parallel_slots: 1,
            sidecar_version: "test".into(),
            ..NodeMeta::default()
        },
        weights: Weights::default(),
        checks: vec![check("serfHealth", CheckStatus::Passing)],
        raw_meta: false,
        disk_total: None,
    }
}

/// Builder for one instance's health entry.
pub(crate) struct Instance {
    id: String,
    meta: NodeMeta,
    weights: Weights,
    checks: Vec<HealthCheck>,
    raw_meta: bool,
    disk_total: Option<usize>,
}

impl Instance {
    pub(crate) fn on_disk(mut self, models: &[&str]) -> Self {
        self.meta.models_on_disk = ModelList::new(models.iter().copied());
        self
    }

    pub(crate) fn loaded(mut self, models: &[&str]) -> Self {
        self.meta.models_loaded = ModelList::new(models.iter().copied());
        self
    }

    pub(crate) fn weight(mut self, passing: u32) -> Self {
        self.weights.passing = passing;
        self
    }

    pub(crate) fn warning_weight(mut self, warning: u32) -> Self {
        self.weights.warning = warning;
        self
    }

    pub(crate) fn capacity(mut self, gpus: u32, slots: u32) -> Self {
        self.meta.gpu_count = gpus;
        self.meta.parallel_slots = slots;
        self
    }

    pub(crate) fn with_check(mut self, id: &str, status: CheckStatus) -> Self {
        self.checks.push(check(id, status));
        self
    }

    /// Says it has `total` models on disk, more than it lists (as when they do not fit in Meta).
    pub(crate) fn truncated_to(mut self, total: usize) -> Self {
        self.disk_total = Some(total);
        self
    }

    /// Registered by something other than a sidecar: no ollama-mesh Meta at all.
    pub(crate) fn foreign(mut self) -> Self {
        self.raw_meta = true;
        self
    }

    pub(crate) fn entry(&self) -> ServiceEntry {
        ServiceEntry {
            node: Node {
                node: format!("node-{}", self.id),
                address: "10.0.0.1".into(),
                ..Node::default()
            },
            service: CatalogService {
                id: self.id.clone(),
                service: "ollama".into(),
                port: 11434,
                meta: self.meta(),
                weights: self.weights,
                ..CatalogService::default()
            },
            checks: self.checks.clone(),
        }
    }
}

impl Instance {
    fn meta(&self) -> BTreeMap<String, String> {
        if self.raw_meta {
            return [("owner".to_owned(), "someone".to_owned())].into();
        }
        let mut meta = self.meta.to_consul_meta();
        if let Some(total) = self.disk_total {
            meta.insert(
                format!("{}{}", keys::MODELS_ON_DISK, keys::COUNT_SUFFIX),
                total.to_string(),
            );
        }
        meta
    }
}

fn check(id: &str, status: CheckStatus) -> HealthCheck {
    HealthCheck {
        check_id: id.to_owned(),
        name: id.to_owned(),
        status,
        ..HealthCheck::default()
    }
}

/// A fresh set of these instances, without drain keys.
pub(crate) fn set(instances: &[Instance]) -> BackendSet {
    let entries: Vec<ServiceEntry> = instances.iter().map(Instance::entry).collect();
    BackendSet::build(&entries, &[], &BackendSet::default(), MeshPolicy::default())
}

/// A fleet whose set can be swapped, for tests of what follows the fleet.
#[derive(Default)]
pub(crate) struct TestFleet(std::sync::Mutex<std::sync::Arc<BackendSet>>);

impl TestFleet {
    /// A fleet holding `set`.
    pub(crate) fn new(set: BackendSet) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self(std::sync::Mutex::new(std::sync::Arc::new(set))))
    }

    /// Replaces the set with one built from `instances`, carrying in-flight counters over.
    pub(crate) fn rebuild(&self, instances: &[Instance]) {
        let mut current = self.0.lock().unwrap();
        let entries: Vec<ServiceEntry> = instances.iter().map(Instance::entry).collect();
        let next = BackendSet::build(&entries, &[], &current, MeshPolicy::default());
        *current = std::sync::Arc::new(next);
    }
}

impl crate::Fleet for TestFleet {
    fn backends(&self) -> std::sync::Arc<BackendSet> {
        self.0.lock().unwrap().clone()
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn watches(
        &self,
    ) -> Vec<(
        &'static str,
        std::sync::Arc<ollama_mesh_consul::watch::WatchStatus>,
    )> {
        Vec::new()
    }
}
