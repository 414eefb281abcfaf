//! rustls configurations for the mesh that never need rebuilding: the certificate presented
//! and the roots trusted are looked up in the current [`Identity`] at each handshake, so a
//! renewed leaf or a rotated CA applies to the next connection while open ones carry on.
//!
//! Peers are verified by chain to the Connect roots and by SPIFFE ID; Connect certificates
//! carry no DNS name, so hostname checks are skipped (and only those).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError as TlsCertificateError, ClientConfig, DigitallySignedStruct,
    DistinguishedName, Error as TlsError, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::{provider, Identity};
use crate::peer::PeerIdentity;

/// The current identity of one Connect-native service, shared by every configuration built
/// from it. Cloning shares it.
#[derive(Clone, Default)]
pub struct MeshTls {
    current: Arc<ArcSwapOption<Identity>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("identity", &self.identity())
            .finish()
    }
}

impl MeshTls {
    /// The identity handshakes use now; `None` until Consul has issued one.
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.current.load_full()
    }

    /// Makes `identity` the one every later handshake uses.
    pub fn set(&self, identity: Identity) {
        self.current.store(Some(Arc::new(identity)));
    }

    /// A server configuration that demands a client certificate chained to the Connect roots
    /// and carrying a service's SPIFFE ID. Whether that service may connect is the caller's
    /// question (see [`crate::Authorizer`]).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_client_cert_verifier(Arc::new(ClientVerifier(self.clone())))
            .with_cert_resolver(Arc::new(CurrentCertificate(self.clone())));
        Arc::new(config)
    }

    /// A client configuration that presents this identity and accepts only servers whose
    /// certificate chains to the Connect roots and names `server_service`.
    pub fn client_config(&self, server_service: impl Into<String>) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                tls: self.clone(),
                service: server_service.into(),
            }))
            .with_client_cert_resolver(Arc::new(CurrentCertificate(self.clone())));
        Arc::new(config)
    }

    fn require(&self) -> Result<Arc<Identity>, TlsError> {
        self.identity()
            .ok_or_else(|| TlsError::General("no Connect certificate from Consul yet".to_owned()))
    }
}

/// The peer's identity, which must be a service of this mesh.
fn peer_in_mesh(
    identity: &Identity,
    end_entity: &CertificateDer<'_>,
) -> Result<PeerIdentity, TlsError> {
    let peer = PeerIdentity::from_certificate(end_entity)
        .map_err(|e| TlsError::General(format!("peer certificate: {e}")))?;
    if peer.service.trust_domain() != identity.trust_domain() {
        return Err(TlsError::General(format!(
            "peer {} is not in trust domain {}",
            peer.service,
            identity.trust_domain()
        )));
    }
    Ok(peer)
}

/// Presents the current leaf, as server and as client.
#[derive(Debug)]
struct CurrentCertificate(MeshTls);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.identity().map(|i| i.certified_key.clone())
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.identity().map(|i| i.certified_key.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.identity().is_some()
    }
}

/// Verifies clients against the current roots and requires a service SPIFFE ID.
#[derive(Debug)]
struct ClientVerifier(MeshTls);

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The roots change under a shared configuration; Connect clients hold one leaf anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let identity = self.0.require()?;
        identity
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        peer_in_mesh(&identity, end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        signatures::verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        signatures::verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes()
    }
}

/// Verifies a server against the current roots and its SPIFFE ID against the expected service.
#[derive(Debug)]
struct ServerVerifier {
    tls: MeshTls,
    service: String,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let identity = self.tls.require()?;
        // The chain is checked before the name, so a name mismatch means the chain is good.
        match identity.server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(TlsError::InvalidCertificate(
                TlsCertificateError::NotValidForName
                | TlsCertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(error) => return Err(error),
        }
        let peer = peer_in_mesh(&identity, end_entity)?;
        if peer.service.service() != self.service {
            return Err(TlsError::General(format!(
                "the server is {}, not service {:?}",
                peer.service, self.service
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        signatures::verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        signatures::verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes()
    }
}

/// Handshake signatures, checked with the mesh's provider by both verifiers.
mod signatures {
    use super::*;

    pub(super) fn verify_tls12(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algorithms = &provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    pub(super) fn verify_tls13(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algorithms = &provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    pub(super) fn schemes() -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
