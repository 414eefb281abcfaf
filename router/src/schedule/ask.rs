//! What a request asks of the fleet: the scheduler's whole view of one request.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Header a caller sets to say how important a request is.
pub const PRIORITY_HEADER: &str = "x-ollama-mesh-priority";

/// How important a request is (the Gateway API inference extension's criticality): critical
/// work is dispatched first, sheddable work is shed first when the queue is full.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Dispatched before everything else.
    Critical,
    /// The default.
    #[default]
    Standard,
    /// Shed first: batch jobs, evaluations, anything that can come back later.
    Sheddable,
}

impl Priority {
    /// Every priority, most important first.
    pub const ALL: [Priority; 3] = [Self::Critical, Self::Standard, Self::Sheddable];

    /// The name in headers, key entries and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Standard => "standard",
            Self::Sheddable => "sheddable",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A priority name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a priority; use critical, standard or sheddable")]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownPriority(s.to_owned()))
    }
}

/// The model a request needs resident on a node: its canonical name and a fingerprint of the
/// runner options that force Ollama to load it anew (`num_ctx`, `num_batch`, `num_gpu`, …;
/// 0 when the request sets none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Residency {
    /// Canonical model name (`x` is `x:latest`).
    pub model: String,
    /// Fingerprint of the reload-forcing runner options.
    pub runner: u64,
}

/// One request, as the scheduler sees it.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// The model as the client wrote it (answers echo it); `None` when the request names none.
    pub model: Option<String>,
    /// What must be resident to serve it without a load; `None` without a model.
    pub residency: Option<Residency>,
    /// Hash of the conversation's leading context (system prompt and first user message, or a
    /// prompt's leading bytes): the key of the prompt cache a node may hold for it.
    pub affinity: Option<u64>,
    /// Estimated prompt tokens.
    pub prompt_tokens: u32,
    /// Estimated tokens a node holding the conversation's prefix still has to read (the newest
    /// message).
    pub fresh_tokens: u32,
    /// How important it is.
    pub priority: Priority,
    /// The API key's name, for fairness between keys; `None` on a router without keys.
    pub key: Option<Arc<str>>,
}

impl Ask {
    /// A request that reads about `model` without running it (`/api/show`, `/v1/models/:m`):
    /// it goes to a node that has the model and never waits for a slot, since Ollama answers
    /// it at once however busy its runners are.
    pub fn lookup(model: &str) -> Self {
        Self {
            model: Some(model.to_owned()),
            ..Self::default()
        }
    }

    /// The canonical model name, when the request names one.
    pub fn canonical_model(&self) -> Option<&str> {
        self.residency.as_ref().map(|r| r.model.as_str())
    }
}
