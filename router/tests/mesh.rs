//! The router in the service mesh, against a real `consul agent -dev` and its Connect CA: nodes
//! here are simulators behind a minimal Connect-native TLS terminator (the sidecar's own mesh
//! listener, with authorization, is tested in the sidecar crate; the two together in
//! `scripts/conformance`).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use ollama_mesh_connect::{IdentitySource, PeerIdentity};
use ollama_mesh_consul::agent::ConnectSettings;
use ollama_mesh_consul::watch::WatchConfig;
use ollama_mesh_router::backend::Reach;
use ollama_mesh_router::mesh::MeshClient;
use ollama_mesh_router::mesh::MeshSettings;
use ollama_mesh_router::proxy::ProxySettings;
use ollama_mesh_router::Discovery;
use ollama_mesh_sim::NodeSpec;
use ollama_mesh_test_support::{ConsulDev, SimNode};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

const MODEL: &str = "llama3.2:3b";

/// A Connect-native node: TLS with `service`'s leaf in front of `ollama`, reporting the
/// identity of every client that connects.
struct ConnectNode {
    addr: SocketAddr,
    clients: mpsc::UnboundedReceiver<PeerIdentity>,
    _identity: IdentitySource,
}

impl ConnectNode {
    async fn start(consul: &ConsulDev, service: &str, ollama: SocketAddr) -> Self {
        let identity =
            IdentitySource::start(consul_client(consul), service, WatchConfig::default());
        tokio::time::timeout(Duration::from_secs(10), identity.ready())
            .await
            .expect("a node certificate");
        let acceptor = TlsAcceptor::from(identity.tls().server_config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, clients) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let cert = &tls.get_ref().1.peer_certificates().unwrap()[0];
                    let _ = seen.send(PeerIdentity::from_certificate(cert).unwrap());
                    let mut upstream = TcpStream::connect(ollama).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        Self {
            addr,
            clients,
            _identity: identity,
        }
    }
}

/// Registers an instance at `addr`, Connect-native or not.
async fn register(consul: &ConsulDev, id: &str, addr: SocketAddr, native: bool) {
    let mut registration = sidecar_registration(id, addr, &[MODEL]);
    registration.connect = native.then_some(ConnectSettings { native: true });
    consul_client(consul)
        .register_service(&registration)
        .await
        .unwrap();
}

