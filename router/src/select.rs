//! Choosing the backend for one request. Pure: the set, the request and a random source in, a
//! counted choice out, so every rule is tested without a network.
//!
//! For a request naming model M:
//!
//! 1. candidates are the instances that accept new work (up, not draining, weight > 0) and
//!    have M on disk, with `x` ≡ `x:latest`. When none lists M, the instances whose list of
//!    models was too long for Meta are candidates (M may be among the names that did not fit;
//!    Ollama answers for itself); none of those either → [`SelectError::ModelNotFound`] with the
//!    models the fleet does have;
//! 2. instances that already tried this request (retries before the first byte) are left out;
//! 3. instances with M loaded in memory and below capacity are preferred: sending M elsewhere
//!    costs a model load. When every one of them is at capacity, all candidates compete, since
//!    queueing behind full slots is then slower than loading M on an idle node;
//! 4. among those, weighted least-outstanding-requests with power of two choices: draw two
//!    distinct instances at random in proportion to weight and keep the one with fewer
//!    in-flight requests per unit of weight; on a tie keep the first draw. Equal loads (an idle
//!    fleet) therefore spread exactly by weight, busy instances lose to idle ones, and router
//!    replicas, which do not see each other's counters, do not all herd onto the same "least
//!    loaded" instance.
//!
//! A request naming no model goes to any instance accepting new work by steps 2 and 4.
//!
//! pingora-load-balancing is not used: it has no least-connections selection and panics when
//! every weight is 0. Here weight-0 instances are simply not candidates.

use std::sync::Arc;

use ollama_mesh_consul::contract::meta::canonical_model_name;

use crate::backend::Backend;
use crate::backend_set::BackendSet;

/// Why no backend was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// No instance accepts new work at all (every one is down, draining or weighted 0).
    #[error("no Ollama instance is accepting requests")]
    NoneAvailable,
    /// Instances accept new work, but none has the model. Answered like Ollama's 404.
    #[error("model {model:?} not found on any available Ollama instance")]
    ModelNotFound {
        /// The model asked for, as the client wrote it.
        model: String,
        /// Every model the available instances have on disk: canonical names, sorted, unique.
        available: Vec<String>,
    },
    /// Every candidate was already tried for this request.
    #[error("all {tried} candidate Ollama instances were tried")]
    AllTried {
        /// How many candidates there were.
        tried: usize,
    },
}

/// Chooses a backend for a request for `model` (`None`: the request names none), skipping the
/// instances in `exclude`, and counts the request on it until the returned guard is dropped.
pub fn choose(
    set: &BackendSet,
    model: Option<&str>,
    exclude: &[Arc<str>],
    rng: &mut fastrand::Rng,
) -> Result<InFlightGuard, SelectError> {
    let accepting: Vec<&Arc<Backend>> = set.accepting().collect();
    if accepting.is_empty() {
        return Err(SelectError::NoneAvailable);
    }
    let candidates = match model {
        None => accepting,
        Some(model) => {
            let mut with_model: Vec<&Arc<Backend>> = accepting
                .iter()
                .copied()
                .filter(|b| b.has_model(model))
                .collect();
            if with_model.is_empty() {
                with_model = accepting
                    .iter()
                    .copied()
                    .filter(|b| b.is_model_list_truncated())
                    .collect();
            }
            if with_model.is_empty() {
                return Err(SelectError::ModelNotFound {
                    model: model.to_owned(),
                    available: fleet_models(&accepting),
                });
            }
            with_model
        }
    };
    let tried = candidates.len();
    let untried: Vec<&Arc<Backend>> = candidates
        .into_iter()
        .filter(|b| !exclude.contains(b.id()))
        .collect();
    if untried.is_empty() {
        return Err(SelectError::AllTried { tried });
    }
    let warm: Vec<&Arc<Backend>> = match model {
        Some(model) => untried
            .iter()
            .copied()
            .filter(|b| b.has_loaded(model) && !b.is_at_capacity())
            .collect(),
        None => Vec::new(),
    };
    let group = if warm.is_empty() { untried } else { warm };
    Ok(InFlightGuard::new(least_loaded_of_two(&group, rng).clone()))
}

/// Every model on disk across `backends`, by canonical name, sorted and unique.
fn fleet_models(backends: &[&Arc<Backend>]) -> Vec<String> {
    let mut models: Vec<String> = backends
        .iter()
        .filter_map(|b| b.meta().ok())
        .flat_map(|meta| meta.models_on_disk.names())
        .map(|name| canonical_model_name(name))
        .collect();
    models.sort();
    models.dedup();
    models
}

/// Power of two choices, weighted: two distinct draws in proportion to weight, the one with
/// less load per unit of weight wins, the first draw on a tie. `group` is not empty and every
/// member has a weight above 0.
fn least_loaded_of_two<'a>(
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
/// `skip` has a weight above 0: [`choose`] keeps only instances that accept new work.
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

/// Counts one request on the chosen backend for as long as it lives, so every way a request
/// ends (success, error, client gone, panic) releases the count.
#[derive(Debug)]
pub struct InFlightGuard {
    backend: Arc<Backend>,
}

impl InFlightGuard {
    /// Counts a request on `backend`, chosen by other means than [`choose`] (model management
    /// aimed at one named instance).
    pub fn new(backend: Arc<Backend>) -> Self {
        backend.in_flight().acquire();
        Self { backend }
    }

    /// The chosen backend.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.backend.in_flight().release();
    }
}

#[cfg(test)]
mod tests;
