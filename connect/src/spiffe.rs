//! SPIFFE IDs of Connect services: `spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>`
//! (with `/ap/<partition>` first in Consul Enterprise). A Connect certificate carries its
//! identity only there, in a URI SAN: no common name, no DNS name.

use std::fmt;

/// The identity of one Connect service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceId {
    uri: String,
    trust_domain: String,
    service: String,
}

/// Why a URI is not a Connect service's SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{uri:?} is not a Connect service identity: {reason}")]
pub struct SpiffeError {
    uri: String,
    reason: &'static str,
}

impl ServiceId {
    /// Parses a service's SPIFFE ID; any other URI (an agent's, a CA's) is an error.
    pub fn parse(uri: &str) -> Result<Self, SpiffeError> {
        let error = |reason| SpiffeError {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| error("not a spiffe:// URI"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| error("no path after the trust domain"))?;
        if trust_domain.is_empty() {
            return Err(error("empty trust domain"));
        }
        let segments: Vec<&str> = path.split('/').collect();
        if segments.len() % 2 != 0 || segments.iter().any(|s| s.is_empty()) {
            return Err(error("the path is not pairs of names and values"));
        }
        let pairs: Vec<(&str, &str)> = segments.chunks(2).map(|p| (p[0], p[1])).collect();
        let keys: Vec<&str> = pairs.iter().map(|(key, _)| *key).collect();
        if keys != ["ns", "dc", "svc"] && keys != ["ap", "ns", "dc", "svc"] {
            return Err(error(
                "not a service identity (…/ns/<ns>/dc/<dc>/svc/<service>)",
            ));
        }
        let service = pairs[pairs.len() - 1].1;
        Ok(Self {
            uri: uri.to_owned(),
            trust_domain: trust_domain.to_owned(),
            service: service.to_owned(),
        })
    }

    /// The whole URI, as the agent's authorize endpoint takes it.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The mesh it belongs to: `<cluster-uuid>.consul`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The service it names.
    pub fn service(&self) -> &str {
        &self.service
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_identities_parse_with_and_without_a_partition() {
        let id =
            ServiceId::parse("spiffe://1111-2222.consul/ns/default/dc/dc1/svc/ollama").unwrap();
        assert_eq!(id.trust_domain(), "1111-2222.consul");
        assert_eq!(id.service(), "ollama");
        let id = ServiceId::parse(
            "spiffe://t.consul/ap/team-a/ns/default/dc/dc1/svc/ollama-mesh-router",
        )
        .unwrap();
        assert_eq!(id.service(), "ollama-mesh-router");
        assert_eq!(
            id.to_string(),
            "spiffe://t.consul/ap/team-a/ns/default/dc/dc1/svc/ollama-mesh-router"
        );
    }

    #[test]
    fn other_uris_are_refused() {
        for uri in [
            "https://t.consul/ns/default/dc/dc1/svc/ollama",
            "spiffe://t.consul",
            "spiffe:///ns/default/dc/dc1/svc/ollama",
            "spiffe://t.consul/agent/client/dc/dc1/id/abc",
            "spiffe://t.consul/ns/default/dc/dc1/svc/",
            "spiffe://t.consul/ns/default/dc/dc1",
        ] {
            assert!(ServiceId::parse(uri).is_err(), "{uri}");
        }
    }
}
