//! Keys followed in Consul KV: one entry per key under `ollama-mesh/keys/`, watched with a
//! blocking query, so a key added, changed or deleted (revoked) in the UI or with
//! `consul kv put` takes effect on the next answer, well within a second.
//!
//! While Consul is unreachable the last keys stay in force: refusing every client because the
//! catalog blinked would turn a Consul outage into a fleet outage.

use ollama_mesh_consul::contract::kv as layout;
use ollama_mesh_consul::kv::KvPair;
use ollama_mesh_consul::watch::{Watch, WatchConfig};
use ollama_mesh_consul::Client;
use ollama_mesh_daemon::AbortOnDrop;

use super::{checked_keys, EntryError, KeyEntry, KeyStore};

/// The task keeping a [`KeyStore`] equal to the KV prefix. Dropping it stops the watch.
pub struct ConsulKeys {
    _task: AbortOnDrop<()>,
}

impl ConsulKeys {
    /// Starts following `ollama-mesh/keys/` into `store`.
    pub fn start(client: Client, store: KeyStore, config: WatchConfig) -> Self {
        let watch = Watch::kv_prefix(client, layout::API_KEYS_PREFIX, config);
        Self {
            _task: AbortOnDrop::spawn(follow(watch, store)),
        }
    }
}

async fn follow(watch: Watch<Vec<KvPair>>, store: KeyStore) {
    let mut updates = watch.subscribe();
    loop {
        let pairs = updates.borrow_and_update().clone();
        if let Some(pairs) = pairs {
            // Keys ending in '/' are folders the Consul UI creates, not entries.
            let entries = pairs.iter().filter(|p| !p.key.ends_with('/')).map(entry);
            let keys = checked_keys("consul", entries);
            tracing::info!(keys = keys.len(), "API keys loaded from Consul");
            store.replace(keys);
        }
        if updates.changed().await.is_err() {
            tracing::error!("the API key watch stopped; the last keys stay in force");
            return;
        }
    }
}

/// One KV pair as a named entry; a key whose name Consul paths cannot hold is an error too.
fn entry(pair: &KvPair) -> (String, Result<KeyEntry, EntryError>) {
    let name = pair
        .key
        .strip_prefix(layout::API_KEYS_PREFIX)
        .unwrap_or(&pair.key)
        .to_owned();
    let entry = match (layout::name_from_api_key(&pair.key), pair.value_str()) {
        (None, _) => Err(EntryError::Name),
        (Some(_), None) => Err(EntryError::NotText),
        (Some(_), Some(text)) => KeyEntry::parse(text),
    };
    (name, entry)
}
