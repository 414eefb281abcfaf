//! Whether a client may connect, by Consul's intentions: the local agent decides (its answer
//! includes the default policy, wildcards and precedence, which this crate does not re-derive),
//! answers are cached briefly, and every intention change is announced so connections already
//! open can be judged again. Without that, a router's pooled keep-alive connections would keep
//! working after an operator denied it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ollama_mesh_consul::connect::Intention;
use ollama_mesh_consul::watch::{Watch, WatchConfig};
use ollama_mesh_consul::Client;
use ollama_mesh_daemon::AbortOnDrop;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::peer::PeerIdentity;

/// How long an answer is reused for the same certificate when no intention changed.
const CACHE_TTL: Duration = Duration::from_secs(10);

/// The agent follows intentions with its own blocking query, so right after a change it may
/// still answer by the old ones; a second look this much later catches that.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// The agent's verdict on one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The intentions allow it.
    Allowed,
    /// The intentions deny it, with the agent's reason (the matching intention).
    Denied(String),
    /// The agent could not answer. A new connection is refused on this (fail closed); an open
    /// one is better kept until the agent answers again than cut for an agent's hiccup.
    Unavailable(String),
}

struct Cached {
    decision: Decision,
    generation: u64,
    at: Instant,
}

/// Decides connections to one destination service.
pub struct Authorizer {
    client: Client,
    target: String,
    cache: Mutex<HashMap<PeerIdentity, Cached>>,
    changes: watch::Receiver<u64>,
    _task: AbortOnDrop<()>,
}

impl Authorizer {
    /// Starts following the intentions of `target` (this service).
    pub fn start(client: Client, target: impl Into<String>, config: WatchConfig) -> Self {
        let target = target.into();
        let intentions = Watch::intentions(client.clone(), target.clone(), config);
        let (changes_tx, changes) = watch::channel(0);
        Self {
            client,
            target,
            cache: Mutex::new(HashMap::new()),
            changes,
            _task: AbortOnDrop::spawn(announce_changes(intentions, changes_tx)),
        }
    }

    /// A receiver notified whenever the intentions may have changed: time to decide again.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Whether `peer` may connect now. An agent that cannot answer gives
    /// [`Decision::Unavailable`], which is not cached.
    pub async fn decide(&self, peer: &PeerIdentity) -> Decision {
        let generation = *self.changes.borrow();
        if let Some(cached) = self.cache.lock().expect("cache lock").get(peer) {
            if cached.generation == generation && cached.at.elapsed() < CACHE_TTL {
                return cached.decision.clone();
            }
        }
        let answer = self
            .client
            .connect_authorize(&self.target, peer.service.uri(), &peer.serial)
            .await;
        let decision = match answer {
            Ok(answer) if answer.authorized => Decision::Allowed,
            Ok(answer) => Decision::Denied(answer.reason),
            Err(error) => {
                return Decision::Unavailable(format!(
                    "the Consul agent could not authorize: {error}"
                ))
            }
        };
        let mut cache = self.cache.lock().expect("cache lock");
        cache
            .retain(|_, cached| cached.generation == generation && cached.at.elapsed() < CACHE_TTL);
        cache.insert(
            peer.clone(),
            Cached {
                decision: decision.clone(),
                generation,
                at: Instant::now(),
            },
        );
        decision
    }
}

/// Bumps `changes` on every answer of the intentions watch, the first included (a decision
/// cached before it may predate an edit), and once more a moment later (see [`RECHECK_AFTER`]).
async fn announce_changes(intentions: Watch<Vec<Intention>>, changes: watch::Sender<u64>) {
    let mut updates = intentions.subscribe();
    while updates.changed().await.is_ok() {
        let count = updates.borrow_and_update().as_ref().map_or(0, |i| i.len());
        tracing::info!(
            intentions = count,
            "intentions changed; judging open connections again"
        );
        changes.send_modify(|g| *g += 1);
        tokio::time::sleep(RECHECK_AFTER).await;
        changes.send_modify(|g| *g += 1);
    }
}
