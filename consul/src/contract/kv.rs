//! The KV layout under `ollama-mesh/`. These paths are a public interface: operators type them
//! into the Consul UI's KV editor and into `consul kv put`, so they never change meaning.
//!
//! | key | written by | meaning |
//! |---|---|---|
//! | `ollama-mesh/keys/<name>` | operators (`ollama-mesh-router keygen` prints the line) | one API key |
//! | `ollama-mesh/drain/<instance-id>` | operators | drain that instance; the value is the reason |
//! | `ollama-mesh/router/<setting>` | operators | router settings shared by all replicas |
//!
//! Keys have no file extension: newer Consul rejects keys ending in `.json`, `.txt` and the like.

use super::InstanceId;

/// Everything ollama-mesh keeps in KV lives below this prefix.
pub const PREFIX: &str = "ollama-mesh/";
/// API keys, one per entry, named by the key's name (never by the secret).
pub const API_KEYS_PREFIX: &str = "ollama-mesh/keys/";
/// Drain flags, one per instance ID.
pub const DRAIN_PREFIX: &str = "ollama-mesh/drain/";
/// Router settings shared by every router replica.
pub const ROUTER_PREFIX: &str = "ollama-mesh/router/";

/// Longest name accepted for an API key entry.
const MAX_NAME_LEN: usize = 128;

/// Why a name cannot be used in a KV path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid KV name {name:?}: {reason}")]
pub struct InvalidKvName {
    /// The rejected name.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The KV key holding the API key entry called `name`.
pub fn api_key(name: &str) -> Result<String, InvalidKvName> {
    validate_name(name)?;
    Ok(format!("{API_KEYS_PREFIX}{name}"))
}

/// The KV key an operator sets to drain `instance`; its value is the reason shown in the
/// maintenance note.
pub fn drain_key(instance: &InstanceId) -> String {
    format!("{DRAIN_PREFIX}{instance}")
}

/// The instance a drain key names, if `key` is one.
pub fn instance_from_drain_key(key: &str) -> Option<InstanceId> {
    InstanceId::parse(key.strip_prefix(DRAIN_PREFIX)?).ok()
}

/// The name of the API key entry stored at `key`, if `key` is one.
pub fn name_from_api_key(key: &str) -> Option<&str> {
    key.strip_prefix(API_KEYS_PREFIX)
        .filter(|name| validate_name(name).is_ok())
}

/// A single path segment of letters, digits, `_`, `-` and inner `.`, with no extension that
/// newer Consul refuses (`.json`, `.txt`, …): such a key could be written by one Consul version
/// and refused by the next.
fn validate_name(name: &str) -> Result<(), InvalidKvName> {
    let reject = |reason| {
        Err(InvalidKvName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return reject("must be 1 to 128 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return reject("may contain only letters, digits, '_', '-' and '.'");
    }
    if name.starts_with('.') || name.ends_with('.') {
        return reject("must not start or end with '.'");
    }
    if name.contains('.') {
        return reject("must not contain '.': Consul refuses keys that look like file names");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_paths() {
        assert_eq!(api_key("ci-bot").unwrap(), "ollama-mesh/keys/ci-bot");
        let id = InstanceId::parse("ollama-gpu-1-11434").unwrap();
        assert_eq!(drain_key(&id), "ollama-mesh/drain/ollama-gpu-1-11434");
        assert_eq!(instance_from_drain_key(&drain_key(&id)), Some(id));
        assert_eq!(name_from_api_key("ollama-mesh/keys/ci-bot"), Some("ci-bot"));
        assert_eq!(name_from_api_key("ollama-mesh/drain/x"), None);
    }

    #[test]
    fn rejects_names_consul_would_refuse_or_that_escape_the_prefix() {
        for bad in ["", "a/b", "../x", "key.json", "notes.txt", ".hidden", "a b"] {
            assert!(api_key(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}
