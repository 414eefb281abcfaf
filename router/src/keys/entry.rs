//! One API key entry: the JSON operators store at `ollama-mesh/keys/<name>` (or under the name
//! in a `--keys-file`), and the checked [`ApiKey`] the router matches requests against.
//!
//! The field names are a public interface: other tools write entries by these names, so an
//! unknown field is an error rather than ignored (a misspelt `models` must not silently grant
//! every model).

use std::time::SystemTime;

use ollama_mesh_consul::contract::meta::canonical_model_name;
use serde::{Deserialize, Serialize};

use crate::schedule::Priority;

/// What a key may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Inference and the fleet views.
    #[default]
    User,
    /// Everything, including model management.
    Admin,
}

/// The stored form of a key. Only `sha256` is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Lowercase hex SHA-256 of the key; the key itself is never stored.
    pub sha256: String,
    /// `user` when absent.
    #[serde(default, skip_serializing_if = "is_user")]
    pub scope: Scope,
    /// Model names or `*` patterns (`llama3*`) the key may use; absent means every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Requests per minute, per router replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Requests running at once, per router replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// RFC 3339 UTC time after which the key is refused (`2027-01-01T00:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// `false` refuses the key without deleting its entry.
    #[serde(default = "enabled", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// The priority of the key's requests (`critical`, `standard`, `sheddable`), and the
    /// highest its `X-Ollama-Mesh-Priority` header may ask for; `standard` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}

fn is_user(scope: &Scope) -> bool {
    *scope == Scope::User
}

fn enabled() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// Why an entry cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The KV key is not a valid entry name (letters, digits, `_` and `-`).
    #[error("the name must be letters, digits, '_' and '-'")]
    Name,
    /// The KV value is not UTF-8 text.
    #[error("the value is not text")]
    NotText,
    /// Not JSON of the documented shape.
    #[error("not a key entry: {0}")]
    Json(serde_json::Error),
    /// `sha256` is not 64 hex digits.
    #[error("sha256 must be 64 hex digits (the SHA-256 of the key, never the key itself)")]
    Hash,
    /// `expires` is not an RFC 3339 UTC time.
    #[error("expires {0:?} is not an RFC 3339 UTC time such as 2027-01-01T00:00:00Z")]
    Expires(String),
    /// `models` holds an empty pattern.
    #[error("models must not contain an empty name")]
    EmptyModel,
    /// A limit of zero would refuse every request.
    #[error("{0} must be at least 1 (leave it out for no limit)")]
    ZeroLimit(&'static str),
}

/// A checked key, ready to match requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The entry's name: what logs and metrics show.
    pub name: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// What the key may do.
    pub scope: Scope,
    /// Allowed models; `None` allows every model.
    pub models: Option<Vec<String>>,
    /// Requests per minute, per replica.
    pub rpm: Option<u32>,
    /// Concurrent requests, per replica.
    pub concurrency: Option<u32>,
    /// When the key stops working.
    pub expires: Option<SystemTime>,
    /// Whether the key works at all.
    pub enabled: bool,
    /// The priority of its requests, and the highest it may ask for.
    pub priority: Priority,
}

impl KeyEntry {
    /// Parses the JSON text of an entry.
    pub fn parse(text: &str) -> Result<Self, EntryError> {
        serde_json::from_str(text).map_err(EntryError::Json)
    }

    /// Checks the entry stored under `name`.
    pub fn check(self, name: &str) -> Result<ApiKey, EntryError> {
        let hash = decode_hash(&self.sha256).ok_or(EntryError::Hash)?;
        let expires = self
            .expires
            .map(|text| humantime::parse_rfc3339(&text).map_err(|_| EntryError::Expires(text)))
            .transpose()?;
        if let Some(models) = &self.models {
            if models.iter().any(|m| m.trim().is_empty()) {
                return Err(EntryError::EmptyModel);
            }
        }
        if self.rpm == Some(0) {
            return Err(EntryError::ZeroLimit("rpm"));
        }
        if self.concurrency == Some(0) {
            return Err(EntryError::ZeroLimit("concurrency"));
        }
        Ok(ApiKey {
            name: name.to_owned(),
            hash,
            scope: self.scope,
            models: self.models,
            rpm: self.rpm,
            concurrency: self.concurrency,
            expires,
            enabled: self.enabled,
            priority: self.priority.unwrap_or_default(),
        })
    }
}

