//! One service's Connect identity: its leaf certificate and key, and the CA roots it trusts,
//! checked and turned into what rustls needs once, when Consul issues them, rather than on
//! every handshake.

use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use ollama_mesh_consul::connect::{CaRoots, LeafCert};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::peer::CertificateFacts;
use crate::spiffe::ServiceId;
use crate::CertificateError;

/// The crypto both sides of the mesh use (ring, as the rest of ollama-mesh).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    PROVIDER.clone()
}

/// A leaf certificate with its key and the roots that verify peers.
pub struct Identity {
    service: ServiceId,
    serial: String,
    expires_at: SystemTime,
    trust_domain: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
    pub(crate) certified_key: Arc<CertifiedKey>,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    pub(crate) server_verifier: Arc<WebPkiServerVerifier>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("service", &self.service.uri())
            .field("serial", &self.serial)
            .field("expires_at", &self.expires_at)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Checks and prepares `leaf` (which may carry intermediates after its certificate) and
    /// every root in `roots`, active or not: during a CA rotation peers still hold leaves of
    /// the old root.
    pub fn new(leaf: &LeafCert, roots: &CaRoots) -> Result<Self, CertificateError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| pem_error("the leaf certificate", e))?;
        let first = chain.first().ok_or_else(|| CertificateError::Pem {
            what: "the leaf certificate",
            message: "no certificate in CertPEM".to_owned(),
        })?;
        let facts = CertificateFacts::read(first)?;
        let service = ServiceId::parse(
            facts
                .spiffe_uri
                .as_deref()
                .ok_or(CertificateError::NoSpiffeId)?,
        )?;
        let key = PrivateKeyDer::from_pem_slice(leaf.private_key_pem.as_bytes())
            .map_err(|e| pem_error("the leaf's private key", e))?;
        let provider = provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| CertificateError::Rustls(e.to_string()))?;

        let mut store = RootCertStore::empty();
        let mut root_certificates = Vec::new();
        for root in &roots.roots {
            for certificate in CertificateDer::pem_slice_iter(root.root_cert.as_bytes()) {
                let certificate = certificate.map_err(|e| pem_error("a CA root", e))?;
                store
                    .add(certificate.clone())
                    .map_err(|e| CertificateError::Rustls(e.to_string()))?;
                root_certificates.push(certificate);
            }
        }
        if store.is_empty() {
            return Err(CertificateError::Pem {
                what: "the CA roots",
                message: "Consul listed no root".to_owned(),
            });
        }
        let store = Arc::new(store);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone())
                .build()
                .map_err(|e| CertificateError::Rustls(e.to_string()))?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(store.clone(), provider)
            .build()
            .map_err(|e| CertificateError::Rustls(e.to_string()))?;
        Ok(Self {
            service,
            serial: facts.serial,
            expires_at: facts.not_after,
            trust_domain: roots.trust_domain.clone(),
            roots: root_certificates,
            certified_key: Arc::new(CertifiedKey::new(chain.clone(), signing_key)),
            chain,
            key,
            client_verifier,
            server_verifier,
        })
    }

    /// Who this identity is.
    pub fn service(&self) -> &ServiceId {
        &self.service
    }

    /// The leaf's serial, colon-separated hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When the leaf expires (the agent renews it well before).
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// The mesh's trust domain, which every peer's SPIFFE ID must be in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// How many roots are trusted (two during a CA rotation).
    pub fn root_count(&self) -> usize {
        self.roots.len()
    }

    /// The leaf and any intermediates, for TLS stacks configured with DER (Pingora's).
    pub fn certificate_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf's private key, for TLS stacks configured with DER.
    pub fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// Every trusted root, for TLS stacks configured with DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}

fn pem_error(what: &'static str, error: rustls_pki_types::pem::Error) -> CertificateError {
    CertificateError::Pem {
        what,
        message: error.to_string(),
    }
}
