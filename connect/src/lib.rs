//! Consul Connect for Connect-native ollama-mesh services: the sidecar, which puts a node's
//! Ollama behind mutual TLS, and the router, which reaches nodes through it.
//!
//! This crate knows nothing of HTTP proxies; it turns what the local Consul agent issues into
//! rustls configurations and decisions.
//!
//! # Layout
//!
//! * [`spiffe`]: Connect identities (`spiffe://<trust-domain>/ns/…/svc/<service>`).
//! * [`identity`]: one service's leaf certificate and the CA roots, checked and ready for rustls.
//! * [`source`]: follows the leaf and the roots with blocking queries and publishes each new
//!   [`Identity`] to a [`MeshTls`].
//! * [`tls`]: [`MeshTls`], the rustls server and client configurations that always present the
//!   current certificate and trust the current roots, so renewals and CA rotations need no
//!   restart and drop no connection; peers are verified by SPIFFE ID, never by hostname.
//! * [`peer`]: the identity a peer proved in the handshake.
//! * [`authorize`]: asks the agent whether a client may connect (intentions), with a short
//!   cache, and announces intention changes so open connections can be judged again.
//! * [`metrics`]: handshakes, denials by source, certificate expiry.

pub mod authorize;
pub mod identity;
pub mod metrics;
pub mod peer;
pub mod source;
pub mod spiffe;
pub mod tls;

pub use authorize::{Authorizer, Decision};
pub use identity::Identity;
pub use peer::PeerIdentity;
pub use source::IdentitySource;
pub use spiffe::{ServiceId, SpiffeError};
pub use tls::MeshTls;

/// Why a certificate from Consul or a peer cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// Not DER the parser understands.
    #[error("unreadable certificate: {0}")]
    Unreadable(String),
    /// No `spiffe://` URI SAN: not a Connect certificate.
    #[error("the certificate has no SPIFFE ID")]
    NoSpiffeId,
    /// A SPIFFE ID, but not a service's.
    #[error(transparent)]
    Spiffe(#[from] SpiffeError),
    /// PEM that holds no certificate or no usable key.
    #[error("{what}: {message}")]
    Pem {
        /// Which PEM (the leaf, its key, a root).
        what: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the key or the roots.
    #[error("{0}")]
    Rustls(String),
}
