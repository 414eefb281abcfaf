//! The router in the service mesh (`--mesh`): it takes its own Connect identity from the local
//! Consul agent and reaches Connect-native nodes over mutual TLS, checking that each node's
//! certificate chains to the Connect roots and names the nodes' service.
//!
//! Pingora proxies requests over its own pooled TLS connections, so a handshake happens only
//! when a new connection opens. Pingora verifies the chain against the roots given per peer and
//! skips the hostname (Connect certificates carry only a SPIFFE URI), but its rustls connector
//! cannot check a SPIFFE ID and keeps only the SHA-256 digest of the node's certificate. So
//! before a request goes out on a connection, [`MeshClient::check_server`] looks that digest up
//! among certificates already proved to be the nodes' service; an unknown one is proved once,
//! by a handshake of the router's own that checks the SPIFFE ID and must see the very same
//! certificate. That costs one extra handshake per node certificate (they live for days), none
//! per request. The router's own clients (fleet views, lookups, broadcasts) use the rustls
//! configuration of `ollama-mesh-connect`, which checks both directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use ollama_mesh_connect::{Identity, IdentitySource};
use ollama_mesh_consul::watch::{WatchConfig, WatchStatus};
use ollama_mesh_consul::Client;
use pingora::protocols::tls::CaType;
use pingora::protocols::Digest;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::backend::MeshPolicy;

/// How the router takes part in the service mesh (`--mesh`, `--mesh-service`,
/// `--mesh-allow-plain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    /// The router's own Connect service name.
    pub service: String,
    /// Nodes registered without Connect are reached over plain HTTP.
    pub allow_plain: bool,
}

/// Why a request cannot go to a mesh node.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Consul has not issued the router's certificate yet.
    #[error("no Connect certificate from Consul yet")]
    NoIdentity,
    /// The node's certificate is not one of the nodes' service.
    #[error("the node is not service {expected:?}: {presented}")]
    WrongServer {
        /// What the node's certificate says.
        presented: String,
        /// The nodes' service.
        expected: String,
    },
}

/// The router's mesh identity and what it expects of the nodes. Shared by discovery (which
/// decides which nodes are reached through the mesh) and the proxy.
pub struct MeshClient {
    source: IdentitySource,
    node_service: String,
    allow_plain: bool,
    client_config: Arc<ClientConfig>,
    pingora_tls: ArcSwapOption<PingoraTls>,
    /// Node certificates (by SHA-256 digest) already checked, with what they proved.
    proven: Mutex<HashMap<Vec<u8>, Result<(), String>>>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient")
            .field("identity", &self.source.tls().identity())
            .field("node_service", &self.node_service)
            .field("allow_plain", &self.allow_plain)
            .finish_non_exhaustive()
    }
}

/// The current identity in the forms Pingora's connector takes, converted once per identity.
struct PingoraTls {
    identity: Arc<Identity>,
    cert_key: Arc<CertKey>,
    roots: Arc<CaType>,
}

/// Beyond this many proven certificates the cache starts over (a fleet renews each node's
/// certificate every few days; this only bounds memory against churn).
const MAX_PROVEN: usize = 4096;

impl MeshClient {
    /// Starts following the router's identity (`settings.service`) in Consul; nodes must be
    /// instances of `node_service`. `connect_timeout` bounds the proving handshake.
    pub fn start(
        consul: Client,
        settings: &MeshSettings,
        node_service: &str,
        connect_timeout: Duration,
    ) -> Self {
        let source =
            IdentitySource::start(consul, settings.service.clone(), WatchConfig::default());
        let client_config = source.tls().client_config(node_service);
        Self {
            source,
            node_service: node_service.to_owned(),
            allow_plain: settings.allow_plain,
            client_config,
            pingora_tls: ArcSwapOption::empty(),
            proven: Mutex::new(HashMap::new()),
            connect_timeout,
        }
    }

    /// Which nodes are reached through the mesh.
    pub fn policy(&self) -> MeshPolicy {
        MeshPolicy {
            mesh: true,
            allow_plain: self.allow_plain,
        }
    }

    /// Whether the router has its certificate.
    pub fn is_ready(&self) -> bool {
        self.source.is_ready()
    }

