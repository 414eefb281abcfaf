//! TLS termination on the main listener: the certificate and key (and, for mTLS, the CA that
//! client certificates must chain to), checked at start and reloaded when they change on disk.
//!
//! Pingora panics on files it cannot load, so everything is loaded and checked here first, with
//! an error naming the flag and the file. The certificate is then served through a resolver
//! that holds the current one, so a renewed certificate is picked up by new handshakes without
//! a restart or a dropped connection; a renewal that cannot be loaded (a half-written file, a
//! key that does not match) keeps the old certificate, with an error logged. HTTP/2 and
//! HTTP/1.1 are offered by ALPN; TLS 1.2 and 1.3 only (Pingora's choice).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ollama_mesh_daemon::AbortOnDrop;
use pingora::listeners::tls::TlsSettings;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::file_stamp::file_stamp;

/// How often the certificate and key files are checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// The files TLS is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// PEM private key (`--tls-key`).
    pub key: PathBuf,
    /// PEM CA bundle client certificates must chain to (`--tls-client-ca`); `None` asks for no
    /// client certificate.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no usable PEM.
    #[error("--{flag} {}: {message}", path.display())]
    File {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// TLS to the nodes is on, no `--backend-ca` is given, and the system has no usable root
    /// certificates to verify the nodes with.
    #[error("--backend-tls: no usable system root certificates ({message}); give --backend-ca")]
    NoSystemRoots {
        /// What the system's certificate store said.
        message: String,
    },
}

pub(crate) fn file_error(flag: &'static str, path: &Path, message: impl fmt::Display) -> TlsError {
    TlsError::File {
        flag,
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The checked TLS configuration of the listener.
pub struct ServerTls {
    certificate: Arc<CurrentCertificate>,
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.certificate.files)
            .field("mtls", &self.client_verifier.is_some())
            .finish()
    }
}

impl ServerTls {
    /// Loads and checks `files`.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let client_verifier = files
            .client_ca
            .as_deref()
            .map(client_verifier)
            .transpose()?;
        let certified = certified_key(&files.cert, &files.key)?;
        Ok(Self {
            certificate: Arc::new(CurrentCertificate {
                current: ArcSwap::from_pointee(certified),
                files,
            }),
            client_verifier,
        })
    }

    /// Pingora's settings for the listener: this certificate (as it is reloaded), the client
    /// verifier, and ALPN offering h2 then HTTP/1.1.
    pub fn settings(&self) -> TlsSettings {
        // Pingora ignores the paths once a resolver is set, and never opens them.
        let mut settings = TlsSettings::intermediate("", "")
            .expect("TLS settings are only built here, without I/O");
        settings.set_cert_resolver(self.certificate.clone());
        if let Some(verifier) = &self.client_verifier {
            settings.set_client_cert_verifier(verifier.clone());
        }
        settings.enable_h2();
        settings
    }

    /// Follows the certificate and key files, loading them again when either changes. Runs
    /// until the returned handle is dropped.
    pub fn follow_files(&self) -> AbortOnDrop<()> {
        let certificate = self.certificate.clone();
        AbortOnDrop::spawn(async move {
            let files = &certificate.files;
            let stamps = || (file_stamp(&files.cert), file_stamp(&files.key));
            let mut seen = stamps();
            let mut ticks = tokio::time::interval(POLL);
            loop {
                ticks.tick().await;
                let now = stamps();
                if now != seen {
                    seen = now;
                    certificate.reload();
                }
            }
        })
    }

    /// Loads the certificate and key again now (on SIGHUP, say).
    pub fn reload(&self) {
        self.certificate.reload();
    }
}

/// The certificate new handshakes get.
struct CurrentCertificate {
    current: ArcSwap<CertifiedKey>,
    files: TlsFiles,
}

impl fmt::Debug for CurrentCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurrentCertificate")
            .field("files", &self.files)
            .finish()
    }
}

impl CurrentCertificate {
    fn reload(&self) {
        match certified_key(&self.files.cert, &self.files.key) {
            Ok(certified) => {
                self.current.store(Arc::new(certified));
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                tracing::error!(%error, "TLS certificate not reloaded; the previous one stays in use")
            }
        }
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The certificate chain and key, checked to belong together.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = certificates("tls-cert", cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("tls-key", key, e))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| file_error("tls-key", key, e))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        file_error(
            "tls-key",
            key,
            format!("does not match the certificate in {}: {e}", cert.display()),
        )
    })?;
    Ok(certified)
}

/// Every PEM certificate in `path`, at least one.
pub(crate) fn certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| file_error(flag, path, e))?;
    if chain.is_empty() {
        return Err(file_error(flag, path, "no PEM certificate in the file"));
    }
    Ok(chain)
}

fn client_verifier(
    path: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates("tls-client-ca", path)? {
        roots
            .add(certificate)
            .map_err(|e| file_error("tls-client-ca", path, e))?;
    }
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| file_error("tls-client-ca", path, e))
}
