//! One decision: where a request goes now, or whether it waits at the router.
//!
//! Every policy but `least-outstanding` caps the requests in flight per (node, model) at the
//! node's parallel slots, and binds a request to a node only when it gets a slot there. Among
//! the candidates, each is costed by its expected time to first token:
//!
//! ```text
//! expected TTFT = wait for a slot + load (if the model is not resident) + uncached prompt / prefill rate
//! ```
//!
//! * **wait**: 0 with a free slot; else when the running requests are expected to finish
//!   (each holds its slot for the learned service time, less what it has run), behind the
//!   requests already waiting for the model;
//! * **load**: the learned load time of the model there, plus half of it again when the load
//!   would evict an idle model (it may be wanted back), or a whole service time when every
//!   loaded model is busy (Ollama makes the load wait);
//! * **prefill**: the prompt's tokens, or only its newest message's on a node that served the
//!   conversation's prefix and still has the model loaded (the prompt cache lives in the
//!   runner), at the node's learned prefill rate.
//!
//! The cheapest candidate wins, with every candidate within a small tolerance of it counted as
//! equal and the tie broken by weighted least-outstanding power of two choices. If the winner
//! has a free slot the request is dispatched; otherwise it waits at the router, which costs it
//! nothing it would not pay in Ollama's queue, and is decided again when a slot frees. So a
//! model's rare requests stay on its warm node, a busy model scales out to a cold node only
//! when the queue at its warm nodes costs more than a load, and a conversation stays with the
//! node holding its prefix until waiting there costs more than reading the prefix elsewhere.
//!
//! When the request waits, the `preload` policy may also load its model on a cold node ahead
//! of need (see [`super::preload`]).
//!
//! Every policy leaves out the nodes ejected for failing requests (see [`super::outlier`]).
//!
//! The policies switch these parts on one at a time (see [`Policy`]).

use std::sync::Arc;

use tokio::time::Instant;

use super::ask::{Ask, Residency};
use super::candidates::{candidates, ScheduleError};
use super::learned::Costs;
use super::least_outstanding::{self, least_loaded_of_two};
use super::memory::{Memory, ModelMemory};
use super::preload::PRELOAD_SHARE;
use super::Policy;
use crate::backend::Backend;
use crate::backend_set::BackendSet;

/// Candidates whose cost is within this share of the best one's are equal.
const TOLERANCE_SHARE: f64 = 0.1;
/// ... or within this many seconds of it.
const TOLERANCE_SECONDS: f64 = 0.05;
/// A running request is expected to hold its slot at least this share of a service time more.
const MIN_REMAINING_SHARE: f64 = 0.1;

/// What to do with a request now.
#[derive(Debug)]
pub enum Decision {
    /// Send it to this node.
    Dispatch(Arc<Backend>),
    /// Hold it at the router until a slot frees; meanwhile load its model on `preload`, when
    /// set (see [`super::preload`]).
    Wait {
        /// A node to load the model on ahead of need.
        preload: Option<Arc<Backend>>,
    },
}

/// The costed view of one candidate.
#[derive(Debug, Clone, Copy)]
struct Costed {
    index: usize,
    free: bool,
    ttft: f64,
}

/// Decides for `ask`, with `ahead` requests for the same model already waiting before it.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    policy: Policy,
    set: &BackendSet,
    memory: &Memory,
    ask: &Ask,
    exclude: &[Arc<str>],
    ahead: usize,
    now: Instant,
    rng: &mut fastrand::Rng,
) -> Result<Decision, ScheduleError> {
    let model = ask.model.as_deref();
    let ejected = memory.outliers.exclude(set, model, exclude, now);
    let exclude = ejected.as_deref().unwrap_or(exclude);
    if policy == Policy::LeastOutstanding {
        return least_outstanding::choose(set, model, exclude, rng).map(Decision::Dispatch);
    }
    let found = candidates(set, model, exclude)?;
    let Some(residency) = ask.residency.as_ref() else {
        // No model, no slot to wait for: Ollama answers such requests at once.
        return Ok(Decision::Dispatch(least_loaded_of_two(&found, rng).clone()));
    };
    let free = |b: &Backend| running(memory, b, residency) < b.slots();
    if policy == Policy::Queue {
        let warm: Vec<&Arc<Backend>> = found
            .iter()
            .copied()
            .filter(|b| free(b) && b.has_loaded(&residency.model))
            .collect();
        let open: Vec<&Arc<Backend>> = found.iter().copied().filter(|b| free(b)).collect();
        let group = if warm.is_empty() { open } else { warm };
        if group.is_empty() {
            return Ok(Decision::Wait { preload: None });
        }
        return Ok(Decision::Dispatch(least_loaded_of_two(&group, rng).clone()));
    }

    let resident_full = found
        .iter()
        .filter(|b| !free(b) && memory.is_resident(b, residency, now))
        .count();
    let ahead_per_node = ahead / resident_full.max(1);
    let costed: Vec<Costed> = found
        .iter()
        .enumerate()
        .map(|(index, backend)| Costed {
            index,
            free: free(backend),
            ttft: ttft(policy, memory, backend, ask, residency, ahead_per_node, now),
        })
        .collect();
    let best = costed.iter().map(|c| c.ttft).fold(f64::INFINITY, f64::min);
    let tolerance = (best * TOLERANCE_SHARE).max(TOLERANCE_SECONDS);
    let equal: Vec<&Arc<Backend>> = costed
        .iter()
        .filter(|c| c.free && c.ttft <= best + tolerance)
        .map(|c| found[c.index])
        .collect();
    if equal.is_empty() {
        let preload = policy
            .preloads()
            .then(|| preload_target(memory, &found, &costed, residency, best, now))
            .flatten();
        return Ok(Decision::Wait { preload });
    }
    Ok(Decision::Dispatch(least_loaded_of_two(&equal, rng).clone()))
}

