use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a watch has been doing, for metrics and readiness: shared with the watch task and
/// updated without blocking it.
#[derive(Debug, Default)]
pub struct WatchStatus {
    requests: AtomicU64,
    errors: AtomicU64,
    updates: AtomicU64,
    last_index: AtomicU64,
    connected: AtomicBool,
    last_success: Mutex<Option<Instant>>,
}

impl WatchStatus {
    /// Queries sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Queries that failed so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Snapshots published so far (changes only).
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// The last `X-Consul-Index` seen.
    pub fn last_index(&self) -> u64 {
        self.last_index.load(Ordering::Relaxed)
    }

    /// Whether the last query succeeded.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Time since the last successful query; `None` before the first one.
    pub fn since_last_success(&self) -> Option<Duration> {
        self.last_success
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .map(|at| at.elapsed())
    }

    pub(crate) fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_success(&self, index: u64) {
        self.last_index.store(index, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
        *self
            .last_success
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
    }

    pub(crate) fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.connected.store(false, Ordering::Relaxed);
    }

    pub(crate) fn record_update(&self) {
        self.updates.fetch_add(1, Ordering::Relaxed);
    }
}
