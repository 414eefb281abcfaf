//! The `least-outstanding` policy, and the load balancing every policy ends with.
//!
//! For a request naming model M, among the [candidates](super::candidates):
//!
//! 1. instances with M loaded in memory and below capacity are preferred: sending M elsewhere
//!    costs a model load. When every one of them is at capacity, all candidates compete, since
//!    queueing behind full slots is then slower than loading M on an idle node;
//! 2. among those, weighted least-outstanding-requests with power of two choices: draw two
//!    distinct instances at random in proportion to weight and keep the one with fewer
//!    in-flight requests per unit of weight; on a tie keep the first draw. Equal loads (an idle
//!    fleet) therefore spread exactly by weight, busy instances lose to idle ones, and router
//!    replicas, which do not see each other's counters, do not all herd onto the same "least
//!    loaded" instance.
//!
//! It never holds a request at the router: everything beyond the nodes' slots waits in Ollama's
//! own queue. It is what the router did before it had a scheduler, kept so the benchmark can
//! compare the policies one at a time.
//!
//! pingora-load-balancing is not used: it has no least-connections selection and panics when
//! every weight is 0. Here weight-0 instances are simply not candidates.

use std::sync::Arc;

use super::candidates::{candidates, ScheduleError};
use crate::backend::Backend;
use crate::backend_set::BackendSet;

/// Chooses a backend for a request for `model` (`None`: the request names none), skipping the
/// instances in `exclude`.
pub fn choose(
    set: &BackendSet,
    model: Option<&str>,
    exclude: &[Arc<str>],
    rng: &mut fastrand::Rng,
) -> Result<Arc<Backend>, ScheduleError> {
    let untried = candidates(set, model, exclude)?;
    let warm: Vec<&Arc<Backend>> = match model {
        Some(model) => untried
            .iter()
            .copied()
            .filter(|b| b.has_loaded(model) && !b.is_at_capacity())
            .collect(),
        None => Vec::new(),
    };
    let group = if warm.is_empty() { untried } else { warm };
    Ok(least_loaded_of_two(&group, rng).clone())
}

/// Power of two choices, weighted: two distinct draws in proportion to weight, the one with
/// less load per unit of weight wins, the first draw on a tie. `group` is not empty and every
/// member has a weight above 0.
pub(super) fn least_loaded_of_two<'a>(
    group: &[&'a Arc<Backend>],
    rng: &mut fastrand::Rng,
) -> &'a Arc<Backend> {
    let first = weighted_draw(group, None, rng);
    if group.len() == 1 {
        return group[first];
    }
    let second = weighted_draw(group, Some(first), rng);
    let (a, b) = (group[first], group[second]);
    // a.in_flight / a.weight > b.in_flight / b.weight, without division.
    let load = |x: &Backend| x.in_flight().get() as u128;
    let weight = |x: &Backend| u128::from(x.state().weight());
    if load(a) * weight(b) > load(b) * weight(a) {
        b
    } else {
        a
    }
}

/// An index into `group` drawn in proportion to weight, never `skip`. Some member other than
/// `skip` has a weight above 0: candidates are only instances that accept new work.
fn weighted_draw(group: &[&Arc<Backend>], skip: Option<usize>, rng: &mut fastrand::Rng) -> usize {
    let weight = |i: usize| {
        if Some(i) == skip {
            0
        } else {
            u64::from(group[i].state().weight())
        }
    };
    let total: u64 = (0..group.len()).map(weight).sum();
    let mut ticket = rng.u64(0..total);
    for i in 0..group.len() {
        let w = weight(i);
        if ticket < w {
            return i;
        }
        ticket -= w;
    }
    unreachable!("a ticket below the total weight falls on some member")
}

#[cfg(test)]
mod tests;
