//! The requests the router is handling right now: the proxy counts each one while it lives, and
//! a draining server waits until none is left. Its own module so that neither the proxy nor the
//! server depends on the other for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Requests the router is handling right now.
#[derive(Debug, Clone, Default)]
pub struct ActiveRequests(Arc<AtomicUsize>);

/// Counts one request while it lives.
#[derive(Debug)]
pub struct ActiveRequest(Arc<AtomicUsize>);

impl ActiveRequests {
    /// Starts counting a request.
    pub fn start(&self) -> ActiveRequest {
        self.0.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(self.0.clone())
    }

    /// How many are running.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
