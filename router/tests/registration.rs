//! Self-registration against a real `consul agent -dev`: the router appears as
//! `ollama-mesh-router` with its ports and a passing check on the ops `/healthz`, is registered
//! again when the agent forgets it, and is gone after shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ollama_mesh_consul::agent::AgentService;
use ollama_mesh_consul::health::CheckStatus;
use ollama_mesh_consul::{Client, ConsulSettings};
use ollama_mesh_router::metrics::Metrics;
use ollama_mesh_router::ops;
use ollama_mesh_router::registration::{RouterService, SelfRegistration, OPS_PORT_META};
use ollama_mesh_router::static_fleet::{PollConfig, StaticFleet};
use ollama_mesh_test_support::ConsulDev;
use tokio::net::TcpListener;

fn client(consul: &ConsulDev) -> Client {
    let settings = ConsulSettings {
        http_addr: Some(consul.http_url()),
        ..ConsulSettings::default()
    };
    Client::new(&settings.validate().unwrap()).unwrap()
}

/// Polls the agent until `ready` holds for the router's registration (or its absence).
async fn until(
    client: &Client,
    id: &str,
    limit: Duration,
    ready: impl Fn(Option<&AgentService>) -> bool,
) {
    let started = Instant::now();
    loop {
        let current = client.agent_service(id).await.unwrap();
        if ready(current.as_ref()) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "not reached within {limit:?}: {current:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_router_registers_stays_registered_and_leaves() {
    let consul = ConsulDev::start().await;
    let client = client(&consul);

    // A live ops listener for the agent's check; the main listener only needs a port.
    let ops_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = ops_listener.local_addr().unwrap();
    let main_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let main_addr = main_listener.local_addr().unwrap();
    let fleet = Arc::new(StaticFleet::start(Vec::new(), PollConfig::default(), None));
    let ops_server = tokio::spawn(ops::serve(
        ops_listener,
        fleet.clone(),
        ollama_mesh_router::Scheduler::new(fleet, Default::default()),
        Metrics::new(),
        None,
        std::future::pending(),
    ));

    let mut service = RouterService::on_host("test-host", main_addr, ops_addr).unwrap();
    service.check_interval = Duration::from_secs(1);
    service.resync_interval = Duration::from_millis(200);
    let id = service.id.to_string();
    assert_eq!(
        id,
        format!("ollama-mesh-router-test-host-{}", main_addr.port())
    );
    let registration = SelfRegistration::start(client.clone(), service);

    until(&client, &id, Duration::from_secs(10), |s| s.is_some()).await;
    let registered = client.agent_service(&id).await.unwrap().unwrap();
    assert_eq!(registered.service, "ollama-mesh-router");
    assert_eq!(registered.port, main_addr.port());
    assert_eq!(registered.address, "127.0.0.1");
    assert_eq!(
        registered.meta.get(OPS_PORT_META),
        Some(&ops_addr.port().to_string())
    );

    // The agent's HTTP check reaches the ops /healthz and passes.
    let check_id = format!("{id}:healthz");
    let started = Instant::now();
    loop {
        let checks = client.agent_checks().await.unwrap();
        if checks.get(&check_id).map(|c| c.status) == Some(CheckStatus::Passing) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "check not passing: {checks:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An agent that forgets the registration gets it back at the next resync.
    client.deregister_service(&id).await.unwrap();
    until(&client, &id, Duration::from_secs(5), |s| s.is_some()).await;

    registration.stop().await;
    assert!(
        client.agent_service(&id).await.unwrap().is_none(),
        "deregistered on stop"
    );
    ops_server.abort();
}
