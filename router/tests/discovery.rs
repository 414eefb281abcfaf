//! Discovery against a real `consul agent -dev`: what an operator or a sidecar does in Consul
//! reaches the router's backend set, and so its routing, within a second.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ollama_mesh_consul::agent::ServiceRegistration;
use ollama_mesh_consul::contract::{self, kv as layout, InstanceId};
use ollama_mesh_consul::health::CheckStatus;
use ollama_mesh_consul::kv::WriteCondition;
use ollama_mesh_consul::watch::WatchConfig;
use ollama_mesh_consul::{Client, ConsulSettings};
use ollama_mesh_router::schedule::candidates::candidates as schedulable;
use ollama_mesh_router::{BackendSet, Discovery, InFlightGuard, ScheduleError};
use ollama_mesh_test_support::ConsulDev;

use common::{heartbeat, sidecar_registration};

const SERVICE: &str = contract::DEFAULT_SERVICE_NAME;
const MODEL: &str = "llama3.2:3b";
/// What the issue promises: a change in Consul reaches routing well under a second.
const REACTION: Duration = Duration::from_secs(1);

fn client_for(consul: &ConsulDev) -> Client {
    let settings = ConsulSettings {
        http_addr: Some(consul.http_url()),
        ..ConsulSettings::default()
    };
    Client::new(&settings.validate().expect("valid settings")).expect("client")
}

/// Short waits and backoff, so a killed agent is noticed quickly.
fn watch_config() -> WatchConfig {
    WatchConfig {
        wait: Duration::from_secs(10),
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        ..WatchConfig::default()
    }
}

/// An instance as the sidecar registers it, with `MODEL` on disk.
fn registration(id: &str, port: u16) -> ServiceRegistration {
    sidecar_registration(id, SocketAddr::from(([127, 0, 0, 1], port)), &[MODEL])
}

/// Waits until the published set satisfies `ready`, for at most `limit`; returns how long
/// that took.
async fn wait_for(
    discovery: &Discovery,
    limit: Duration,
    what: &str,
    ready: impl Fn(&BackendSet) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut updates = discovery.subscribe();
    loop {
        if ready(&discovery.backends()) {
            return start.elapsed();
        }
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, updates.changed()).await {
            Ok(changed) => changed.expect("discovery is running"),
            Err(_) => panic!(
                "not within {limit:?}: {what}; set: {:#?}",
                discovery.backends()
            ),
        }
    }
}

/// The instances a request for `MODEL` can be sent to.
fn candidates(set: &BackendSet) -> Vec<String> {
    let mut ids: Vec<String> = match schedulable(set, Some(MODEL), &[]) {
        Ok(found) => found.iter().map(|b| b.id().to_string()).collect(),
        Err(ScheduleError::NoneAvailable) => Vec::new(),
        Err(error) => panic!("unexpected: {error}"),
    };
    ids.sort();
    ids
}

async fn started(consul: &ConsulDev) -> (Client, Discovery) {
    let client = client_for(consul);
    let discovery = Discovery::start(client.clone(), SERVICE, watch_config(), None);
    tokio::time::timeout(Duration::from_secs(10), discovery.ready())
        .await
        .expect("first snapshot");
    (client, discovery)
}

#[tokio::test]
async fn instances_appear_and_leave_within_a_second() {
    let consul = ConsulDev::start().await;
    let (client, discovery) = started(&consul).await;
    assert!(discovery.is_ready());
    assert!(discovery.backends().is_empty());

    client
        .register_service(&registration("ollama-a-1", 1))
        .await
        .unwrap();
    client
        .register_service(&registration("ollama-b-2", 2))
        .await
        .unwrap();
    wait_for(&discovery, REACTION, "both instances published", |set| {
        candidates(set) == ["ollama-a-1", "ollama-b-2"]
    })
    .await;
    let set = discovery.backends();
    let a = set.get("ollama-a-1").unwrap();
    assert_eq!(a.address(), "127.0.0.1:1");
    assert!(a.has_model(MODEL));

    client.deregister_service("ollama-a-1").await.unwrap();
    wait_for(
        &discovery,
        REACTION,
        "a deregistered instance is gone",
        |set| set.get("ollama-a-1").is_none() && candidates(set) == ["ollama-b-2"],
    )
    .await;
}

