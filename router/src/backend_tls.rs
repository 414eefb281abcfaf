//! TLS from the router to its nodes (`--backend-tls`, `--backend-ca`): for Ollama behind a
//! TLS-terminating proxy such as nginx.
//!
//! Two clients reach the nodes: Pingora, which proxies requests (its connector trusts the CA
//! given in its `ServerConf`, see [`crate::server`]), and the router's own hyper clients, which
//! gather the fleet views, look models up, broadcast model management and poll static backends.
//! The latter all share one rustls configuration, built here once at start from the same CA
//! bundle (or the system's roots), so both clients trust exactly the same certificates.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{ClientConfig, RootCertStore};

use crate::tls::{certificates, file_error, TlsError};

/// How the router verifies its nodes' certificates; present only when TLS to the nodes is on.
#[derive(Clone)]
pub struct BackendTls {
    ca_file: Option<PathBuf>,
    client: Arc<ClientConfig>,
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl BackendTls {
    /// Trusts the PEM CA bundle `ca_file`, or the system's roots without one. Loaded now so an
    /// unusable file stops the router at start (Pingora would panic on it later).
    pub fn load(ca_file: Option<PathBuf>) -> Result<Self, TlsError> {
        let roots = match &ca_file {
            Some(path) => bundle_roots(path)?,
            None => system_roots()?,
        };
        Ok(Self {
            ca_file,
            client: Arc::new(client_config(roots)),
        })
    }

    /// The CA bundle given with `--backend-ca`; `None` trusts the system's roots.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }
}

/// The URL scheme the router's own clients use to reach a node.
pub fn scheme(tls: Option<&BackendTls>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// The name a node's certificate is verified against: the host of its `host:port` address (an
/// IPv6 address without its brackets, as rustls parses IP addresses).
pub fn server_name(address: &str) -> &str {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _port)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A connector for the router's own clients: TLS with `tls`'s trust when it is given; plain
/// HTTP always works too, so the same client type serves fleets with and without TLS.
pub fn connector(tls: Option<&BackendTls>, http: HttpConnector) -> HttpsConnector<HttpConnector> {
    // Without TLS no https:// URL is ever built; an empty trust store keeps it that way.
    let config = tls.map_or_else(
        || Arc::new(client_config(RootCertStore::empty())),
        |tls| tls.client.clone(),
    );
    connector_with(config, http)
}

/// A connector for the router's own clients with any rustls configuration (the mesh's).
pub fn connector_with(
    config: Arc<ClientConfig>,
    mut http: HttpConnector,
) -> HttpsConnector<HttpConnector> {
    // The HTTPS layer hands `https://` URIs to the TCP connector, which refuses them by default.
    http.enforce_http(false);
    HttpsConnectorBuilder::new()
        .with_tls_config(ClientConfig::clone(&config))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// The one rustls client configuration of the router's own clients, trusting `roots`. TLS 1.2
/// and 1.3, as Pingora's connector offers.
fn client_config(roots: RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn bundle_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates("backend-ca", path)? {
        roots
            .add(certificate)
            .map_err(|e| file_error("backend-ca", path, e))?;
    }
    Ok(roots)
}

/// The system's roots, as Pingora loads them (honouring `SSL_CERT_FILE` and `SSL_CERT_DIR`).
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let message = match found.errors.first() {
            Some(error) => error.to_string(),
            None => "the store is empty".to_owned(),
        };
        return Err(TlsError::NoSystemRoots { message });
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(server_name("gpu-1.example.com:443"), "gpu-1.example.com");
        assert_eq!(server_name("10.0.0.5:11434"), "10.0.0.5");
        assert_eq!(server_name("[fd00::5]:11434"), "fd00::5");
    }

    #[test]
    fn an_unusable_ca_bundle_names_the_flag() {
        let missing = std::env::temp_dir().join("ollama-mesh-no-such-ca.pem");
        let error = BackendTls::load(Some(missing)).unwrap_err().to_string();
        assert!(error.starts_with("--backend-ca "), "{error}");
    }
}
