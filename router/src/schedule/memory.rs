//! What the scheduler remembers about each node between requests: requests running per model,
//! which runner it last sent each model to (so it knows a model is resident before Meta says
//! so), the conversation prefixes each node has seen, and learned costs.
//!
//! Kept per instance ID across backend-set rebuilds, so a change in Consul never loses a count;
//! an instance that left the fleet is forgotten once nothing runs on it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ollama_mesh_consul::contract::meta::canonical_model_name;
use tokio::time::Instant;

use super::ask::Residency;
use super::learned::{Costs, Learned, Outcome};
use super::outlier::{Change, Outliers};
use crate::backend::Backend;
use crate::backend_set::BackendSet;

/// How long the router trusts its own record of a model being loaded over Meta that says
/// otherwise: the sidecar's poll plus its Meta write interval, with room to spare.
pub const META_LAG: Duration = Duration::from_secs(30);
/// Models Ollama keeps loaded per GPU (`OLLAMA_MAX_LOADED_MODELS`' default).
const MAX_LOADED_PER_GPU: usize = 3;

/// One request holding a slot.
#[derive(Debug, Clone, Copy)]
pub struct Running {
    /// The permit's ID.
    pub id: u64,
    /// When it was dispatched.
    pub since: Instant,
}

/// One model on one node.
#[derive(Debug, Default)]
pub struct ModelMemory {
    /// Requests this router has running for the model there.
    pub running: Vec<Running>,
    /// Fingerprint of the runner options last sent there.
    pub runner: Option<u64>,
    /// When a request for the model was last sent there.
    pub last_sent: Option<Instant>,
    /// When the router last judged the model evicted there by a load of another.
    pub evicted_at: Option<Instant>,
    /// Until when a load the router asked for ahead of need is expected to run.
    pub loading_until: Option<Instant>,
    /// Until when no load ahead of need is asked of this node again, after one failed.
    pub no_preload_until: Option<Instant>,
    /// Conversation prefixes recently served there, most recent first.
    pub prefixes: VecDeque<u64>,
    /// Learned costs.
    pub learned: Learned,
}

/// One node.
#[derive(Debug, Default)]
pub struct NodeMemory {
    /// By canonical model name.
    pub models: HashMap<String, ModelMemory>,
}

impl NodeMemory {
    /// Requests running on the node, all models.
    pub fn running(&self) -> usize {
        self.models.values().map(|m| m.running.len()).sum()
    }
}

/// Everything remembered.
#[derive(Debug, Default)]
pub struct Memory {
    /// By instance ID.
    pub nodes: HashMap<Arc<str>, NodeMemory>,
    /// Learned costs per model across the fleet, for nodes that have none yet.
    pub fleet: HashMap<String, Learned>,
    /// Learned costs of every model across the fleet, for a model nothing is known of yet: a
    /// load of one model says more about the next one's than a fixed default does.
    pub any_model: Learned,
    /// Which nodes are ejected for failing requests.
    pub outliers: Outliers,
    /// The set last pruned against.
    last_set: Option<Arc<BackendSet>>,
}

impl Memory {
    /// The model's memory on `node`, if any.
    pub fn model(&self, node: &str, model: &str) -> Option<&ModelMemory> {
        self.nodes.get(node)?.models.get(model)
    }

    fn model_mut(&mut self, node: &Arc<str>, model: &str) -> &mut ModelMemory {
        self.nodes
            .entry(node.clone())
            .or_default()
            .models
            .entry(model.to_owned())
            .or_default()
    }

