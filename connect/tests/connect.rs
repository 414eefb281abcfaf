//! Connect identities, mTLS and authorization against a real `consul agent -dev`.

use std::sync::Arc;
use std::time::Duration;

use ollama_mesh_connect::{Authorizer, Decision, IdentitySource, MeshTls, PeerIdentity};
use ollama_mesh_consul::watch::WatchConfig;
use ollama_mesh_consul::{Client, ClientConfig, ConsulSettings};
use ollama_mesh_test_support::ConsulDev;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn client(consul: &ConsulDev) -> Client {
    let config: ClientConfig = ConsulSettings {
        http_addr: Some(consul.http_url()),
        ..ConsulSettings::default()
    }
    .validate()
    .unwrap();
    Client::new(&config).unwrap()
}

async fn identity(consul: &ConsulDev, service: &str) -> IdentitySource {
    let source = IdentitySource::start(client(consul), service, WatchConfig::default());
    tokio::time::timeout(Duration::from_secs(10), source.ready())
        .await
        .expect("an identity within 10 s");
    source
}

/// A TLS echo server that reports each client's identity.
async fn serve(
    tls: &MeshTls,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<PeerIdentity>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(tls.server_config());
    let (peers, seen) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let peers = peers.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
                let _ = peers
                    .send(PeerIdentity::from_certificate(&cert).unwrap())
                    .await;
                let mut buf = [0u8; 4];
                if stream.read_exact(&mut buf).await.is_ok() {
                    let _ = stream.write_all(&buf).await;
                }
            });
        }
    });
    (addr, seen)
}

async fn exchange(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> std::io::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut stream = TlsConnector::from(config).connect(name, tcp).await?;
    stream.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

#[tokio::test]
async fn services_authenticate_each_other_by_spiffe_id() {
    let consul = ConsulDev::start().await;
    let node = identity(&consul, "ollama").await;
    let router = identity(&consul, "ollama-mesh-router").await;
    let node_identity = node.tls().identity().unwrap();
    assert_eq!(node_identity.service().service(), "ollama");
    assert!(node_identity.expires_at() > std::time::SystemTime::now());

    let (addr, mut seen) = serve(&node.tls()).await;
    exchange(router.tls().client_config("ollama"), addr)
        .await
        .expect("the router reaches the node");
    let peer = seen.recv().await.unwrap();
    assert_eq!(peer.service.service(), "ollama-mesh-router");
    assert!(!peer.serial.is_empty());

    // The node is not the service this client expects.
    let error = exchange(router.tls().client_config("postgres"), addr)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not service"), "{error}");

    // A client with no certificate, or one from outside the mesh, does not get through.
    let anonymous = MeshTls::default();
    assert!(exchange(anonymous.client_config("ollama"), addr)
        .await
        .is_err());
}

#[tokio::test]
async fn intention_changes_are_announced_and_decided_by_the_agent() {
    let consul = ConsulDev::start().await;
    let router = identity(&consul, "ollama-mesh-router").await;
    let authorizer = Authorizer::start(client(&consul), "ollama", WatchConfig::default());
    let peer = PeerIdentity {
        service: router.tls().identity().unwrap().service().clone(),
        serial: router.tls().identity().unwrap().serial().to_owned(),
    };
    assert_eq!(authorizer.decide(&peer).await, Decision::Allowed);

    let mut changes = authorizer.changes();
    // The first answer (no intentions at all: Consul says `null`) is announced too.
    tokio::time::timeout(Duration::from_secs(2), changes.wait_for(|g| *g > 0))
        .await
        .expect("the intentions watch answers on a fresh agent")
        .unwrap();
    changes.borrow_and_update();
    consul
        .set_intentions("ollama", &[("ollama-mesh-router", "deny")])
        .await;
    tokio::time::timeout(Duration::from_secs(2), changes.changed())
        .await
        .expect("the change is announced within 2 s")
        .unwrap();
    // The agent's own intention cache may trail the announcement by a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match authorizer.decide(&peer).await {
            Decision::Denied(reason) => {
                assert!(reason.contains("DENY"), "{reason}");
                break;
            }
            Decision::Allowed if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Decision::Allowed => panic!("still allowed 3 s after the deny intention"),
            Decision::Unavailable(reason) => panic!("the agent did not answer: {reason}"),
        }
    }
}

#[tokio::test]
async fn a_ca_rotation_issues_a_new_identity_that_old_peers_still_trust() {
    let consul = ConsulDev::start().await;
    let node = identity(&consul, "ollama").await;
    let router = identity(&consul, "ollama-mesh-router").await;
    let (addr, mut seen) = serve(&node.tls()).await;
    let before = node.tls().identity().unwrap().serial().to_owned();
    let mut node_updates = node.subscribe();
    node_updates.borrow_and_update();

    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    consul.rotate_ca(&key).await;
    // Agents re-issue leaves at a random moment within 30 s of a rotation (Consul spreads the
    // signing load), so this waits longer than anything else here.
    tokio::time::timeout(
        Duration::from_secs(45),
        node_updates.wait_for(|_| node.tls().identity().unwrap().serial() != before),
    )
    .await
    .expect("a new leaf within 45 s")
    .unwrap();
    let after = node.tls().identity().unwrap();
    assert_eq!(after.root_count(), 2, "old and new roots are both trusted");

    exchange(router.tls().client_config("ollama"), addr)
        .await
        .expect("connections work across the rotation");
    assert_eq!(
        seen.recv().await.unwrap().service.service(),
        "ollama-mesh-router"
    );
}
