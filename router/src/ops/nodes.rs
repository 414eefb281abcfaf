//! `/v1/mesh/nodes`: every instance as this router sees it, and when it last changed.
//!
//! Consul does not say when an instance's state or Meta last changed, and an operator chasing a
//! flapping node wants exactly that; so the router remembers, per instance, what it last saw and
//! since when.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ollama_mesh_consul::contract::{MetaError, ModelList, NodeMeta, RoutingState};
use serde::Serialize;

use crate::backend::Reach;
use crate::metrics::state_name;
use crate::schedule::outlier::EjectionReport;
use crate::schedule::{ModelReport, Scheduler};
use crate::{Backend, BackendSet};

/// What a change is judged on: where the instance is, its routing state and its Meta. The
/// in-flight count moves all the time and is not a change of the instance.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    address: String,
    state: RoutingState,
    meta: Result<NodeMeta, MetaError>,
}

impl Seen {
    fn of(backend: &Backend) -> Self {
        Self {
            address: backend.address().to_owned(),
            state: backend.state().clone(),
            meta: backend.meta().cloned().map_err(Clone::clone),
        }
    }
}

/// Per instance (node, ID): what was last seen and when it became so.
#[derive(Debug, Default)]
pub(super) struct ChangeLog {
    inner: Mutex<ChangeLogInner>,
}

#[derive(Debug, Default)]
struct ChangeLogInner {
    /// The set last compared, so an unchanged set costs one pointer comparison.
    last_set: Option<Arc<BackendSet>>,
    seen: HashMap<(String, String), (Seen, SystemTime)>,
}

impl ChangeLog {
    /// Compares `set` with what was seen before and stamps every instance that appeared or
    /// changed with the current time. Instances that left are forgotten.
    pub(super) fn update(&self, set: &Arc<BackendSet>) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if inner
            .last_set
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, set))
        {
            return;
        }
        let now = SystemTime::now();
        let mut seen = HashMap::with_capacity(set.len());
        for backend in set.backends() {
            let key = (backend.node().to_owned(), backend.id().to_string());
            let current = Seen::of(backend);
            let since = match inner.seen.remove(&key) {
                Some((previous, since)) if previous == current => since,
                _ => now,
            };
            seen.insert(key, (current, since));
        }
        inner.seen = seen;
        inner.last_set = Some(set.clone());
    }

    /// The `/v1/mesh/nodes` answer for `set` (which [`ChangeLog::update`] has seen).
    pub(super) fn describe(&self, set: &BackendSet, scheduler: &Scheduler) -> Vec<NodeReport> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        set.backends()
            .iter()
            .map(|backend| {
                let key = (backend.node().to_owned(), backend.id().to_string());
                let since = inner
                    .seen
                    .get(&key)
                    .map_or_else(SystemTime::now, |(_, since)| *since);
                NodeReport::new(
                    backend,
                    since,
                    scheduler.report(backend),
                    scheduler.ejection(backend),
                )
            })
            .collect()
    }
}

/// One instance in `/v1/mesh/nodes`.
#[derive(Debug, Serialize)]
pub(super) struct NodeReport {
    id: String,
    node: String,
    address: String,
    /// `active`, `degraded`, `draining` or `out`.
    state: &'static str,
    /// Why it is draining or out (the maintenance note, drain key value or failing check).
    reason: Option<String>,
    weight: u32,
    /// `mesh` (Consul Connect mTLS), `direct` (HTTP, or HTTPS with --backend-tls) or `skipped`.
    reached: &'static str,
    /// Why a skipped instance cannot be reached by this router.
    skipped_because: Option<&'static str>,
    in_flight: usize,
    capacity: usize,
    /// Per model: this router's requests in flight and the slots, residency, requests waiting,
    /// and what the scheduler learned.
    scheduling: Vec<ModelReport>,
    /// Whether this router has ejected it for failing requests, and its record.
    ejection: EjectionReport,
    models: Option<Models>,
    gpu: Option<Gpu>,
    parallel_slots: Option<u32>,
    versions: Option<Versions>,
    preemptible: Option<bool>,
    /// Why Meta could not be read: such an instance gets only requests that name no model.
    meta_error: Option<String>,
    /// RFC 3339 time this router last saw the instance's address, state or Meta change (or
    /// first saw it).
    last_change: String,
}

#[derive(Debug, Serialize)]
struct Models {
    on_disk: ModelListReport,
    loaded: ModelListReport,
}

/// A model list and whether Meta had room for all of it.
#[derive(Debug, Serialize)]
struct ModelListReport {
    names: Vec<String>,
    total: usize,
    truncated: bool,
}

impl From<&ModelList> for ModelListReport {
    fn from(list: &ModelList) -> Self {
        Self {
            names: list.names().to_vec(),
            total: list.total(),
            truncated: list.is_truncated(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Gpu {
    name: Option<String>,
    count: u32,
    vram_mib: u64,
}

#[derive(Debug, Serialize)]
struct Versions {
    ollama: Option<String>,
    sidecar: String,
}

impl NodeReport {
    fn new(
        backend: &Backend,
        since: SystemTime,
        scheduling: Vec<ModelReport>,
        ejection: EjectionReport,
    ) -> Self {
        let state = backend.state();
        let reason = match state {
            RoutingState::Active { .. } => None,
            RoutingState::Draining { reason } | RoutingState::Out { reason } => {
                Some(reason.clone())
            }
        };
        let meta = backend.meta().ok();
        Self {
            id: backend.id().to_string(),
            node: backend.node().to_owned(),
            address: backend.address().to_owned(),
            state: state_name(state),
            reason,
            weight: state.weight(),
            reached: match backend.reach() {
                Reach::Direct => "direct",
                Reach::Mesh => "mesh",
                Reach::Skipped(_) => "skipped",
            },
            skipped_because: match backend.reach() {
                Reach::Skipped(reason) => Some(reason),
                Reach::Direct | Reach::Mesh => None,
            },
            in_flight: backend.in_flight().get(),
            capacity: backend.capacity(),
            scheduling,
            ejection,
            models: meta.map(|m| Models {
                on_disk: (&m.models_on_disk).into(),
                loaded: (&m.models_loaded).into(),
            }),
            gpu: meta.map(|m| Gpu {
                name: m.gpu_name.clone(),
                count: m.gpu_count,
                vram_mib: m.gpu_vram_mib,
            }),
            parallel_slots: meta.map(|m| m.parallel_slots),
            versions: meta.map(|m| Versions {
                ollama: m.ollama_version.clone(),
                sidecar: m.sidecar_version.clone(),
            }),
            preemptible: meta.map(|m| m.preemptible),
            meta_error: backend.meta().err().map(ToString::to_string),
            last_change: humantime::format_rfc3339_millis(since).to_string(),
        }
    }
}

#[cfg(test)]
mod tests;
