//! Mesh mode against a real `consul agent -dev`: real Connect certificates, real intentions,
//! real TLS from a client holding the router's identity, and a simulated Ollama behind it.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{all_passing, args, client, entry, two_rtx_4090, until, Running, ID};
use ollama_mesh_connect::{IdentitySource, PeerIdentity};
use ollama_mesh_consul::health::CheckStatus;
use ollama_mesh_consul::watch::WatchConfig;
use ollama_mesh_consul::{Client, QueryOptions};
use ollama_mesh_sim::NodeSpec;
use ollama_mesh_test_support::{free_port, ConsulDev, SimNode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, pki_types};
use tokio_rustls::TlsConnector;

const ROUTER: &str = "ollama-mesh-router";
const MODEL: &str = "llama3.2:3b";

/// A sidecar in mesh mode in front of a simulator, and a client holding the router's identity.
struct MeshNode {
    consul: ConsulDev,
    client: Client,
    node: SimNode,
    mesh: SocketAddr,
    metrics: SocketAddr,
    router: IdentitySource,
    sidecar: Running,
}

/// A simulator generating 20 tokens a second in real time, so a stream arrives in pieces.
fn streaming_node() -> NodeSpec {
    NodeSpec::from_toml(&format!(
        "time_scale = 1.0\n[[models]]\nname = \"{MODEL}\"\ndecode_tps = 20\n\
         [scheduler]\ndisk_speed = \"1000GB\""
    ))
    .unwrap()
}

async fn start() -> MeshNode {
    let consul = ConsulDev::start().await;
    let node = SimNode::start(streaming_node()).await;
    let mesh = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sidecar = Running::start(&args(
        &consul.http_url(),
        &node.url(),
        &two_rtx_4090(),
        &[
            "--mesh",
            &format!("--mesh-listen={mesh}"),
            &format!("--metrics-listen={metrics}"),
        ],
    ));
    let client = client(&consul);
    until(&client, Duration::from_secs(15), all_passing).await;
    let router = identity(&consul, ROUTER).await;
    MeshNode {
        consul,
        client,
        node,
        mesh,
        metrics,
        router,
        sidecar,
    }
}

/// Follows `service`'s Connect identity and waits for the first one.
async fn identity(consul: &ConsulDev, service: &str) -> IdentitySource {
    let source = IdentitySource::start(client(consul), service, WatchConfig::default());
    tokio::time::timeout(Duration::from_secs(10), source.ready())
        .await
        .unwrap_or_else(|_| panic!("no identity for {service} within 10 s"));
    source
}

impl MeshNode {
    /// A TLS connection to the mesh port as `client` (which verifies the server is `ollama`).
    async fn connect_as(&self, client: &IdentitySource) -> io::Result<TlsStream<TcpStream>> {
        tls_connect(client.tls().client_config("ollama"), self.mesh).await
    }

    async fn metrics_text(&self) -> String {
        let (status, text) = ollama_mesh_test_support::http::get(self.metrics, "/metrics")
            .await
            .expect("/metrics answers");
        assert_eq!(status, 200);
        text
    }
}

async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = pki_types::ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(config).connect(name, tcp).await
}

/// Sends `request` and reads until the server closes; `Err` if the connection fails first.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &str,
) -> io::Result<String> {
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// Reads one response with a `Content-Length` body, leaving the connection open.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(u16, String)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .expect("a Content-Length");
            if data.len() >= end + 4 + length {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]);
                return Ok((status, body.into_owned()));
            }
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..n]);
    }
}

fn get_version(connection: &str) -> String {
    format!("GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n")
}

