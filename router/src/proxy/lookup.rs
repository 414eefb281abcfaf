//! Asking the nodes themselves which of them has a model, when their Meta does not say.
//!
//! Meta follows a node's disk at the sidecar's poll interval, so a model pulled or copied a
//! moment ago is on the node before it is in Consul. Rather than answer 404 for it, the router
//! asks the nodes (`/api/tags`) on such a miss. Misses are remembered for a short while, so a
//! client asking again and again for a model nobody has does not turn into a stream of requests
//! to every node; model management through the router forgets them, since it may be creating
//! exactly that model.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use ollama_mesh_consul::contract::meta::canonical_model_name;
use ollama_mesh_ollama_client::Tags;

use super::fanout::FanOut;
use crate::{Backend, BackendSet};

/// How long "no node has it" is believed.
const MISS_TTL: Duration = Duration::from_secs(2);
/// Remembered misses at most; beyond that the memory starts over.
const MAX_MISSES: usize = 1024;

/// Finds nodes that have a model their Meta does not list yet.
pub struct Lookup {
    fanout: FanOut,
    timeout: Duration,
    misses: Mutex<HashMap<String, Instant>>,
}

impl Lookup {
    /// A lookup asking nodes with `fanout`, each for at most `timeout`.
    pub fn new(fanout: FanOut, timeout: Duration) -> Self {
        Self {
            fanout,
            timeout,
            misses: Mutex::new(HashMap::new()),
        }
    }

    /// The nodes taking work that have `model` on disk, by their own account.
    pub async fn nodes_with(&self, set: &BackendSet, model: &str) -> Vec<Arc<Backend>> {
        let wanted = canonical_model_name(model);
        if self.recently_missed(&wanted) {
            return Vec::new();
        }
        let nodes: Vec<&Arc<Backend>> = set.accepting().collect();
        let answers = self
            .fanout
            .send_all(
                &nodes,
                &Method::GET,
                "/api/tags",
                &Bytes::new(),
                self.timeout,
            )
            .await;
        let found: Vec<Arc<Backend>> = nodes
            .into_iter()
            .zip(answers)
            .filter(|(_, answer)| has_model(answer, &wanted))
            .map(|(node, _)| node.clone())
            .collect();
        if found.is_empty() {
            self.remember_miss(wanted);
        }
        found
    }

    /// Forgets every remembered miss: model management may be creating the model right now.
    pub fn forget_misses(&self) {
        self.misses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn recently_missed(&self, model: &str) -> bool {
        let misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        misses.get(model).is_some_and(|at| at.elapsed() < MISS_TTL)
    }

    fn remember_miss(&self, model: String) {
        let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        if misses.len() >= MAX_MISSES {
            misses.clear();
        }
        misses.insert(model, Instant::now());
    }
}

fn has_model(answer: &super::fanout::NodeAnswer, wanted: &str) -> bool {
    let Ok((status, body)) = answer else {
        return false;
    };
    status.is_success()
        && serde_json::from_slice::<Tags>(body).is_ok_and(|tags| {
            tags.models
                .iter()
                .any(|t| canonical_model_name(&t.name) == wanted)
        })
}