    /// The router's current identity, if Consul has issued one.
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.source.tls().identity()
    }

    /// Waits for the router's certificate.
    pub async fn ready(&self) {
        self.source.ready().await;
    }

    /// The leaf and roots watches, for metrics and readiness details.
    pub fn watches(&self) -> [(&'static str, Arc<WatchStatus>); 2] {
        [
            ("connect_leaf", self.source.leaf_status()),
            ("connect_roots", self.source.roots_status()),
        ]
    }

    /// The rustls configuration of the router's own clients towards mesh nodes.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config.clone()
    }

    /// A TLS peer for the node at `address` that presents the router's certificate and trusts
    /// the Connect roots. The hostname is not checked (there is none to check);
    /// [`Self::check_server`] checks the SPIFFE ID instead.
    pub fn peer(&self, address: std::net::SocketAddr) -> Result<HttpPeer, MeshError> {
        let tls = self.pingora_tls()?;
        // The SNI is the nodes' service: rustls sends none for an IP, and Pingora verifies
        // nothing at all without one.
        let mut peer = HttpPeer::new(address, true, self.node_service.clone());
        peer.client_cert_key = Some(tls.cert_key.clone());
        peer.options.ca = Some(tls.roots.clone());
        peer.options.verify_cert = true;
        peer.options.verify_hostname = false;
        Ok(peer)
    }

    /// Checks, before a request is sent on a connection (new or pooled) to the node at
    /// `address`, that the certificate it presented (known by `digest`) is one of the nodes'
    /// service.
    pub async fn check_server(
        &self,
        address: &str,
        digest: Option<&Digest>,
    ) -> Result<(), MeshError> {
        let presented = digest
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|ssl| ssl.cert_digest.clone())
            .filter(|d| !d.is_empty())
            .ok_or_else(|| self.wrong_server("no certificate".to_owned()))?;
        let known = self
            .proven
            .lock()
            .expect("proven lock")
            .get(&presented)
            .cloned();
        let verdict = match known {
            Some(verdict) => verdict,
            None => self.prove(address, &presented).await?,
        };
        verdict.map_err(|reason| self.wrong_server(reason))
    }

    /// Connects to `address` with the router's own verifier (chain and SPIFFE ID) and records
    /// the verdict for the certificate seen, which must be the one Pingora's connection saw.
    async fn prove(
        &self,
        address: &str,
        presented: &[u8],
    ) -> Result<Result<(), String>, MeshError> {
        let seen = tokio::time::timeout(self.connect_timeout, self.handshake(address))
            .await
            .unwrap_or_else(|_| Err(format!("no handshake within {:?}", self.connect_timeout)));
        let (certificate, verdict) = match seen {
            Ok(certificate) => (certificate, Ok(())),
            // The handshake itself says why the certificate is not the nodes' service.
            Err(reason) => return Ok(Err(reason)),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, &certificate);
        if digest.as_ref() != presented {
            return Err(self.wrong_server(
                "a different certificate on a second connection (renewed meanwhile?)".to_owned(),
            ));
        }
        let mut proven = self.proven.lock().expect("proven lock");
        if proven.len() >= MAX_PROVEN {
            proven.clear();
        }
        proven.insert(presented.to_vec(), verdict.clone());
        Ok(verdict)
    }

    /// One TLS handshake with the node, returning its certificate once verified.
    async fn handshake(&self, address: &str) -> Result<Vec<u8>, String> {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let ip = tcp.peer_addr().map_err(|e| e.to_string())?.ip();
        let tls = TlsConnector::from(self.client_config.clone())
            .connect(ServerName::IpAddress(ip.into()), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, session) = tls.get_ref();
        session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| cert.as_ref().to_vec())
            .ok_or_else(|| "no certificate".to_owned())
    }

    fn wrong_server(&self, presented: String) -> MeshError {
        MeshError::WrongServer {
            presented,
            expected: self.node_service.clone(),
        }
    }

    /// The current identity converted for Pingora, rebuilt only when Consul issued a new one.
    fn pingora_tls(&self) -> Result<Arc<PingoraTls>, MeshError> {
        let identity = self.source.tls().identity().ok_or(MeshError::NoIdentity)?;
        if let Some(tls) = self.pingora_tls.load_full() {
            if Arc::ptr_eq(&tls.identity, &identity) {
                return Ok(tls);
            }
        }
        let tls = Arc::new(PingoraTls::new(identity));
        self.pingora_tls.store(Some(tls.clone()));
        Ok(tls)
    }
}

impl PingoraTls {
    fn new(identity: Arc<Identity>) -> Self {
        let chain = identity
            .certificate_chain()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect();
        let key = identity.private_key().secret_der().to_vec();
        let roots: Vec<WrappedX509> = identity
            .roots()
            .iter()
            .map(|root| WrappedX509::new(root.as_ref().to_vec(), parse_x509))
            .collect();
        Self {
            cert_key: Arc::new(CertKey::new(chain, key)),
            roots: Arc::from(roots.into_boxed_slice()),
            identity,
        }
    }
}
