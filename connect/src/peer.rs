//! What a Connect certificate says about its holder: the SPIFFE ID in its URI SAN, its serial
//! (the agent's authorize call takes both) and its expiry.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::ServiceId;
use crate::CertificateError;

/// The identity a peer proved in the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The service the certificate was issued to.
    pub service: ServiceId,
    /// The certificate's serial as colon-separated hex, as Consul writes serials.
    pub serial: String,
}

/// The parts of a certificate ollama-mesh reads.
pub(crate) struct CertificateFacts {
    pub(crate) spiffe_uri: Option<String>,
    pub(crate) serial: String,
    pub(crate) not_after: SystemTime,
}

impl CertificateFacts {
    pub(crate) fn read(der: &CertificateDer<'_>) -> Result<Self, CertificateError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| CertificateError::Unreadable(e.to_string()))?;
        let spiffe_uri = cert
            .subject_alternative_name()
            .map_err(|e| CertificateError::Unreadable(e.to_string()))?
            .and_then(|san| {
                san.value.general_names.iter().find_map(|name| match name {
                    GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                        Some((*uri).to_owned())
                    }
                    _ => None,
                })
            });
        let serial = cert
            .raw_serial()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let not_after = u64::try_from(cert.validity().not_after.timestamp())
            .map_or(SystemTime::UNIX_EPOCH, |secs| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
            });
        Ok(Self {
            spiffe_uri,
            serial,
            not_after,
        })
    }
}

impl PeerIdentity {
    /// Reads the identity in a peer's end-entity certificate (already verified against the
    /// roots by the handshake).
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<Self, CertificateError> {
        let facts = CertificateFacts::read(der)?;
        let uri = facts.spiffe_uri.ok_or(CertificateError::NoSpiffeId)?;
        Ok(Self {
            service: ServiceId::parse(&uri)?,
            serial: facts.serial,
        })
    }
}
