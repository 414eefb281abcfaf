//! The router's Prometheus metrics: requests, latencies, tokens, retries, the backend set and
//! the Consul watches.
//!
//! Every metric lives in the `prometheus` crate's default registry, where Pingora's exporter
//! and [`Metrics::encode`] both see it, and is registered once per process, on first use.
//!
//! # Cardinality
//!
//! Labels are bounded by construction: `route` is one of the router's fixed route names,
//! `model` is a model some backend of the fleet has on disk (callers pass the literal `unknown`
//! for any other name a client sends, and `none` when a request names no model), `node` and
//! `instance` are instances of the fleet, `key` is the name of an API key entry an operator
//! wrote (never the key itself), and `status`, `reason`, `state` and `watch` come from
//! small fixed sets. A client can therefore not grow the metrics by sending made-up model names.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use ollama_mesh_consul::contract::RoutingState;
use ollama_mesh_consul::watch::WatchStatus;
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec, TextEncoder,
};

use crate::schedule::learned::Learned;
use crate::schedule::Priority;
use crate::BackendSet;

/// Request and first-byte latencies: 5 ms (a cached `/api/tags`) to 600 s (a long generation
/// after a cold model load).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Generation speed, from a CPU node's few tokens per second to a small model on a big GPU.
const TOKENS_PER_SECOND_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0,
];

/// The states an instance is counted in by `ollama_mesh_backends`.
const STATES: [&str; 4] = ["active", "degraded", "draining", "out"];

/// The name of an instance's routing state, as metrics and the ops endpoints show it.
pub fn state_name(state: &RoutingState) -> &'static str {
    match state {
        RoutingState::Active {
            degraded: false, ..
        } => "active",
        RoutingState::Active { degraded: true, .. } => "degraded",
        RoutingState::Draining { .. } => "draining",
        RoutingState::Out { .. } => "out",
    }
}

/// The metric families, registered in the default registry when first touched.
struct Families {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    first_byte: HistogramVec,
    tokens: IntCounterVec,
    tokens_per_second: HistogramVec,
    retries: IntCounterVec,
    key_requests: IntCounterVec,
    auth_denied: IntCounterVec,
    backends: IntGaugeVec,
    in_flight: IntGaugeVec,
    watch_errors: IntCounterVec,
    watch_last_index: IntGaugeVec,
    watch_since_contact: prometheus::GaugeVec,
    watch_connected: IntGaugeVec,
    queue_depth: IntGaugeVec,
    queue_wait: HistogramVec,
    queue_shed: IntCounterVec,
    preloads: IntCounterVec,
    learned: prometheus::GaugeVec,
    ejected: IntGaugeVec,
    ejections: IntCounterVec,
    attempts_cut: IntCounterVec,
    /// The `(node, instance)` label sets `in_flight` has, so those of instances that left the
    /// fleet are removed rather than reported forever.
    in_flight_labels: Mutex<HashSet<(String, String)>>,
}

