//! TLS on the main listener, over real TLS with a CA made in the test: HTTP/1.1 and h2 by ALPN,
//! client certificates (mTLS), a certificate rotated while a stream runs, and clear errors for
//! unusable files.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ollama_mesh_router::tls::{ServerTls, TlsFiles};
use ollama_mesh_sim::NodeSpec;
use ollama_mesh_test_support::SimNode;
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

fn server_files(dir: &Dir, leaf: &Leaf, client_ca: Option<&Ca>) -> TlsFiles {
    TlsFiles {
        cert: dir.write("cert.pem", &leaf.cert_pem),
        key: dir.write("key.pem", &leaf.key_pem),
        client_ca: client_ca.map(|ca| dir.write("client-ca.pem", &ca.pem)),
    }
}

/// A TLS connection to the router trusting `ca`, offering `alpn`, with `client` as the client
/// certificate.
async fn connect(
    router: &Router,
    ca: &Ca,
    alpn: &[u8],
    client: Option<&Leaf>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.cert.clone()], leaf.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(router.addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// One request over HTTP/1.1 on `stream`.
async fn h1(stream: TlsStream<TcpStream>, request: Request<Full<Bytes>>) -> hyper::Result<Answer> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn fleet() -> (SimNode, Vec<ollama_mesh_consul::health::ServiceEntry>) {
    let a = SimNode::start(
        NodeSpec::default()
            .models(["llama3.2:3b"])
            .time_scale(1.0)
            .output_tokens(1000),
    )
    .await;
    let entries = vec![entry("a", a.addr(), &["llama3.2:3b"], &[], 1)];
    (a, entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_and_h2_by_alpn() {
    let (_a, entries) = fleet().await;
    let ca = Ca::new("test ca");
    let dir = Dir::new("alpn");
    let tls = ServerTls::load(server_files(&dir, &ca.leaf(&["localhost"]), None)).unwrap();
    let router = Router::with_tls(entries, settings(), Arc::new(tls)).await;

    let stream = connect(&router, &ca, b"http/1.1", None).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let version = h1(stream, get("/api/version")).await.unwrap();
    assert_eq!(version.status, StatusCode::OK);
    assert_eq!(version.json(), json!({"version": "0.17.4"}));

    let stream = connect(&router, &ca, b"h2", None).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get("https://localhost/api/tags")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let tags: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(tags["models"][0]["name"], "llama3.2:3b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_a_client_ca_is_given() {
    let (_a, entries) = fleet().await;
    let ca = Ca::new("server ca");
    let clients = Ca::new("client ca");
    let strangers = Ca::new("another ca");
    let dir = Dir::new("mtls");
    let files = server_files(&dir, &ca.leaf(&["localhost"]), Some(&clients));
    let router = Router::with_tls(
        entries,
        settings(),
        Arc::new(ServerTls::load(files).unwrap()),
    )
    .await;

    let trusted = clients.leaf(&["client"]);
    let stream = connect(&router, &ca, b"http/1.1", Some(&trusted))
        .await
        .unwrap();
    assert_eq!(h1(stream, get("/")).await.unwrap().status, StatusCode::OK);

    let untrusted = strangers.leaf(&["client"]);
    for client in [None, Some(&untrusted)] {
        // With TLS 1.3 the server's refusal arrives after the client's handshake completes.
        let refused = match connect(&router, &ca, b"http/1.1", client).await {
            Err(_) => true,
            Ok(stream) => h1(stream, get("/")).await.is_err(),
        };
        assert!(
            refused,
            "a client with {:?} was let in",
            client.map(|_| "a stranger's certificate")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_while_running_streams_go_on() {
    let (_a, entries) = fleet().await;
    let ca = Ca::new("rotating ca");
    let dir = Dir::new("rotate");
    let first = ca.leaf(&["localhost"]);
    let tls = Arc::new(ServerTls::load(server_files(&dir, &first, None)).unwrap());
    let _following = tls.follow_files();
    let router = Router::with_tls(entries, settings(), tls).await;
    let peer =
        |stream: &TlsStream<TcpStream>| stream.get_ref().1.peer_certificates().unwrap()[0].clone();

    let stream = connect(&router, &ca, b"http/1.1", None).await.unwrap();
    assert_eq!(peer(&stream), first.cert);
    let generate = Request::post("/api/generate")
        .header("host", "localhost")
        .body(Full::new(Bytes::from(
            json!({"model": "llama3.2:3b", "prompt": "hi", "options": {"num_predict": 800}})
                .to_string(),
        )))
        .unwrap();
    let running = tokio::spawn(h1(stream, generate));

    let second = ca.leaf(&["localhost"]);
    server_files(&dir, &second, None);
    let started = Instant::now();
    loop {
        let stream = connect(&router, &ca, b"http/1.1", None).await.unwrap();
        if peer(&stream) == second.cert {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new certificate was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!running.is_finished(), "the stream outlived the rotation");
    let answer = running.await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.last_line()["done"],
        true,
        "the stream ran to its end"
    );

    // A broken renewal keeps the current certificate.
    dir.write("cert.pem", "not a certificate");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stream = connect(&router, &ca, b"http/1.1", None).await.unwrap();
    assert_eq!(peer(&stream), second.cert);
}

#[test]
fn unusable_files_are_errors_naming_the_flag_and_the_file() {
    let ca = Ca::new("errors ca");
    let dir = Dir::new("errors");
    let leaf = ca.leaf(&["localhost"]);
    let other = ca.leaf(&["localhost"]);
    let good = server_files(&dir, &leaf, None);
    let error = |files: TlsFiles| ServerTls::load(files).unwrap_err().to_string();
    let missing = Path::new("/nonexistent/cert.pem").to_owned();

    let message = error(TlsFiles {
        cert: missing.clone(),
        ..good.clone()
    });
    assert!(
        message.starts_with("--tls-cert /nonexistent/cert.pem: "),
        "{message}"
    );
    let message = error(TlsFiles {
        cert: dir.write("empty.pem", ""),
        ..good.clone()
    });
    assert!(message.contains("no PEM certificate"), "{message}");
    let message = error(TlsFiles {
        key: dir.write("other-key.pem", &other.key_pem),
        ..good.clone()
    });
    assert!(
        message.starts_with("--tls-key ") && message.contains("does not match"),
        "{message}"
    );
    let message = error(TlsFiles {
        client_ca: Some(missing),
        ..good
    });
    assert!(message.starts_with("--tls-client-ca "), "{message}");
}
