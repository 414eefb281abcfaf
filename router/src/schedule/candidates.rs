//! Which instances may serve a request at all, whatever the policy: the first step of every
//! decision, and the errors a request gets when there are none.
//!
//! For a request naming model M, candidates are the instances that accept new work (up, not
//! draining, weight > 0, reachable) and have M on disk, with `x` ≡ `x:latest`. When none lists
//! M, the instances whose list of models was too long for Meta are candidates (M may be among
//! the names that did not fit; Ollama answers for itself). Instances that already tried this
//! request (retries before the first byte) are left out. A request naming no model may go to any
//! instance accepting new work.

use std::sync::Arc;
use std::time::Duration;

use ollama_mesh_consul::contract::meta::canonical_model_name;

use crate::backend::Backend;
use crate::backend_set::BackendSet;

/// Why a request was not given a backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
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
    /// Every slot for the model is busy and the router's queue is full.
    #[error("every node serving {model} is busy and the router's queue is full ({queued} waiting); retry in {}s", retry_after.as_secs())]
    QueueFull {
        /// The model asked for.
        model: String,
        /// Requests waiting in the router.
        queued: usize,
        /// When a retry has a fair chance.
        retry_after: Duration,
    },
    /// The caller's key already holds more than its share of a full queue.
    #[error("API key {key:?} has {queued} requests waiting, more than its share of the router's full queue; retry in {}s", retry_after.as_secs())]
    OverShare {
        /// The key's name.
        key: String,
        /// Its requests waiting.
        queued: usize,
        /// When a retry has a fair chance.
        retry_after: Duration,
    },
    /// The request waited `--queue-timeout` for a slot without getting one.
    #[error("no slot for {model} became free within {}s (--queue-timeout); retry in {}s", waited.as_secs(), retry_after.as_secs())]
    QueueTimeout {
        /// The model asked for.
        model: String,
        /// How long it waited.
        waited: Duration,
        /// When a retry has a fair chance.
        retry_after: Duration,
    },
    /// The request waited, and was shed to make room for more important work.
    #[error("shed from the router's full queue for higher-priority work; retry in {}s", retry_after.as_secs())]
    Shed {
        /// When a retry has a fair chance.
        retry_after: Duration,
    },
}

impl ScheduleError {
    /// The HTTP status the caller gets.
    pub fn status(&self) -> u16 {
        match self {
            Self::ModelNotFound { .. } => 404,
            Self::OverShare { .. } => 429,
            Self::NoneAvailable
            | Self::AllTried { .. }
            | Self::QueueFull { .. }
            | Self::QueueTimeout { .. }
            | Self::Shed { .. } => 503,
        }
    }

    /// The `Retry-After` the caller gets, for refusals that a later retry may pass.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::QueueFull { retry_after, .. }
            | Self::OverShare { retry_after, .. }
            | Self::QueueTimeout { retry_after, .. }
            | Self::Shed { retry_after } => Some(*retry_after),
            Self::NoneAvailable | Self::ModelNotFound { .. } | Self::AllTried { .. } => None,
        }
    }
}

/// The instances that may serve a request for `model` (`None`: it names none), leaving out
/// those in `exclude`.
pub fn candidates<'a>(
    set: &'a BackendSet,
    model: Option<&str>,
    exclude: &[Arc<str>],
) -> Result<Vec<&'a Arc<Backend>>, ScheduleError> {
    let accepting: Vec<&Arc<Backend>> = set.accepting().collect();
    if accepting.is_empty() {
        return Err(ScheduleError::NoneAvailable);
    }
    let with_model = match model {
        None => accepting,
        Some(model) => {
            let mut listing: Vec<&Arc<Backend>> = accepting
                .iter()
                .copied()
                .filter(|b| b.has_model(model))
                .collect();
            if listing.is_empty() {
                listing = accepting
                    .iter()
                    .copied()
                    .filter(|b| b.is_model_list_truncated())
                    .collect();
            }
            if listing.is_empty() {
                return Err(ScheduleError::ModelNotFound {
                    model: model.to_owned(),
                    available: fleet_models(&accepting),
                });
            }
            listing
        }
    };
    let tried = with_model.len();
    let untried: Vec<&Arc<Backend>> = with_model
        .into_iter()
        .filter(|b| !exclude.contains(b.id()))
        .collect();
    if untried.is_empty() {
        return Err(ScheduleError::AllTried { tried });
    }
    Ok(untried)
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