    /// Forgets instances that left the fleet and have nothing running.
    pub fn prune(&mut self, set: &Arc<BackendSet>) {
        if self
            .last_set
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, set))
        {
            return;
        }
        self.nodes
            .retain(|id, node| set.get(id).is_some() || node.running() > 0);
        self.outliers.retain(set);
        self.last_set = Some(set.clone());
    }

    /// Whether `residency` is loaded on `backend`, as far as the router can tell: Meta says the
    /// model is loaded, or the router sent it there within [`META_LAG`] (Meta has not caught
    /// up yet) or has requests running there; and with the same runner options as last sent.
    /// A model the router judged evicted since is not.
    pub fn is_resident(&self, backend: &Backend, residency: &Residency, now: Instant) -> bool {
        let meta_loaded = backend.has_loaded(&residency.model);
        let Some(memory) = self.model(backend.id(), &residency.model) else {
            return meta_loaded && residency.runner == 0;
        };
        if memory.runner.unwrap_or(0) != residency.runner {
            return false;
        }
        let recent =
            |at: Option<Instant>| at.is_some_and(|at| now.saturating_duration_since(at) < META_LAG);
        if recent(memory.evicted_at)
            && memory
                .last_sent
                .zip(memory.evicted_at)
                .is_none_or(|(sent, evicted)| sent < evicted)
        {
            return false;
        }
        meta_loaded || !memory.running.is_empty() || recent(memory.last_sent)
    }

    /// Every model `backend` has or had loaded as far as the router knows: Meta's list and the
    /// models the router has sent there, by canonical name, sorted, once each.
    pub fn models_on(&self, backend: &Backend) -> Vec<String> {
        let mut names: Vec<String> = backend
            .meta()
            .map(|meta| {
                meta.models_loaded
                    .names()
                    .iter()
                    .map(|name| canonical_model_name(name))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(node) = self.nodes.get(backend.id()) {
            names.extend(node.models.keys().cloned());
        }
        names.sort();
        names.dedup();
        names
    }

    /// Models resident on `backend` other than `except`, with whether each is idle (nothing of
    /// this router's running) and when it was last sent work.
    fn resident_others(
        &self,
        backend: &Backend,
        except: &str,
        now: Instant,
    ) -> Vec<(String, bool, Option<Instant>)> {
        self.models_on(backend)
            .into_iter()
            .filter(|name| name != except)
            .filter_map(|name| {
                let memory = self.model(backend.id(), &name);
                let residency = Residency {
                    runner: memory.and_then(|m| m.runner).unwrap_or(0),
                    model: name,
                };
                self.is_resident(backend, &residency, now).then(|| {
                    let idle = memory.is_none_or(|m| m.running.is_empty());
                    (residency.model, idle, memory.and_then(|m| m.last_sent))
                })
            })
            .collect()
    }

    /// What loading a model on `backend` would displace: `None` when it fits beside what is
    /// loaded; `Some(true)` when it would evict an idle model; `Some(false)` when every loaded
    /// model is busy, so Ollama would make the load wait for one of them to finish.
    pub fn eviction(&self, backend: &Backend, model: &str, now: Instant) -> Option<bool> {
        let others = self.resident_others(backend, model, now);
        if others.len() < max_loaded(backend) {
            return None;
        }
        Some(others.iter().any(|(_, idle, _)| *idle))
    }

    /// Records a request for `residency` (or for no model) dispatched to `backend` as permit
    /// `id`: it holds a slot, the model is now (being) loaded there with these runner options,
    /// and the node will hold the conversation's prefix in one of its `slots` caches.
    pub fn dispatch(
        &mut self,
        backend: &Backend,
        residency: &Residency,
        affinity: Option<u64>,
        id: u64,
        now: Instant,
    ) {
        let slots = backend.slots();
        let memory = self.send(backend, residency, now);
        memory.running.push(Running { id, since: now });
        if let Some(prefix) = affinity {
            memory.prefixes.retain(|p| *p != prefix);
            memory.prefixes.push_front(prefix);
            memory.prefixes.truncate(slots);
        }
    }

    /// Records a load of `residency` asked of `backend` ahead of need, expected to run until
    /// `until`.
    pub fn preload(
        &mut self,
        backend: &Backend,
        residency: &Residency,
        until: Instant,
        now: Instant,
    ) {
        self.send(backend, residency, now).loading_until = Some(until);
    }

    /// Records how a load asked ahead of need ended: with Ollama's `load_duration` (learned as
    /// the node's load time), or failed (the model may not be there: trust Meta again, and ask
    /// that node for no other load ahead of need for a while).
    pub fn preloaded(
        &mut self,
        node: &Arc<str>,
        model: &str,
        load: Option<Duration>,
        now: Instant,
    ) {
        let Some(memory) = self
            .nodes
            .get_mut(node)
            .and_then(|n| n.models.get_mut(model))
        else {
            return;
        };
        memory.loading_until = None;
        match load {
            Some(load) => {
                let seconds = load.as_secs_f64();
                memory.learned.load_seconds.observe(seconds, now);
                let fleet = self.fleet.entry(model.to_owned()).or_default();
                fleet.load_seconds.observe(seconds, now);
                self.any_model.load_seconds.observe(seconds, now);
            }
            None => {
                memory.no_preload_until = Some(now + META_LAG);
                if memory.running.is_empty() {
                    memory.last_sent = None;
                }
            }
        }
    }

    /// Whether a load ahead of need may be asked of `node` for `model`: none failed there
    /// lately.
    pub fn may_preload(&self, node: &str, model: &str, now: Instant) -> bool {
        self.model(node, model)
            .and_then(|m| m.no_preload_until)
            .is_none_or(|until| now >= until)
    }

    /// Whether a load of `model` asked ahead of need is under way on any node.
    pub fn preloading(&self, model: &str, now: Instant) -> bool {
        self.nodes.values().any(|node| {
            node.models
                .get(model)
                .and_then(|m| m.loading_until)
                .is_some_and(|until| now < until)
        })
    }

    /// Notes that `residency` goes to `backend` now (a request or a load): Ollama makes room
    /// for it by evicting the least recently used idle model, and loads it with these runner
    /// options. Returns the model's memory there.
    fn send(&mut self, backend: &Backend, residency: &Residency, now: Instant) -> &mut ModelMemory {
        if !self.is_resident(backend, residency, now)
            && self.eviction(backend, &residency.model, now) == Some(true)
        {
            let victim = self
                .resident_others(backend, &residency.model, now)
                .into_iter()
                .filter(|(_, idle, _)| *idle)
                .min_by_key(|(_, _, last)| *last)
                .map(|(name, _, _)| name);
            if let Some(victim) = victim {
                let memory = self.model_mut(backend.id(), &victim);
                memory.evicted_at = Some(now);
                memory.prefixes.clear();
            }
        }
        let memory = self.model_mut(backend.id(), &residency.model);
        if memory.runner.unwrap_or(0) != residency.runner {
            memory.prefixes.clear();
        }
        memory.runner = Some(residency.runner);
        memory.last_sent = Some(now);
        memory
    }

    /// Records the end of permit `id` for `model` (if it was for one) on `node`, held since
    /// `since`; says whether that ejected the node or brought it back.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &mut self,
        node: &Arc<str>,
        model: Option<&str>,
        id: u64,
        since: Instant,
        outcome: &Outcome,
        now: Instant,
    ) -> Option<Change> {
        let held = now.saturating_duration_since(since);
        let change = self.outliers.observe(node, outcome, now);
        let node_memory = self.nodes.entry(node.clone()).or_default();
        let Some(model) = model else { return change };
        if let Some(memory) = node_memory.models.get_mut(model) {
            memory.running.retain(|r| r.id != id);
            memory.learned.observe(outcome, held, now);
            if outcome.node_failed && memory.running.is_empty() {
                // The node may never have loaded it: trust Meta again.
                memory.last_sent = None;
            }
        }
        self.fleet
            .entry(model.to_owned())
            .or_default()
            .observe(outcome, held, now);
        self.any_model.observe(outcome, held, now);
        change
    }

    /// The costs to expect of `model` on `node`: what was learned there, else across the fleet
    /// for the model, else for any model, else the defaults.
    pub fn costs(&self, node: &str, model: &str) -> Costs {
        Costs::learned(&[
            self.model(node, model).map(|m| &m.learned),
            self.fleet.get(model),
            Some(&self.any_model),
        ])
    }
}

/// Models `backend` keeps loaded at once.
fn max_loaded(backend: &Backend) -> usize {
    let gpus = backend.meta().map_or(1, |meta| meta.gpu_count.max(1));
    MAX_LOADED_PER_GPU * usize::try_from(gpus).unwrap_or(1)
}
