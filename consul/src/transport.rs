//! Connections to Consul over TCP, TLS or a Unix socket, as one hyper connector.
//!
//! The connector always dials the configured address and ignores the request URI's authority,
//! which is how a Unix socket can sit behind ordinary `http://` URIs.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{ConfigError, ConsulAddress, TlsSettings};

/// Dials the configured Consul address.
#[derive(Clone)]
pub(crate) struct Connector {
    target: Arc<Target>,
}

enum Target {
    Tcp {
        host: String,
        port: u16,
        tls: Option<(TlsConnector, ServerName<'static>)>,
    },
    Unix(PathBuf),
}

impl Connector {
    pub(crate) fn new(
        address: &ConsulAddress,
        tls: Option<&TlsSettings>,
    ) -> Result<Self, ConfigError> {
        let target = match address {
            ConsulAddress::Unix(path) => Target::Unix(path.clone()),
            ConsulAddress::Tcp { host, port, https } => {
                let tls = match (https, tls) {
                    (true, Some(settings)) => Some(tls_connector(host, settings)?),
                    (true, None) => Some(tls_connector(host, &default_tls())?),
                    (false, _) => None,
                };
                Target::Tcp {
                    host: host.clone(),
                    port: *port,
                    tls,
                }
            }
        };
        Ok(Self {
            target: Arc::new(target),
        })
    }

    async fn connect(target: Arc<Target>) -> io::Result<TokioIo<Stream>> {
        let stream = match &*target {
            Target::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
            Target::Tcp { host, port, tls } => {
                let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                match tls {
                    None => Stream::Tcp(tcp),
                    Some((connector, name)) => {
                        Stream::Tls(Box::new(connector.connect(name.clone(), tcp).await?))
                    }
                }
            }
        };
        Ok(TokioIo::new(stream))
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        Box::pin(Self::connect(self.target.clone()))
    }
}

fn default_tls() -> TlsSettings {
    TlsSettings {
        verify: true,
        ca_files: Vec::new(),
        client_identity: None,
        server_name: None,
    }
}

fn tls_connector(
    host: &str,
    settings: &TlsSettings,
) -> Result<(TlsConnector, ServerName<'static>), ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("CONSUL_HTTP_ADDR", format!("TLS setup failed: {e}")))?;
    let builder = if settings.verify {
        builder.with_root_certificates(root_store(&settings.ca_files)?)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::AcceptAnyServer(provider)))
    };
    let config = match &settings.client_identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs("CONSUL_CLIENT_CERT", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                ConfigError::new(
                    "CONSUL_CLIENT_KEY",
                    format!("{}: no usable private key: {e}", key.display()),
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ConfigError::new("CONSUL_CLIENT_CERT", e.to_string()))?
        }
    };
    let name = settings.server_name.as_deref().unwrap_or(host).to_owned();
    let server_name = ServerName::try_from(name.clone()).map_err(|_| {
        ConfigError::new(
            "CONSUL_TLS_SERVER_NAME",
            format!("{name:?} is not a valid TLS server name"),
        )
    })?;
    Ok((TlsConnector::from(Arc::new(config)), server_name))
}

fn root_store(ca_files: &[PathBuf]) -> Result<rustls::RootCertStore, ConfigError> {
    let mut store = rustls::RootCertStore::empty();
    if ca_files.is_empty() {
        let native = rustls_native_certs::load_native_certs();
        store.add_parsable_certificates(native.certs);
        return Ok(store);
    }
    for file in ca_files {
        for cert in read_certs("CONSUL_CACERT", file)? {
            store.add(cert).map_err(|e| {
                ConfigError::new(
                    "CONSUL_CACERT",
                    format!("{}: unusable CA certificate: {e}", file.display()),
                )
            })?;
        }
    }
    Ok(store)
}

fn read_certs(
    field: &'static str,
    file: &PathBuf,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect())
        .map_err(|e| ConfigError::new(field, format!("{}: {e}", file.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            field,
            format!("{}: no PEM certificates found", file.display()),
        ));
    }
    Ok(certs)
}

/// `CONSUL_HTTP_SSL_VERIFY=false`: accept any server certificate, as Consul's own client does.
mod insecure {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    pub(super) struct AcceptAnyServer(pub(super) Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAnyServer {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

/// One connection to Consul.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

macro_rules! delegate {
    ($self:ident, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            Stream::Tcp($stream) => {
                let $stream = Pin::new($stream);
                $call
            }
            Stream::Tls($stream) => {
                let $stream = Pin::new($stream.as_mut());
                $call
            }
            Stream::Unix($stream) => {
                let $stream = Pin::new($stream);
                $call
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}
