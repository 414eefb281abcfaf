//! The permit a scheduled request holds while it runs.

use std::fmt;
use std::sync::Arc;

use super::learned::Outcome;
use super::{Grant, Scheduler};
use crate::backend::{Backend, InFlightGuard};

/// A request's place on a node: its slot for the model, and its count on the node. Dropping it
/// (however the request ended: answered, failed, client gone, panic) frees the slot, teaches the
/// scheduler what [`Permit::record`] said, and hands the slot to a waiting request.
pub struct Permit {
    scheduler: Arc<Scheduler>,
    grant: Grant,
    outcome: Outcome,
    _in_flight: InFlightGuard,
}

impl Permit {
    /// The node the request goes to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.grant.backend
    }

    /// How the request went, learned from when the permit is dropped. A failure of the node
    /// recorded before ([`Permit::node_failed`]) stays recorded.
    pub fn record(&mut self, outcome: Outcome) {
        let node_failed = self.outcome.node_failed || outcome.node_failed;
        self.outcome = Outcome {
            node_failed,
            ..outcome
        };
    }

    /// Records that the node failed this attempt (refused, reset, busy, broke off).
    pub fn node_failed(&mut self) {
        self.outcome.node_failed = true;
        self.outcome.answered = false;
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("backend", self.grant.backend.id())
            .field("model", &self.grant.model)
            .finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.scheduler.release(&self.grant, &self.outcome);
    }
}

impl Scheduler {
    /// Makes a decided grant a permit (outside the scheduler's lock).
    pub(super) fn permit(self: &Arc<Self>, grant: Grant) -> Permit {
        self.lock()
            .memory
            .outliers
            .dispatched(grant.backend.id(), tokio::time::Instant::now());
        Permit {
            _in_flight: InFlightGuard::new(grant.backend.clone()),
            scheduler: self.clone(),
            grant,
            outcome: Outcome::default(),
        }
    }
}