/// The node to load the model on ahead of need while the request waits, if any (see
/// [`super::preload`]): the cheapest cold node with a free slot whose load evicts nothing
/// busy and where no such load failed lately, once the wait `best` has reached
/// [`PRELOAD_SHARE`] of its cost; none while another such load of the model runs, or for
/// other than the default runner options.
fn preload_target(
    memory: &Memory,
    found: &[&Arc<Backend>],
    costed: &[Costed],
    residency: &Residency,
    best: f64,
    now: Instant,
) -> Option<Arc<Backend>> {
    if residency.runner != 0 || memory.preloading(&residency.model, now) {
        return None;
    }
    let cold = costed
        .iter()
        .filter(|c| {
            let backend = found[c.index];
            c.free
                && memory.may_preload(backend.id(), &residency.model, now)
                && !memory.is_resident(backend, residency, now)
                && memory.eviction(backend, &residency.model, now) != Some(false)
        })
        .min_by(|a, b| a.ttft.total_cmp(&b.ttft))?;
    (best >= PRELOAD_SHARE * cold.ttft).then(|| found[cold.index].clone())
}

/// Requests this router has running for the model on `backend`.
fn running(memory: &Memory, backend: &Backend, residency: &Residency) -> usize {
    memory
        .model(backend.id(), &residency.model)
        .map_or(0, |m| m.running.len())
}

/// Expected time to first token on `backend`, in seconds.
pub(super) fn ttft(
    policy: Policy,
    memory: &Memory,
    backend: &Backend,
    ask: &Ask,
    residency: &Residency,
    ahead: usize,
    now: Instant,
) -> f64 {
    let model_memory = memory.model(backend.id(), &residency.model);
    let costs = costs(policy, memory, backend, &residency.model);
    let slots = backend.slots();
    let wait = model_memory.map_or(0.0, |m| {
        slot_wait(m, slots, ahead, costs.service_seconds, now)
    });
    let resident = memory.is_resident(backend, residency, now);
    let load = if resident {
        // What is left of a load asked ahead of need.
        model_memory
            .and_then(|m| m.loading_until)
            .map_or(0.0, |until| {
                until.saturating_duration_since(now).as_secs_f64()
            })
    } else {
        let busy_other_runner = model_memory
            .is_some_and(|m| !m.running.is_empty() && m.runner.unwrap_or(0) != residency.runner);
        let displaced = match memory.eviction(backend, &residency.model, now) {
            None => 0.0,
            Some(true) => costs.load_seconds / 2.0,
            Some(false) => costs.service_seconds,
        };
        // Other runner options: Ollama reloads only once the running requests finish.
        let drain = if busy_other_runner {
            costs.service_seconds
        } else {
            0.0
        };
        costs.load_seconds + displaced + drain
    };
    // The prompt cache lives in the loaded runner: a node that must load the model again has
    // lost it, so a conversation's old node is then no better a place for it than any other.
    let cached = policy.uses_affinity()
        && resident
        && ask
            .affinity
            .is_some_and(|prefix| model_memory.is_some_and(|m| m.prefixes.contains(&prefix)));
    let tokens = if cached {
        ask.fresh_tokens
    } else {
        ask.prompt_tokens
    };
    wait + load + f64::from(tokens) / costs.prefill_tps
}

/// The costs of `model` on `backend` under `policy`: as learned ([`Memory::costs`]), or the
/// defaults.
pub(super) fn costs(policy: Policy, memory: &Memory, backend: &Backend, model: &str) -> Costs {
    if policy.learns() {
        memory.costs(backend.id(), model)
    } else {
        Costs::defaults()
    }
}

/// Seconds until a slot of `memory`'s model frees for a request with `ahead` others before
/// it: 0 with a slot free; else the running requests' expected remaining times, in order,
/// then whole service times once every running one has been replaced.
fn slot_wait(memory: &ModelMemory, slots: usize, ahead: usize, service: f64, now: Instant) -> f64 {
    let running = memory.running.len();
    if running < slots && ahead == 0 {
        return 0.0;
    }
    let mut remaining: Vec<f64> = memory
        .running
        .iter()
        .map(|r| {
            let elapsed = now.saturating_duration_since(r.since).as_secs_f64();
            (service - elapsed).max(service * MIN_REMAINING_SHARE)
        })
        .collect();
    remaining.sort_by(f64::total_cmp);
    // Free slots come first, at no wait.
    let mut frees: Vec<f64> = vec![0.0; slots.saturating_sub(running)];
    frees.extend(remaining);
    let slots = slots.max(1);
    let position = ahead % slots;
    let rounds = ahead / slots;
    frees.get(position).copied().unwrap_or(0.0) + rounds as f64 * service
}
