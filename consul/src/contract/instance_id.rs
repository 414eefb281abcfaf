use std::fmt;

/// Nomad owns service IDs with this prefix and removes ones it did not create.
const NOMAD_OWNED_PREFIX: &str = "_nomad-task-";

/// Longest instance ID accepted; it is also a path segment in Consul KV and HTTP URLs.
const MAX_LEN: usize = 128;

/// The ID of one registered Ollama instance: unique per Consul agent, stable across sidecar
/// restarts, and safe to use as a URL path segment and a KV key segment
/// (`ollama-mesh/drain/<instance-id>`).
///
/// The default scheme is `<service>-<node>-<port>`: one Ollama per port per node, readable in the
/// Consul UI, and the same after a restart so a re-registration replaces rather than duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(String);

/// Why a string cannot be an [`InstanceId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid instance ID {id:?}: {reason}")]
pub struct InvalidInstanceId {
    /// The rejected ID.
    pub id: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl InstanceId {
    /// Builds the default ID for the Ollama on `port` of `node`. Characters that are not
    /// allowed in an ID (see [`InstanceId::parse`]) become `-`.
    pub fn for_node(service: &str, node: &str, port: u16) -> Result<Self, InvalidInstanceId> {
        let node: String = node
            .chars()
            .map(|c| if is_id_char(c) { c } else { '-' })
            .collect();
        Self::parse(&format!("{service}-{node}-{port}"))
    }

    /// Validates an operator-supplied ID: 1 to 128 characters of `A-Z a-z 0-9 _ . -`, not
    /// starting with Nomad's reserved `_nomad-task-` prefix, and not `.` or `..`.
    pub fn parse(id: &str) -> Result<Self, InvalidInstanceId> {
        let reject = |reason| {
            Err(InvalidInstanceId {
                id: id.to_owned(),
                reason,
            })
        };
        if id.is_empty() {
            return reject("must not be empty");
        }
        if id.len() > MAX_LEN {
            return reject("must be at most 128 characters");
        }
        if !id.chars().all(is_id_char) {
            return reject("may contain only letters, digits, '_', '.' and '-'");
        }
        if id == "." || id == ".." {
            return reject("must not be a relative path segment");
        }
        if id.starts_with(NOMAD_OWNED_PREFIX) {
            return reject("must not start with '_nomad-task-' (Nomad owns those IDs)");
        }
        Ok(Self(id.to_owned()))
    }

    /// The ID as Consul sees it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for InstanceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_scheme_is_service_node_port() {
        let id = InstanceId::for_node("ollama", "gpu-01.example", 11434).unwrap();
        assert_eq!(id.as_str(), "ollama-gpu-01.example-11434");
    }

    #[test]
    fn node_names_are_sanitised() {
        let id = InstanceId::for_node("ollama", "gpu 01/a:b", 1).unwrap();
        assert_eq!(id.as_str(), "ollama-gpu-01-a-b-1");
    }

    #[test]
    fn rejects_what_would_break_paths_or_nomad() {
        for bad in ["", ".", "..", "a/b", "a b", "_nomad-task-x", "é"] {
            assert!(InstanceId::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(InstanceId::parse(&"x".repeat(129)).is_err());
        assert!(InstanceId::parse(&"x".repeat(128)).is_ok());
    }
}