/// Registration fails only on a name clash within this process, which is a programming error.
const REGISTERED: &str = "metric registered once in the default registry";

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    Families {
    requests: register_int_counter_vec!(
        "ollama_mesh_requests_total",
        "Requests answered, by route, model and HTTP status.",
        &["route", "model", "status"]
    )
    .expect(REGISTERED),
    request_duration: register_histogram_vec!(
        "ollama_mesh_request_duration_seconds",
        "Time from receiving a request to sending its last byte.",
        &["route", "model"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect(REGISTERED),
    first_byte: register_histogram_vec!(
        "ollama_mesh_time_to_first_byte_seconds",
        "Time from receiving a request to the backend's first response byte (model loads included).",
        &["route", "model"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect(REGISTERED),
    tokens: register_int_counter_vec!(
        "ollama_mesh_tokens_generated_total",
        "Tokens generated, from the final chunk's eval_count.",
        &["model", "node"]
    )
    .expect(REGISTERED),
    tokens_per_second: register_histogram_vec!(
        "ollama_mesh_tokens_per_second",
        "Generation speed of each finished request (eval_count / eval_duration).",
        &["model", "node"],
        TOKENS_PER_SECOND_BUCKETS.to_vec()
    )
    .expect(REGISTERED),
    retries: register_int_counter_vec!(
        "ollama_mesh_retries_total",
        "Requests sent to another backend after one failed before the first byte, by reason.",
        &["route", "reason"]
    )
    .expect(REGISTERED),
    key_requests: register_int_counter_vec!(
        "ollama_mesh_key_requests_total",
        "Requests answered for each API key (by its name, never the key), by HTTP status.",
        &["key", "status"]
    )
    .expect(REGISTERED),
    auth_denied: register_int_counter_vec!(
        "ollama_mesh_auth_denied_total",
        "Requests refused at the door: missing, invalid or refused (disabled, expired) keys, and forbidden (no admin scope).",
        &["reason"]
    )
    .expect(REGISTERED),
    backends: register_int_gauge_vec!(
        "ollama_mesh_backends",
        "Instances in the backend set, by routing state.",
        &["state"]
    )
    .expect(REGISTERED),
    in_flight: register_int_gauge_vec!(
        "ollama_mesh_backend_in_flight",
        "Requests this router has in flight on each instance.",
        &["node", "instance"]
    )
    .expect(REGISTERED),
    watch_errors: register_int_counter_vec!(
        "ollama_mesh_consul_watch_errors_total",
        "Failed queries of each Consul watch.",
        &["watch"]
    )
    .expect(REGISTERED),
    watch_last_index: register_int_gauge_vec!(
        "ollama_mesh_consul_watch_last_index",
        "The last X-Consul-Index each watch saw.",
        &["watch"]
    )
    .expect(REGISTERED),
    watch_since_contact: prometheus::register_gauge_vec!(
        "ollama_mesh_consul_watch_seconds_since_contact",
        "Seconds since each watch's last successful query. A healthy blocking query answers at \
         least once per wait period; while connected is 0, this is how stale routing may be.",
        &["watch"]
    )
    .expect(REGISTERED),
    watch_connected: register_int_gauge_vec!(
        "ollama_mesh_consul_watch_connected",
        "1 while each watch's last query succeeded, 0 while Consul is unreachable.",
        &["watch"]
    )
    .expect(REGISTERED),
    queue_depth: register_int_gauge_vec!(
        "ollama_mesh_queue_depth",
        "Requests waiting at the router for a slot, by model and priority.",
        &["model", "priority"]
    )
    .expect(REGISTERED),
    queue_wait: register_histogram_vec!(
        "ollama_mesh_queue_wait_seconds",
        "Time requests waited at the router before a node took them.",
        &["model", "priority"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect(REGISTERED),
    queue_shed: register_int_counter_vec!(
        "ollama_mesh_queue_shed_total",
        "Requests refused by the router's queue: full (over --queue-max), timeout (over --queue-timeout) or priority (shed for more important work).",
        &["model", "priority", "reason"]
    )
    .expect(REGISTERED),
    preloads: register_int_counter_vec!(
        "ollama_mesh_preloads_total",
        "Models the scheduler loaded on a node ahead of need, by model and outcome: ordered, loaded or failed.",
        &["model", "outcome"]
    )
    .expect(REGISTERED),
    learned: prometheus::register_gauge_vec!(
        "ollama_mesh_learned",
        "Costs the scheduler learned per instance and model: prefill_tokens_per_second, decode_tokens_per_second, load_seconds, service_seconds.",
        &["instance", "model", "figure"]
    )
    .expect(REGISTERED),
    ejected: register_int_gauge_vec!(
        "ollama_mesh_node_ejected",
        "1 while an instance is ejected for failing requests (or its probe request runs), else 0.",
        &["instance"]
    )
    .expect(REGISTERED),
    ejections: register_int_counter_vec!(
        "ollama_mesh_node_ejections_total",
        "Times each instance was ejected for failing a request.",
        &["instance"]
    )
    .expect(REGISTERED),
    attempts_cut: register_int_counter_vec!(
        "ollama_mesh_attempts_cut_total",
        "Attempts the router ended itself, by reason: first_byte (nothing before the first-byte deadline), stalled (a gap in a stream over --stream-idle-timeout), node_gone (a critical check in Consul), node_draining and node_left (drained or deregistered before its first byte: moved).",
        &["reason"]
    )
    .expect(REGISTERED),
    in_flight_labels: Mutex::new(HashSet::new()),
}
});

/// A handle on the router's metrics; cheap to copy, all handles share the same families.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metrics {
    _private: (),
}

impl Metrics {
    /// A handle; registers the metrics in the default registry on first use.
    pub fn new() -> Self {
        LazyLock::force(&FAMILIES);
        Self { _private: () }
    }

    fn families(&self) -> &'static Families {
        &FAMILIES
    }

    /// Counts one answered request and its duration. `model` must be one of the fleet's models,
    /// `unknown` or `none` (see the module documentation).
    pub fn request_finished(&self, route: &str, model: &str, status: u16, duration: Duration) {
        let families = self.families();
        families
            .requests
            .with_label_values(&[route, model, &status.to_string()])
            .inc();
        families
            .request_duration
            .with_label_values(&[route, model])
            .observe(duration.as_secs_f64());
    }

    /// Records the time to the backend's first response byte.
    pub fn first_byte(&self, route: &str, model: &str, ttfb: Duration) {
        self.families()
            .first_byte
            .with_label_values(&[route, model])
            .observe(ttfb.as_secs_f64());
    }

    /// Records a finished generation from its final chunk: tokens generated, and its speed when
    /// the backend reported a duration (a zero duration says nothing about speed).
    pub fn tokens(&self, model: &str, node: &str, eval_count: u64, eval_duration: Duration) {
        let families = self.families();
        families
            .tokens
            .with_label_values(&[model, node])
            .inc_by(eval_count);
        if eval_count > 0 && !eval_duration.is_zero() {
            families
                .tokens_per_second
                .with_label_values(&[model, node])
                .observe(eval_count as f64 / eval_duration.as_secs_f64());
        }
    }

    /// Counts one retry; `reason` is one of a few fixed words (`connect`, `reset`, `busy`, …).
    pub fn retry(&self, route: &str, reason: &str) {
        self.families()
            .retries
            .with_label_values(&[route, reason])
            .inc();
    }

    /// Records that `instance` was ejected for failing a request, or came back.
    pub fn ejected(&self, instance: &str, ejected: bool) {
        let families = self.families();
        families
            .ejected
            .with_label_values(&[instance])
            .set(i64::from(ejected));
        if ejected {
            families.ejections.with_label_values(&[instance]).inc();
        }
    }

    /// Counts an attempt the router ended itself; `reason` is one of a few fixed words.
    pub fn attempt_cut(&self, reason: &str) {
        self.families()
            .attempts_cut
            .with_label_values(&[reason])
            .inc();
    }

    /// Counts a request answered for the API key called `key`.
    pub fn key_request(&self, key: &str, status: u16) {
        self.families()
            .key_requests
            .with_label_values(&[key, &status.to_string()])
            .inc();
    }

    /// Counts a request refused for `reason` (`missing`, `invalid`, `refused`, `forbidden`).
    pub fn auth_denied(&self, reason: &str) {
        self.families()
            .auth_denied
            .with_label_values(&[reason])
            .inc();
    }

    /// Sets the backend-set gauges from `set`: instances per state, and in-flight requests per
    /// instance (instances no longer in the set lose their series). The gauges describe the
    /// process's one fleet: observing two different fleets makes them flip between the two.
    pub fn observe_fleet(&self, set: &BackendSet) {
        let families = self.families();
        let mut counts = [0_i64; STATES.len()];
        for backend in set.backends() {
            let name = state_name(backend.state());
            if let Some(i) = STATES.iter().position(|s| *s == name) {
                counts[i] += 1;
            }
        }
        for (state, count) in STATES.iter().zip(counts) {
            families.backends.with_label_values(&[state]).set(count);
        }

        let mut known = families
            .in_flight_labels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut current = HashSet::with_capacity(set.len());
        for backend in set.backends() {
            let labels = (backend.node().to_owned(), backend.id().to_string());
            let in_flight = i64::try_from(backend.in_flight().get()).unwrap_or(i64::MAX);
            families
                .in_flight
                .with_label_values(&[&labels.0, &labels.1])
                .set(in_flight);
            current.insert(labels);
        }
        for (node, instance) in known.difference(&current) {
            // Absent only if another path removed it already; nothing to do then.
            let _ = families.in_flight.remove_label_values(&[node, instance]);
        }
        *known = current;
    }

    /// Counts `delta` requests more (or fewer) waiting for `model` at `priority`.
    pub fn queue_changed(&self, model: Option<&str>, priority: Priority, delta: i64) {
        self.families()
            .queue_depth
            .with_label_values(&[model.unwrap_or("none"), priority.name()])
            .add(delta);
    }

    /// Records how long a request for `model` waited at the router before a node took it.
    pub fn queue_wait(&self, model: Option<&str>, priority: Priority, waited: Duration) {
        self.families()
            .queue_wait
            .with_label_values(&[model.unwrap_or("none"), priority.name()])
            .observe(waited.as_secs_f64());
    }

    /// Counts a request the queue refused, for `reason` (`full`, `timeout`, `priority`).
    pub fn queue_shed(&self, model: Option<&str>, priority: Priority, reason: &str) {
        self.families()
            .queue_shed
            .with_label_values(&[model.unwrap_or("none"), priority.name(), reason])
            .inc();
    }

    /// Counts a load ahead of need of `model`: `ordered`, then `loaded` or `failed`.
    pub fn preload(&self, model: &str, outcome: &str) {
        self.families()
            .preloads
            .with_label_values(&[model, outcome])
            .inc();
    }

    /// Publishes what the scheduler learned of `model` on `instance`.
    pub fn learned(&self, instance: &str, model: &str, learned: &Learned) {
        let gauge = &self.families().learned;
        let figures = [
            ("prefill_tokens_per_second", learned.prefill_tps.get()),
            ("decode_tokens_per_second", learned.decode_tps.get()),
            ("load_seconds", learned.load_seconds.get()),
            ("service_seconds", learned.service_seconds.get()),
        ];
        for (figure, value) in figures {
            if let Some(value) = value {
                gauge
                    .with_label_values(&[instance, model, figure])
                    .set(value);
            }
        }
    }

    /// Sets the Consul watch metrics from each named watch's status.
    pub fn observe_watches(&self, watches: &[(&str, Arc<WatchStatus>)]) {
        let families = self.families();
        for (name, status) in watches {
            let labels = [*name];
            // The status counts errors since its watch started; the counter only moves forward
            // by what is new, so a restarted watch does not make it go backwards.
            let errors = families.watch_errors.with_label_values(&labels);
            if let Some(new) = status.errors().checked_sub(errors.get()) {
                errors.inc_by(new);
            }
            families
                .watch_last_index
                .with_label_values(&labels)
                .set(i64::try_from(status.last_index()).unwrap_or(i64::MAX));
            families
                .watch_connected
                .with_label_values(&labels)
                .set(i64::from(status.is_connected()));
            match status.since_last_success() {
                Some(since) => families
                    .watch_since_contact
                    .with_label_values(&labels)
                    .set(since.as_secs_f64()),
                // Never reached Consul: no staleness to report; `connected` says 0.
                None => {
                    let _ = families.watch_since_contact.remove_label_values(&labels);
                }
            }
        }
    }

    /// Every metric of the default registry (the router's and any other library's) in
    /// Prometheus' text format.
    pub fn encode(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&prometheus::gather())
            .unwrap_or_else(|error| format!("# encoding metrics failed: {error}\n"))
    }
}

#[cfg(test)]
mod tests;