/// A router in the mesh over the instances registered in `consul`, once it sees `instances`.
async fn mesh_router(
    consul: &ConsulDev,
    instances: usize,
) -> (Router, Arc<Discovery>, Arc<MeshClient>) {
    let settings = MeshSettings {
        service: "ollama-mesh-router".into(),
        allow_plain: false,
    };
    let mesh = Arc::new(MeshClient::start(
        consul_client(consul),
        &settings,
        "ollama",
        Duration::from_secs(1),
    ));
    let discovery = Arc::new(Discovery::start(
        consul_client(consul),
        "ollama",
        WatchConfig::default(),
        Some(mesh.clone()),
    ));
    tokio::time::timeout(Duration::from_secs(10), async {
        discovery.ready().await;
        while discovery.backends().len() < instances {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the router sees the fleet and has its certificate");
    let router = Router::with_fleet(
        discovery.clone(),
        ProxySettings {
            mesh: Some(mesh.clone()),
            ..settings_for_mesh()
        },
    )
    .await;
    (router, discovery, mesh)
}

fn settings_for_mesh() -> ProxySettings {
    ProxySettings {
        schedule: ollama_mesh_router::schedule::ScheduleSettings {
            retries: 1,
            ..Default::default()
        },
        ..settings()
    }
}

fn generate(stream: bool, num_predict: u32) -> String {
    json!({"model": MODEL, "prompt": "hi", "stream": stream, "options": {"num_predict": num_predict}})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_connect_native_nodes_over_mtls_and_plain_nodes_are_skipped() {
    let consul = ConsulDev::start().await;
    let meshed = SimNode::with_models(&[MODEL]).await;
    let mut node = ConnectNode::start(&consul, "ollama", meshed.addr()).await;
    register(&consul, "ollama-mesh-node", node.addr, true).await;
    let plain = SimNode::with_models(&[MODEL]).await;
    register(&consul, "ollama-plain-node", plain.addr(), false).await;
    let (router, discovery, mesh) = mesh_router(&consul, 2).await;

    let set = discovery.backends();
    assert_eq!(set.get("ollama-mesh-node").unwrap().reach(), Reach::Mesh);
    assert!(matches!(
        set.get("ollama-plain-node").unwrap().reach(),
        Reach::Skipped(why) if why.contains("--mesh-allow-plain")
    ));

    for _ in 0..5 {
        let answer = post(
            &router.url("/api/generate"),
            serde_json::from_str(&generate(false, 4)).unwrap(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    let streamed = call(
        Method::POST,
        &router.url("/api/generate"),
        generate(true, 8),
    )
    .await;
    assert_eq!(streamed.status, StatusCode::OK);
    assert!(streamed.last_line()["done"].as_bool().unwrap());
    // The fleet views gather from the mesh node with the router's own client too.
    let tags = call(Method::GET, &router.url("/api/tags"), "").await;
    assert!(String::from_utf8_lossy(&tags.body).contains(MODEL));

    assert_eq!(requests_on(&plain), 0, "the plain node got no work");
    let router_identity = mesh.identity().unwrap();
    let client = node.clients.recv().await.unwrap();
    assert_eq!(client.service.service(), "ollama-mesh-router");
    assert_eq!(client.serial, router_identity.serial());
    // Each proxied attempt has a connection of its own (the watchdog's, which Pingora does not
    // pool); the router's own clients (fleet views, the proof of the node's certificate) pool
    // theirs.
    let mut handshakes = 1;
    while node.clients.try_recv().is_ok() {
        handshakes += 1;
    }
    assert!(
        (6..=8).contains(&handshakes),
        "{handshakes} handshakes for 6 proxied requests and a fleet view"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_presenting_another_service_s_certificate_gets_no_request() {
    let consul = ConsulDev::start().await;
    let sim = SimNode::with_models(&[MODEL]).await;
    // Registered as an Ollama node, but its certificate is another service's.
    let impostor = ConnectNode::start(&consul, "postgres", sim.addr()).await;
    register(&consul, "ollama-impostor", impostor.addr, true).await;
    let (router, _discovery, _mesh) = mesh_router(&consul, 1).await;

    let answer = post(
        &router.url("/api/generate"),
        serde_json::from_str(&generate(false, 4)).unwrap(),
    )
    .await;
    // Refused before any byte went out; the router tries the next candidate, and there is none.
    assert!(answer.status.is_server_error(), "{:?}", answer.body);
    assert_eq!(
        requests_on(&sim),
        0,
        "no request reached the impostor's Ollama"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_cuts_no_stream_and_new_connections_use_the_new_certificate() {
    let consul = ConsulDev::start().await;
    // Real-time decoding, so a long generation outlasts the rotation; two slots, so a second
    // request is not queued behind it.
    let sim = SimNode::start(
        NodeSpec::default()
            .models([MODEL])
            .time_scale(1.0)
            .num_parallel(2),
    )
    .await;
    let mut node = ConnectNode::start(&consul, "ollama", sim.addr()).await;
    register(&consul, "ollama-mesh-node", node.addr, true).await;
    let (router, _discovery, mesh) = mesh_router(&consul, 1).await;
    let before = mesh.identity().unwrap().serial().to_owned();

    let request = Request::post(router.url("/api/generate"))
        .body(Full::new(Bytes::from(generate(true, 100_000))))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body();
    let mut chunks = 0;
    while chunks < 3 {
        let frame = stream.frame().await.unwrap().unwrap();
        chunks += usize::from(frame.data_ref().is_some());
    }

    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    consul.rotate_ca(&key).await;
    // Agents re-issue leaves within 30 s of a rotation, at a random moment; the stream flows on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    while mesh.identity().unwrap().serial() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new router certificate in 45 s"
        );
        let frame = tokio::time::timeout(Duration::from_secs(5), stream.frame())
            .await
            .expect("the stream stalled during the rotation")
            .expect("the stream ended during the rotation")
            .unwrap();
        assert!(
            !String::from_utf8_lossy(frame.data_ref().map_or(&[][..], |d| d)).contains("error")
        );
    }
    let after = mesh.identity().unwrap().serial().to_owned();

    // The stream's connection is busy, so this request opens a new one, with the new certificate.
    let answer = post(
        &router.url("/api/generate"),
        serde_json::from_str(&generate(false, 2)).unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let serials: Vec<String> = std::iter::from_fn(|| node.clients.try_recv().ok())
        .map(|client| client.serial)
        .collect();
    assert!(
        serials.contains(&after),
        "new connections present {after}: {serials:?}"
    );
    // And the long stream is still alive.
    let frame = tokio::time::timeout(Duration::from_secs(5), stream.frame()).await;
    assert!(
        matches!(frame, Ok(Some(Ok(_)))),
        "the stream was cut: {frame:?}"
    );
    drop(stream);
    router.stop().await;
}
