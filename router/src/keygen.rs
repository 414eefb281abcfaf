//! `ollama-mesh-router keygen`: makes a new API key and prints, once, the key and the entry to
//! store for it, with the `consul kv put` line that stores it.
//!
//! A key is `om-` followed by 32 random bytes in base64url: enough entropy that its plain
//! SHA-256 is safe to store, and recognisable in a leaked-secret scan.

use base64::Engine as _;
use clap::Args;
use ollama_mesh_consul::contract::kv as layout;
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::keys::{hex, sha256, EntryError, KeyEntry, Scope};

/// Random bytes in a key.
const KEY_BYTES: usize = 32;
/// What every key starts with.
pub const KEY_PREFIX: &str = "om-";

/// Makes a new API key and prints it with its Consul KV entry.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct KeygenArgs {
    /// The key's name: its KV entry (ollama-mesh/keys/NAME) and its label in logs and metrics.
    #[arg(long)]
    pub name: String,

    /// What the key may do: user (inference and fleet views) or admin (also model management).
    #[arg(long, value_enum, default_value = "user")]
    pub scope: KeygenScope,

    /// Models the key may use: names or patterns such as llama3*, comma-separated. [default:
    /// every model]
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,

    /// Requests per minute on each router replica.
    #[arg(long)]
    pub rpm: Option<u32>,

    /// Requests at once on each router replica.
    #[arg(long)]
    pub concurrency: Option<u32>,

    /// When the key stops working, RFC 3339 UTC (2027-01-01T00:00:00Z).
    #[arg(long)]
    pub expires: Option<String>,
}

/// [`Scope`] as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeygenScope {
    /// Inference and the fleet views.
    User,
    /// Everything, including model management.
    Admin,
}

/// Why no key was made.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// The name cannot be a KV key.
    #[error("--name: {0}")]
    Name(layout::InvalidKvName),
    /// The entry would be refused by the router.
    #[error("{0}")]
    Entry(EntryError),
    /// The system's random source failed.
    #[error("no secure random bytes available")]
    Random,
}

/// A new key and what to store for it.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The secret, shown once.
    pub key: String,
    /// The KV key to store the entry at.
    pub kv_key: String,
    /// The entry's JSON.
    pub entry: String,
}

impl NewKey {
    /// Makes a key as `args` describe.
    pub fn generate(args: &KeygenArgs) -> Result<Self, KeygenError> {
        let kv_key = layout::api_key(&args.name).map_err(KeygenError::Name)?;
        let mut random = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| KeygenError::Random)?;
        let key = format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
        );
        let entry = KeyEntry {
            sha256: hex(&sha256(key.as_bytes())),
            scope: match args.scope {
                KeygenScope::User => Scope::User,
                KeygenScope::Admin => Scope::Admin,
            },
            models: (!args.models.is_empty()).then(|| args.models.clone()),
            rpm: args.rpm,
            concurrency: args.concurrency,
            expires: args.expires.clone(),
            enabled: true,
            priority: None,
        };
        // Refuse now what the router would refuse later.
        entry
            .clone()
            .check(&args.name)
            .map_err(KeygenError::Entry)?;
        let entry =
            serde_json::to_string(&entry).map_err(|e| KeygenError::Entry(EntryError::Json(e)))?;
        Ok(Self { key, kv_key, entry })
    }

    /// What `keygen` prints.
    pub fn instructions(&self) -> String {
        format!(
            "API key (shown only now; the router stores only its SHA-256):\n\n  {key}\n\n\
             Key entry:\n\n  {entry}\n\n\
             Store it in Consul KV:\n\n  consul kv put {kv_key} '{entry}'\n\n\
             or add it to a --keys-file under the name {name:?}.\n",
            key = self.key,
            entry = self.entry,
            kv_key = self.kv_key,
            name = self.kv_key.trim_start_matches(layout::API_KEYS_PREFIX),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyStore;

    fn args(name: &str) -> KeygenArgs {
        KeygenArgs {
            name: name.into(),
            scope: KeygenScope::Admin,
            models: vec!["llama3*".into()],
            rpm: Some(60),
            concurrency: None,
            expires: Some("2030-01-01T00:00:00Z".into()),
        }
    }

    #[test]
    fn the_printed_entry_accepts_the_printed_key() {
        let new = NewKey::generate(&args("ci-bot")).unwrap();
        assert!(new.key.starts_with(KEY_PREFIX) && new.key.len() == 3 + 43);
        assert_eq!(new.kv_key, "ollama-mesh/keys/ci-bot");
        let key = KeyEntry::parse(&new.entry)
            .unwrap()
            .check("ci-bot")
            .unwrap();
        assert!(key.is_admin() && key.allows_model("llama3.2") && key.rpm == Some(60));
        let store = KeyStore::default();
        store.replace(vec![key]);
        assert!(store
            .authenticate(&new.key, std::time::SystemTime::now())
            .is_ok());
        let text = new.instructions();
        assert!(text.contains(&format!(
            "consul kv put ollama-mesh/keys/ci-bot '{}'",
            new.entry
        )));
        assert_ne!(new.key, NewKey::generate(&args("ci-bot")).unwrap().key);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(NewKey::generate(&args("a/b"))
            .unwrap_err()
            .to_string()
            .starts_with("--name: "));
        let mut bad = args("x");
        bad.expires = Some("soon".into());
        assert!(NewKey::generate(&bad)
            .unwrap_err()
            .to_string()
            .contains("RFC 3339"));
    }
}
