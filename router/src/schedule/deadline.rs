//! How long a node has to send the first byte of an answer: `--first-byte-timeout` plus twice
//! what the scheduler expects the request to take there, so a node that must load the model,
//! or that queues the request behind others, gets longer, and one that has the model warm
//! and a slot free is given up on soonest.
//!
//! What it expects is the request's expected time to first token on that node (slot wait,
//! load, prompt; see [`super::decide`]) plus the time its answer takes (the learned time a
//! request holds a slot there): a non-streamed answer's first byte comes only once the whole
//! answer is generated.

use std::time::Duration;

use tokio::time::Instant;

use super::ask::Ask;
use super::decide::{costs, ttft};
use super::Scheduler;
use crate::backend::Backend;

impl Scheduler {
    /// The first-byte deadline of `ask` on `backend`: `base` plus twice the expected time
    /// there, at most `cap`.
    pub fn first_byte_deadline(
        &self,
        backend: &Backend,
        ask: &Ask,
        base: Duration,
        cap: Duration,
    ) -> Duration {
        let Some(residency) = ask.residency.as_ref() else {
            return base.min(cap);
        };
        let state = self.lock();
        let memory = &state.memory;
        let policy = self.settings.policy;
        let first_token = ttft(policy, memory, backend, ask, residency, 0, Instant::now());
        let service = costs(policy, memory, backend, &residency.model).service_seconds;
        let expected = (first_token + service).max(0.0);
        base.saturating_add(Duration::try_from_secs_f64(2.0 * expected).unwrap_or(cap))
            .min(cap)
    }
}
