//! API keys: the set the router accepts, kept current by a source, and matched per request.
//!
//! * [`entry`]: the stored JSON of one key ([`KeyEntry`]) and its checked form ([`ApiKey`]).
//! * [`consul`]: keys followed in Consul KV under `ollama-mesh/keys/` ([`ConsulKeys`]).
//! * [`file`]: keys read from a `--keys-file`, reloaded when it changes ([`FileKeys`]).
//!
//! Only the SHA-256 of a key is ever stored or held; a presented key is hashed and compared
//! with every known hash in constant time, so neither the key nor how much of it matched leaks
//! through timing. Keys are random and long (see [`crate::keygen`]), so a plain SHA-256 is the
//! right hash, as in other API-token stores: there is nothing to brute-force.

pub mod consul;
pub mod entry;
pub mod file;

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq as _;

pub use consul::ConsulKeys;
pub use entry::{ApiKey, EntryError, KeyEntry, Scope};
pub use file::{FileKeys, FileKeysError};

/// The keys the router accepts right now, swapped whole by their source and read lock-free on
/// every request. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct KeyStore {
    keys: Arc<ArcSwap<Vec<Arc<ApiKey>>>>,
}

/// The header carrying a key for clients that cannot set `Authorization`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Why a request is not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No key was presented.
    #[error("missing API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")]
    Missing,
    /// The key matches no entry.
    #[error("invalid API key")]
    Invalid,
    /// The key matches an entry that is disabled or expired.
    #[error("{0}")]
    Refused(&'static str),
}

impl Denied {
    /// The `WWW-Authenticate` challenge for this refusal (RFC 6750).
    pub fn challenge(self) -> &'static str {
        match self {
            Self::Missing => r#"Bearer realm="ollama-mesh""#,
            Self::Invalid | Self::Refused(_) => {
                r#"Bearer realm="ollama-mesh", error="invalid_token""#
            }
        }
    }

    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Refused(_) => "refused",
        }
    }
}

impl KeyStore {
    /// The entry of the key a request with `headers` presents, if it may be used at `now`.
    /// Keys come as `Authorization: Bearer <key>` (what OpenAI SDKs send) or `X-API-Key`.
    pub fn authenticate_request(
        &self,
        headers: &http::HeaderMap,
        now: SystemTime,
    ) -> Result<Arc<ApiKey>, Denied> {
        let presented = presented_key(headers).ok_or(Denied::Missing)?;
        self.authenticate(presented, now)
    }

    /// Replaces the accepted keys with `keys`.
    pub fn replace(&self, keys: Vec<ApiKey>) {
        self.keys
            .store(Arc::new(keys.into_iter().map(Arc::new).collect()));
    }

    /// How many keys are accepted.
    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    /// Whether no key is accepted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry `presented` is the key of, if it may be used at `now`.
    pub fn authenticate(&self, presented: &str, now: SystemTime) -> Result<Arc<ApiKey>, Denied> {
        let hash = sha256(presented.as_bytes());
        let keys = self.keys.load();
        // Every hash is compared, so the time taken does not depend on which one matched.
        let mut found = None;
        for key in keys.iter() {
            if bool::from(key.hash.ct_eq(&hash)) {
                found = Some(key);
            }
        }
        let key = found.ok_or(Denied::Invalid)?;
        match key.refusal(now) {
            Some(reason) => Err(Denied::Refused(reason)),
            None => Ok(key.clone()),
        }
    }
}

/// The key in `Authorization: Bearer` (the scheme in any case, as RFC 9110 allows) or, failing
/// that, in `X-API-Key`.
fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    bearer
        .or_else(|| {
            headers
                .get(API_KEY_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
        .filter(|key| !key.is_empty())
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// Lowercase hex, as entries store hashes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The usable keys among `entries` from `source`; each unusable one is logged with its name
/// and skipped, so one bad entry never takes the others down.
fn checked_keys(
    source: &str,
    entries: impl IntoIterator<Item = (String, Result<KeyEntry, EntryError>)>,
) -> Vec<ApiKey> {
    entries
        .into_iter()
        .filter_map(|(name, entry)| match entry.and_then(|e| e.check(&name)) {
            Ok(key) => Some(key),
            Err(error) => {
                tracing::error!(key = %name, source, %error, "API key entry skipped");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(secret: &str, extra: &str) -> Result<KeyEntry, EntryError> {
        KeyEntry::parse(&format!(
            r#"{{"sha256": "{}"{extra}}}"#,
            hex(&sha256(secret.as_bytes()))
        ))
    }

    #[test]
    fn keys_are_found_by_their_hash_and_bad_entries_are_skipped() {
        let store = KeyStore::default();
        store.replace(checked_keys(
            "test",
            [
                ("a".to_owned(), entry("secret-a", "")),
                ("broken".to_owned(), KeyEntry::parse("{")),
                (
                    "old".to_owned(),
                    entry("secret-old", r#", "expires": "2001-01-01T00:00:00Z""#),
                ),
            ],
        ));
        assert_eq!(store.len(), 2);
        let now = SystemTime::now();
        assert_eq!(store.authenticate("secret-a", now).unwrap().name, "a");
        assert_eq!(store.authenticate("secret-b", now), Err(Denied::Invalid));
        assert_eq!(
            store.authenticate("secret-old", now),
            Err(Denied::Refused("API key has expired"))
        );
    }

    #[test]
    fn the_documented_hash_is_lowercase_hex_sha256() {
        assert_eq!(
            hex(&sha256(b"test")),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
