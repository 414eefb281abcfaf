//! TLS to the nodes: an Ollama behind a TLS-terminating proxy (nginx in production, a small
//! rustls forwarder here) is reached over HTTPS by Pingora and by the router's own clients, with
//! the node's certificate verified against the configured CA; https:// static backends are
//! polled the same way.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use ollama_mesh_router::backend_tls::BackendTls;
use ollama_mesh_router::proxy::ProxySettings;
use ollama_mesh_router::static_fleet::{PollConfig, StaticBackend, StaticFleet};
use ollama_mesh_router::Fleet;
use ollama_mesh_test_support::SimNode;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

const MODEL: &str = "llama3.2:3b";

/// Terminates TLS with `leaf` on a free loopback port and forwards each connection to `node`,
/// as nginx in front of an Ollama would. Runs until the test's runtime stops.
async fn tls_forwarder(leaf: &Leaf, node: SocketAddr) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.cert.clone()], leaf.key.clone_key())
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A handshake the router refuses (an untrusted certificate) just ends here.
                let Ok(mut client) = acceptor.accept(client).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(node).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    addr
}

/// Settings reaching the nodes over TLS, trusting the CA in `ca_pem`.
fn tls_settings(dir: &Dir, ca_pem: &str) -> ProxySettings {
    let ca_file = dir.write("backend-ca.pem", ca_pem);
    ProxySettings {
        backend_tls: Some(BackendTls::load(Some(ca_file)).unwrap()),
        ..settings()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_behind_tls_are_proxied_and_gathered_with_verified_certificates() {
    let ca = Ca::new("backend test CA");
    let node = SimNode::with_models(&[MODEL]).await;
    let forwarder = tls_forwarder(&ca.leaf(&["127.0.0.1"]), node.addr()).await;
    let dir = Dir::new("backend-trusted");
    let router = Router::with_backend_tls(
        vec![entry("a", forwarder, &[MODEL], &[], 1)],
        tls_settings(&dir, &ca.pem),
    )
    .await;

    let chat = post(
        &router.url("/api/chat"),
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": false}),
    )
    .await;
    assert_eq!(chat.status, StatusCode::OK, "{:?}", chat.body);
    assert_eq!(chat.json()["done"], true);
    assert_eq!(
        requests_on(&node),
        1,
        "the chat went through the TLS forwarder"
    );

    // Gathered by the router's own client (fan-out), not by Pingora.
    let tags = call(Method::GET, &router.url("/api/tags"), "").await;
    assert_eq!(tags.status, StatusCode::OK);
    assert_eq!(tags.json()["models"][0]["name"], MODEL, "{:?}", tags.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_from_an_untrusted_ca_is_refused() {
    let ca = Ca::new("backend test CA");
    let node = SimNode::with_models(&[MODEL]).await;
    let forwarder = tls_forwarder(&ca.leaf(&["127.0.0.1"]), node.addr()).await;
    let dir = Dir::new("backend-untrusted");
    let other = Ca::new("some other CA");
    // No retry, so the answer is the failed handshake's own, not "every node was tried".
    let router = Router::with_backend_tls(
        vec![entry("a", forwarder, &[MODEL], &[], 1)],
        ProxySettings {
            schedule: ollama_mesh_router::schedule::ScheduleSettings {
                retries: 0,
                ..Default::default()
            },
            ..tls_settings(&dir, &other.pem)
        },
    )
    .await;

    let chat = post(
        &router.url("/api/chat"),
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": false}),
    )
    .await;
    assert_eq!(chat.status, StatusCode::BAD_GATEWAY, "{:?}", chat.body);
    assert_eq!(requests_on(&node), 0, "nothing reached the node");

    let tags = call(Method::GET, &router.url("/api/tags"), "").await;
    assert_eq!(
        tags.json()["models"].as_array().map_or(0, Vec::len),
        0,
        "an unverified node is left out of the fan-out: {:?}",
        tags.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_static_backends_are_polled_over_tls() {
    let ca = Ca::new("backend test CA");
    let node = SimNode::with_models(&[MODEL]).await;
    let forwarder = tls_forwarder(&ca.leaf(&["127.0.0.1"]), node.addr()).await;
    let dir = Dir::new("backend-static");
    let tls = BackendTls::load(Some(dir.write("backend-ca.pem", &ca.pem))).unwrap();
    let backend = StaticBackend::parse(&format!("https://{forwarder}")).unwrap();
    let id = backend.id().as_str().to_owned();
    let poll = PollConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
    };
    let fleet = StaticFleet::start(vec![backend], poll, Some(&tls));
    fleet.ready().await;
    let set = fleet.backends();
    let polled = set.get(&id).expect("listed");
    assert!(polled.state().accepts_new_work(), "{:?}", polled.state());
    assert!(polled.has_model(MODEL));
}