impl ApiKey {
    /// Whether the key may use `model`. A pattern without `*` names one model (`llama3.2` is
    /// `llama3.2:latest`, as Ollama reads it); `*` matches any run of characters.
    pub fn allows_model(&self, model: &str) -> bool {
        let Some(patterns) = &self.models else {
            return true;
        };
        let model = canonical_model_name(model);
        patterns.iter().any(|pattern| {
            if pattern.contains('*') {
                glob_matches(pattern, &model)
            } else {
                canonical_model_name(pattern) == model
            }
        })
    }

    /// Whether the key may manage models.
    pub fn is_admin(&self) -> bool {
        self.scope == Scope::Admin
    }

    /// Why the key is refused at `now`, if it is.
    pub fn refusal(&self, now: SystemTime) -> Option<&'static str> {
        if !self.enabled {
            Some("API key is disabled")
        } else if self.expires.is_some_and(|at| now >= at) {
            Some("API key has expired")
        } else {
            None
        }
    }
}

fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(hash)
}

/// `*`-only glob matching (no `?` or classes: model names contain neither meaningfully).
fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty();
    };
    for middle in parts {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn key(json: &str) -> ApiKey {
        KeyEntry::parse(json).unwrap().check("k").unwrap()
    }

    #[test]
    fn only_the_hash_is_required() {
        let key = key(&format!(r#"{{"sha256": "{HASH}"}}"#));
        assert_eq!(key.scope, Scope::User);
        assert!(key.enabled && key.models.is_none() && key.expires.is_none());
        assert!(key.allows_model("anything:7b"));
    }

    #[test]
    fn every_documented_field_is_read() {
        let key = key(&format!(
            r#"{{"sha256": "{HASH}", "scope": "admin", "models": ["llama3*"], "rpm": 60,
                "concurrency": 4, "expires": "2027-01-01T00:00:00Z", "enabled": false}}"#
        ));
        assert!(key.is_admin());
        assert_eq!((key.rpm, key.concurrency), (Some(60), Some(4)));
        assert_eq!(
            key.refusal(SystemTime::UNIX_EPOCH),
            Some("API key is disabled")
        );
        let expiry = humantime::parse_rfc3339("2027-01-01T00:00:00Z").unwrap();
        assert_eq!(key.expires, Some(expiry));
    }

    #[test]
    fn expiry_refuses_from_that_moment() {
        let key = key(&format!(
            r#"{{"sha256": "{HASH}", "expires": "2027-01-01T00:00:00Z"}}"#
        ));
        let at = humantime::parse_rfc3339("2027-01-01T00:00:00Z").unwrap();
        assert_eq!(key.refusal(at - std::time::Duration::from_secs(1)), None);
        assert_eq!(key.refusal(at), Some("API key has expired"));
    }

    #[test]
    fn model_patterns() {
        let key = key(&format!(
            r#"{{"sha256": "{HASH}", "models": ["llama3*", "qwen2.5", "*-embed*:v1.5"]}}"#
        ));
        assert!(key.allows_model("llama3.2:3b"));
        assert!(key.allows_model("qwen2.5"));
        assert!(key.allows_model("qwen2.5:latest"));
        assert!(!key.allows_model("qwen2.5:7b"));
        assert!(key.allows_model("nomic-embed-text:v1.5"));
        assert!(!key.allows_model("mistral:7b"));
        assert!(glob_matches("a*a", "aa") && !glob_matches("a*a", "a"));
        assert!(glob_matches("*", "") && glob_matches("x*", "x"));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        let error = |json: &str| {
            KeyEntry::parse(json)
                .and_then(|e| e.check("k"))
                .unwrap_err()
                .to_string()
        };
        assert!(error(r#"{"sha256": "secret"}"#).contains("64 hex digits"));
        assert!(
            error(&format!(r#"{{"sha256": "{HASH}", "model": ["x"]}}"#)).contains("unknown field")
        );
        assert!(
            error(&format!(r#"{{"sha256": "{HASH}", "scope": "root"}}"#))
                .contains("unknown variant")
        );
        assert!(
            error(&format!(r#"{{"sha256": "{HASH}", "expires": "tomorrow"}}"#))
                .contains("RFC 3339")
        );
        assert!(error(&format!(r#"{{"sha256": "{HASH}", "rpm": 0}}"#)).contains("rpm"));
        assert!(error("[]").contains("not a key entry"));
    }

    #[test]
    fn entries_serialize_with_only_what_is_set() {
        let entry = KeyEntry {
            sha256: HASH.into(),
            scope: Scope::User,
            models: None,
            rpm: None,
            concurrency: None,
            expires: None,
            enabled: true,
            priority: None,
        };
        assert_eq!(
            serde_json::to_string(&entry).unwrap(),
            format!(r#"{{"sha256":"{HASH}"}}"#)
        );
    }
}