fn generate(num_predict: u32) -> String {
    let body = format!(
        r#"{{"model":"{MODEL}","prompt":"hello","stream":true,"options":{{"num_predict":{num_predict}}}}}"#
    );
    format!(
        "POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Whether the server refused: the connection failed or closed without an HTTP answer.
async fn refused<S: AsyncRead + AsyncWrite + Unpin>(stream: io::Result<S>) -> bool {
    let Ok(mut stream) = stream else {
        return true;
    };
    match tokio::time::timeout(
        Duration::from_secs(5),
        exchange(&mut stream, &get_version("close")),
    )
    .await
    {
        Ok(Ok(answer)) => !answer.starts_with("HTTP/"),
        Ok(Err(_)) => true,
        Err(_) => panic!("the server neither answered nor closed within 5 s"),
    }
}

/// The serial of the certificate the server presents to a new connection.
async fn server_serial(mesh: &MeshNode) -> io::Result<String> {
    let stream = mesh.connect_as(&mesh.router).await?;
    let certificate = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok(PeerIdentity::from_certificate(&certificate).unwrap().serial)
}

fn in_flight(node: &SimNode) -> u64 {
    node.sim().stats()["requests_in_flight"].as_u64().unwrap()
}

#[tokio::test]
async fn registers_connect_native_on_the_mesh_port_and_checks_ollama_on_loopback() {
    let mesh = start().await;
    let entry = entry(&mesh.client).await.unwrap();
    assert!(entry.service.connect.native, "{:?}", entry.service.connect);
    assert_eq!(entry.service.port, mesh.mesh.port());
    let listed = mesh
        .client
        .health_connect("ollama", &QueryOptions::default())
        .await
        .unwrap()
        .value;
    assert!(
        listed.iter().any(|e| e.service.id == ID),
        "not in /v1/health/connect/ollama: {listed:#?}"
    );

    // The agent's own HTTP check (not the status the sidecar registered it with) reaches
    // Ollama on loopback, around the mesh.
    let check = format!("{ID}:ollama");
    let started = Instant::now();
    loop {
        let checks = mesh.client.agent_checks().await.unwrap();
        let ollama = &checks[&check];
        if ollama.status == CheckStatus::Passing && ollama.output.contains("200 OK") {
            assert!(
                ollama.output.contains(&mesh.node.url()),
                "{}",
                ollama.output
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the agent's check did not pass: {ollama:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The mesh keeps serving through the drain period (1 s here) and closes with the sidecar.
    let MeshNode {
        sidecar,
        router,
        mesh: addr,
        ..
    } = mesh;
    let stopping = tokio::spawn(sidecar.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut stream = tls_connect(router.tls().client_config("ollama"), addr)
        .await
        .expect("the mesh serves while draining");
    let answer = exchange(&mut stream, &get_version("close")).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stopping.await.unwrap().expect("clean exit");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the mesh port is closed once the sidecar has stopped"
    );
}

#[tokio::test]
async fn a_connect_client_reaches_ollama_and_streams_through_the_mesh() {
    let mesh = start().await;
    let mut stream = mesh.connect_as(&mesh.router).await.unwrap();
    let answer = exchange(&mut stream, &get_version("close")).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""version""#), "{answer}");

    // 12 tokens at 20 a second: the pieces must arrive as they are generated, not at the end.
    let mut stream = mesh.connect_as(&mesh.router).await.unwrap();
    stream.write_all(generate(12).as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the stream keeps moving")
            .unwrap();
        if n == 0 {
            break;
        }
        arrivals.push(Instant::now());
        response.extend_from_slice(&buf[..n]);
    }
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""done":true"#), "{response}");
    assert!(
        arrivals.len() >= 4,
        "{} reads for a 12-token stream",
        arrivals.len()
    );
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= Duration::from_millis(200),
        "the stream arrived at once ({spread:?}): buffered"
    );

    // A client hanging up mid-stream reaches Ollama, which stops generating.
    let mut stream = mesh.connect_as(&mesh.router).await.unwrap();
    stream
        .write_all(generate(100_000).as_bytes())
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the stream starts")
        .unwrap();
    assert!(n > 0);
    assert_eq!(in_flight(&mesh.node), 1);
    drop(stream);
    let started = Instant::now();
    while in_flight(&mesh.node) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "Ollama still generating 2 s after the client hung up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn refuses_plain_http_strangers_and_denied_services() {
    let mesh = start().await;
    mesh.consul
        .set_intentions("ollama", &[("intruder", "deny")])
        .await;

    // Plain HTTP on the mesh port.
    assert!(
        refused(TcpStream::connect(mesh.mesh).await).await,
        "plain HTTP"
    );

    // TLS without a client certificate.
    let anonymous = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    assert!(
        refused(tls_connect(Arc::new(anonymous), mesh.mesh).await).await,
        "no client certificate"
    );

    // A self-signed certificate claiming to be the router.
    let trust_domain = mesh
        .router
        .tls()
        .identity()
        .unwrap()
        .trust_domain()
        .to_owned();
    let forged = forged_router_config(&format!(
        "spiffe://{trust_domain}/ns/default/dc/dc1/svc/{ROUTER}"
    ));
    assert!(
        refused(tls_connect(forged, mesh.mesh).await).await,
        "self-signed router certificate"
    );

    // A real certificate of the mesh, for a service the intentions deny.
    let intruder = identity(&mesh.consul, "intruder").await;
    assert!(
        refused(mesh.connect_as(&intruder).await).await,
        "denied by intentions"
    );
    let metrics = mesh.metrics_text().await;
    assert!(
        metrics.contains(r#"ollama_mesh_connect_denied_total{source="intruder"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ollama_mesh_connect_handshakes_total{result="failed",side="server"}"#),
        "{metrics}"
    );

    // The router is still welcome.
    let mut stream = mesh.connect_as(&mesh.router).await.unwrap();
    let answer = exchange(&mut stream, &get_version("close")).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_deny_intention_closes_open_keep_alive_connections_and_allow_reopens() {
    let mesh = start().await;
    let mut pooled = mesh.connect_as(&mesh.router).await.unwrap();
    pooled
        .write_all(get_version("keep-alive").as_bytes())
        .await
        .unwrap();
    let (status, _) = read_response(&mut pooled).await.unwrap();
    assert_eq!(status, 200);

    mesh.consul
        .set_intentions("ollama", &[(ROUTER, "deny")])
        .await;
    let denied_at = Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(2), pooled.read(&mut buf))
        .await
        .expect("the open connection is closed within 2 s of the deny");
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "data instead of a close: {closed:?}"
    );
    eprintln!("closed {:?} after the deny", denied_at.elapsed());
    assert!(
        refused(mesh.connect_as(&mesh.router).await).await,
        "new connections are refused"
    );

    mesh.consul
        .set_intentions("ollama", &[(ROUTER, "allow")])
        .await;
    let started = Instant::now();
    loop {
        let mut stream = mesh.connect_as(&mesh.router).await.unwrap();
        match exchange(&mut stream, &get_version("close")).await {
            Ok(answer) if answer.starts_with("HTTP/1.1 200") => break,
            other => assert!(
                started.elapsed() < Duration::from_secs(5),
                "still refused 5 s after allow: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_ca_rotation_keeps_running_streams_and_new_connections_get_the_new_leaf() {
    let mesh = start().await;
    let before = server_serial(&mesh).await.unwrap();

    // A stream far longer than the test, read in the background.
    let mut stream = mesh.connect_as(&mesh.router).await.unwrap();
    stream
        .write_all(generate(100_000).as_bytes())
        .await
        .unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return "the stream ended".to_owned(),
                Ok(n) => counter.fetch_add(n, Ordering::SeqCst),
                Err(error) => return format!("the stream failed: {error}"),
            };
        }
    });
    let started = Instant::now();
    while received.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stream did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    mesh.consul.rotate_ca(&key).await;
    // Agents re-issue leaves at a random moment within 30 s of a rotation.
    let started = Instant::now();
    let after = loop {
        if let Ok(serial) = server_serial(&mesh).await {
            if serial != before {
                break serial;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "no new server certificate within 45 s of the rotation"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("new leaf {after} after {:?}", started.elapsed());

    let at_new_leaf = received.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !reader.is_finished(),
        "{}",
        reader.await.unwrap_or_else(|e| e.to_string())
    );
    assert!(
        received.load(Ordering::SeqCst) > at_new_leaf,
        "the stream stalled after the rotation"
    );
    reader.abort();
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client presenting a self-signed certificate with `spiffe_id`, trusting any server.
fn forged_router_config(spiffe_id: &str) -> Arc<rustls::ClientConfig> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe_id.try_into().unwrap())];
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = params.self_signed(&key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(
            vec![certificate.der().clone()],
            pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Arc::new(config)
}

/// Trusts any server, so the refusals tested are the server's, not the client's.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &pki_types::CertificateDer<'_>,
        _intermediates: &[pki_types::CertificateDer<'_>],
        _server_name: &pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &ring().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &ring().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        ring().signature_verification_algorithms.supported_schemes()
    }
}
