//! Consul service mesh (Connect) for Connect-native services: the CA roots to trust, the
//! service's leaf certificate, the agent's authorization of a client, and the intentions that
//! decide it.
//!
//! Roots, leaf and intentions all answer blocking queries, so [`crate::watch::Watch`] follows
//! renewals, CA rotations and intention edits as they happen.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::{encode_component, Client, QueryOptions, QueryResponse};
use crate::health::null_as_default;
use crate::Error;

/// The CA roots of the mesh (`/v1/agent/connect/ca/roots`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CaRoots {
    /// The ID of the root that signs new leaves.
    #[serde(rename = "ActiveRootID")]
    pub active_root_id: String,
    /// `<cluster-uuid>.consul`: the host part of every SPIFFE ID in the mesh.
    pub trust_domain: String,
    /// Every root still trusted: during a rotation the old one stays until its leaves expire.
    #[serde(deserialize_with = "null_as_default")]
    pub roots: Vec<CaRoot>,
}

/// One CA root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CaRoot {
    /// The root's ID (its key's fingerprint).
    #[serde(rename = "ID")]
    pub id: String,
    /// The root certificate, PEM.
    pub root_cert: String,
    /// Intermediates (PEM) that chain leaves to this root, such as a cross-signed new root.
    #[serde(deserialize_with = "null_as_default")]
    pub intermediate_certs: Vec<String>,
    /// Whether this root signs new leaves.
    pub active: bool,
}

/// A service's leaf certificate (`/v1/agent/connect/ca/leaf/<service>`). The agent renews it
/// before it expires and re-issues it when the CA rotates; a blocking query returns then.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LeafCert {
    /// The certificate's serial, as colon-separated hex.
    pub serial_number: String,
    /// The certificate (and any intermediates), PEM.
    #[serde(rename = "CertPEM")]
    pub cert_pem: String,
    /// Its private key, PEM.
    #[serde(rename = "PrivateKeyPEM")]
    pub private_key_pem: String,
    /// The service it identifies.
    pub service: String,
    /// Its SPIFFE ID.
    #[serde(rename = "ServiceURI")]
    pub service_uri: String,
    /// RFC 3339 time it becomes valid.
    pub valid_after: String,
    /// RFC 3339 time it expires.
    pub valid_before: String,
}

/// Keeps the private key out of logs.
impl std::fmt::Debug for LeafCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCert")
            .field("serial_number", &self.serial_number)
            .field("service_uri", &self.service_uri)
            .field("valid_before", &self.valid_before)
            .finish_non_exhaustive()
    }
}

/// The agent's answer to "may this client reach this service?".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Authorization {
    /// Whether the connection is allowed.
    pub authorized: bool,
    /// Which intention (or default) decided, for logs.
    pub reason: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AuthorizeRequest<'a> {
    target: &'a str,
    #[serde(rename = "ClientCertURI")]
    client_cert_uri: &'a str,
    client_cert_serial: &'a str,
}

/// One intention that applies to a destination, as much as is needed to notice any change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Intention {
    /// The source service (`*` for any).
    pub source_name: String,
    /// The destination service (`*` for any).
    pub destination_name: String,
    /// `allow` or `deny`; empty for L7 intentions, which carry permissions instead.
    pub action: String,
    /// Higher wins.
    pub precedence: i64,
    /// Index of the last change to the intention.
    pub modify_index: u64,
}

impl Client {
    /// The mesh's CA roots. A blocking query when `options.index` is set.
    pub async fn connect_ca_roots(
        &self,
        options: &QueryOptions,
    ) -> Result<QueryResponse<CaRoots>, Error> {
        self.get_json("/v1/agent/connect/ca/roots", options).await
    }

    /// The leaf certificate for `service` (the token needs `service:write` on it). A blocking
    /// query when `options.index` is set.
    pub async fn connect_ca_leaf(
        &self,
        service: &str,
        options: &QueryOptions,
    ) -> Result<QueryResponse<LeafCert>, Error> {
        let path = format!("/v1/agent/connect/ca/leaf/{}", encode_component(service));
        self.get_json(&path, options).await
    }

    /// Asks the local agent whether the client with this certificate may reach `target`, by
    /// the intentions (answered from the agent's cache, so cheap).
    pub async fn connect_authorize(
        &self,
        target: &str,
        client_cert_uri: &str,
        client_cert_serial: &str,
    ) -> Result<Authorization, Error> {
        let request = AuthorizeRequest {
            target,
            client_cert_uri,
            client_cert_serial,
        };
        self.post_json("/v1/agent/connect/authorize", &request)
            .await
    }

    /// The intentions that apply to `destination`, most precedent first (wildcards included).
    /// A blocking query when `options.index` is set.
    pub async fn intentions_for_destination(
        &self,
        destination: &str,
        options: &QueryOptions,
    ) -> Result<QueryResponse<Vec<Intention>>, Error> {
        let path = format!(
            "/v1/connect/intentions/match?by=destination&name={}",
            encode_component(destination)
        );
        // A destination with no intentions is `{"<name>": null}`.
        let answer: QueryResponse<BTreeMap<String, Option<Vec<Intention>>>> =
            self.get_json(&path, options).await?;
        Ok(answer.map(|mut by_name| by_name.remove(destination).flatten().unwrap_or_default()))
    }
}