#[tokio::test]
async fn maintenance_drain_keys_and_failing_checks_stop_new_work_within_a_second() {
    let consul = ConsulDev::start().await;
    let (client, discovery) = started(&consul).await;
    for (id, port) in [("ollama-a-1", 1), ("ollama-b-2", 2)] {
        client
            .register_service(&registration(id, port))
            .await
            .unwrap();
    }
    let both = |set: &BackendSet| candidates(set) == ["ollama-a-1", "ollama-b-2"];
    let only_b = |set: &BackendSet| candidates(set) == ["ollama-b-2"];
    wait_for(&discovery, REACTION, "both instances published", both).await;

    // A counter survives every rebuild below.
    let held = InFlightGuard::new(discovery.backends().get("ollama-a-1").unwrap().clone());
    assert_eq!(&**held.backend().id(), "ollama-a-1");

    client
        .set_service_maintenance("ollama-a-1", true, "replacing fan")
        .await
        .unwrap();
    wait_for(&discovery, REACTION, "maintenance drains", only_b).await;
    client
        .set_service_maintenance("ollama-a-1", false, "")
        .await
        .unwrap();
    wait_for(&discovery, REACTION, "maintenance over", both).await;

    let drain_key = layout::drain_key(&InstanceId::parse("ollama-a-1").unwrap());
    client
        .kv_put(&drain_key, "moving racks", WriteCondition::Always)
        .await
        .unwrap();
    wait_for(&discovery, REACTION, "a drain key drains", |set| {
        only_b(set)
            && matches!(
                set.get("ollama-a-1").unwrap().state(),
                contract::RoutingState::Draining { reason } if reason == "moving racks"
            )
    })
    .await;
    client.kv_delete(&drain_key).await.unwrap();
    wait_for(&discovery, REACTION, "drain key removed", both).await;

    client
        .update_ttl_check(
            &heartbeat("ollama-a-1"),
            CheckStatus::Critical,
            "Ollama is down",
        )
        .await
        .unwrap();
    wait_for(
        &discovery,
        REACTION,
        "a critical check takes it out",
        |set| {
            only_b(set)
                && matches!(
                    set.get("ollama-a-1").unwrap().state(),
                    contract::RoutingState::Out { .. }
                )
        },
    )
    .await;
    client
        .update_ttl_check(&heartbeat("ollama-a-1"), CheckStatus::Passing, "")
        .await
        .unwrap();
    wait_for(&discovery, REACTION, "passing again", both).await;

    let a = discovery.backends().get("ollama-a-1").unwrap().clone();
    assert_eq!(a.in_flight().get(), 1, "the held request is still counted");
    drop(held);
    assert_eq!(a.in_flight().get(), 0);
}

#[tokio::test]
async fn consul_unreachable_keeps_the_last_set_and_says_so() {
    let mut consul = ConsulDev::start().await;
    let (client, discovery) = started(&consul).await;
    client
        .register_service(&registration("ollama-a-1", 1))
        .await
        .unwrap();
    wait_for(&discovery, REACTION, "instance published", |set| {
        candidates(set) == ["ollama-a-1"]
    })
    .await;
    assert!(discovery.health_status().is_connected());
    assert!(discovery.drain_status().is_connected());

    consul.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    while discovery.health_status().is_connected() || discovery.drain_status().is_connected() {
        assert!(Instant::now() < deadline, "watch errors not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(discovery.health_status().errors() > 0);
    assert_eq!(candidates(&discovery.backends()), ["ollama-a-1"]);
    assert!(
        discovery.is_ready(),
        "readiness is about the first snapshot"
    );
}

#[tokio::test]
async fn not_ready_until_consul_has_answered() {
    let mut consul = ConsulDev::start().await;
    consul.kill();
    let discovery = Discovery::start(client_for(&consul), SERVICE, watch_config(), None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!discovery.is_ready());
    assert!(discovery.backends().is_empty());
    assert!(discovery.health_status().errors() > 0);

    consul.restart().await;
    tokio::time::timeout(Duration::from_secs(5), discovery.ready())
        .await
        .expect("ready once Consul answers");
    assert!(discovery.health_status().is_connected());
}
