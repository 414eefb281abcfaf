//! Ground-truth counters for tests and benchmarks (`GET /sim/stats`).
//!
//! Counters are atomics updated on the hot path; per-model counters are created on first use
//! and handed out as `Arc`s so a request looks its model up once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use serde::Serialize;

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Counters of one model.
#[derive(Debug, Default)]
pub struct ModelCounters {
    /// Inference requests for the model.
    pub requests: AtomicU64,
    /// Prompt tokens, cached ones included.
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens served from a slot's cache.
    pub cached_prompt_tokens: AtomicU64,
    /// Generated tokens.
    pub generated_tokens: AtomicU64,
    /// Requests that reused part of a slot's cache.
    pub cache_hits: AtomicU64,
    /// Completed loads.
    pub loads: AtomicU64,
    /// Unloads for any reason.
    pub unloads: AtomicU64,
    /// Unloads to make room for another model.
    pub evictions: AtomicU64,
    /// Unloads because a request wanted a different `num_ctx`.
    pub reloads: AtomicU64,
}

/// A copy of [`ModelCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ModelCountersSnapshot {
    /// See [`ModelCounters::requests`].
    pub requests: u64,
    /// See [`ModelCounters::prompt_tokens`].
    pub prompt_tokens: u64,
    /// See [`ModelCounters::cached_prompt_tokens`].
    pub cached_prompt_tokens: u64,
    /// See [`ModelCounters::generated_tokens`].
    pub generated_tokens: u64,
    /// See [`ModelCounters::cache_hits`].
    pub cache_hits: u64,
    /// See [`ModelCounters::loads`].
    pub loads: u64,
    /// See [`ModelCounters::unloads`].
    pub unloads: u64,
    /// See [`ModelCounters::evictions`].
    pub evictions: u64,
    /// See [`ModelCounters::reloads`].
    pub reloads: u64,
}

impl ModelCounters {
    fn snapshot(&self) -> ModelCountersSnapshot {
        ModelCountersSnapshot {
            requests: get(&self.requests),
            prompt_tokens: get(&self.prompt_tokens),
            cached_prompt_tokens: get(&self.cached_prompt_tokens),
            generated_tokens: get(&self.generated_tokens),
            cache_hits: get(&self.cache_hits),
            loads: get(&self.loads),
            unloads: get(&self.unloads),
            evictions: get(&self.evictions),
            reloads: get(&self.reloads),
        }
    }
}

/// All counters of one simulator.
#[derive(Debug, Default)]
pub struct Stats {
    /// Every inference request, counted on arrival before anything can fail.
    pub requests_total: AtomicU64,
    /// Inference requests not yet finished (streams count until their last byte).
    pub in_flight: AtomicU64,
    /// Requests refused with 503 because the pending queue was full.
    pub rejected_total: AtomicU64,
    /// Requests failed by fault injection.
    pub faulted_total: AtomicU64,
    models: RwLock<HashMap<String, Arc<ModelCounters>>>,
}

impl Stats {
    /// The counters of `model` (canonical name), created on first use.
    pub fn model(&self, model: &str) -> Arc<ModelCounters> {
        if let Some(c) = self
            .models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
        {
            return Arc::clone(c);
        }
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(models.entry(model.to_owned()).or_default())
    }

    /// Counts an arriving inference request; the guard keeps it in flight until dropped.
    pub fn arrive(self: &Arc<Self>) -> InFlight {
        add(&self.requests_total, 1);
        add(&self.in_flight, 1);
        InFlight(Arc::clone(self))
    }

    /// Per-model counters, sorted by name.
    pub fn models(&self) -> BTreeMap<String, ModelCountersSnapshot> {
        let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
        models
            .iter()
            .map(|(k, v)| (k.clone(), v.snapshot()))
            .collect()
    }

    /// A copy of the node-wide counters.
    pub fn totals(&self) -> Totals {
        let mut models = ModelCountersSnapshot::default();
        for m in self.models().values() {
            models.requests += m.requests;
            models.prompt_tokens += m.prompt_tokens;
            models.cached_prompt_tokens += m.cached_prompt_tokens;
            models.generated_tokens += m.generated_tokens;
            models.cache_hits += m.cache_hits;
            models.loads += m.loads;
            models.unloads += m.unloads;
            models.evictions += m.evictions;
            models.reloads += m.reloads;
        }
        Totals {
            requests_total: get(&self.requests_total),
            requests_in_flight: get(&self.in_flight),
            rejected_total: get(&self.rejected_total),
            faulted_total: get(&self.faulted_total),
            models,
        }
    }
}

/// Node-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// See [`Stats::requests_total`].
    pub requests_total: u64,
    /// See [`Stats::in_flight`].
    pub requests_in_flight: u64,
    /// See [`Stats::rejected_total`].
    pub rejected_total: u64,
    /// See [`Stats::faulted_total`].
    pub faulted_total: u64,
    /// Sums of the per-model counters.
    pub models: ModelCountersSnapshot,
}

/// Keeps one request counted in [`Stats::in_flight`].
#[derive(Debug)]
pub struct InFlight(Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
