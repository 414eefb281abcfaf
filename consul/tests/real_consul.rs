//! The client and watches against a real `consul agent -dev`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ollama_mesh_consul::agent::{CheckDefinition, CheckKind, ServiceRegistration, Weights};
use ollama_mesh_consul::contract::{
    self, kv as layout, routing_state, ModelList, NodeMeta, RoutingState,
};
use ollama_mesh_consul::health::{CheckStatus, ServiceEntry};
use ollama_mesh_consul::kv::{KvPair, WriteCondition};
use ollama_mesh_consul::watch::{Watch, WatchConfig};
use ollama_mesh_consul::{Client, ConsulSettings, QueryOptions};
use ollama_mesh_test_support::ConsulDev;
use tokio::sync::watch;

const SERVICE: &str = contract::DEFAULT_SERVICE_NAME;

fn client_for(url: String) -> Client {
    let settings = ConsulSettings {
        http_addr: Some(url),
        ..ConsulSettings::default()
    };
    Client::new(&settings.validate().expect("valid settings")).expect("client")
}

fn node_meta() -> NodeMeta {
    NodeMeta {
        gpu_name: Some("NVIDIA GeForce RTX 4090".into()),
        gpu_count: 1,
        gpu_vram_mib: 24_564,
        parallel_slots: 4,
        models_on_disk: ModelList::new(["llama3.2:3b", "qwen2.5:7b"]),
        models_loaded: ModelList::new(["llama3.2:3b"]),
        ollama_version: Some("0.17.4".into()),
        sidecar_version: "test".into(),
        preemptible: true,
    }
}

fn registration(id: &str, port: u16) -> ServiceRegistration {
    ServiceRegistration {
        id: id.into(),
        name: SERVICE.into(),
        tags: vec![contract::MESH_TAG.into()],
        address: "127.0.0.1".into(),
        port,
        meta: node_meta().to_consul_meta(),
        weights: Weights {
            passing: 8,
            warning: 1,
        },
        checks: vec![CheckDefinition {
            check_id: format!("{id}:heartbeat"),
            name: "sidecar heartbeat".into(),
            notes: "the sidecar reaches Ollama and its data is fresh".into(),
            kind: CheckKind::Ttl {
                ttl: Duration::from_secs(30),
            },
            status: Some(CheckStatus::Passing),
            deregister_critical_after: Some(Duration::from_secs(60)),
        }],
        connect: None,
    }
}

/// Fast watches for tests: short waits so a killed agent is noticed quickly.
fn test_watch_config() -> WatchConfig {
    WatchConfig {
        wait: Duration::from_secs(10),
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        ..WatchConfig::default()
    }
}

/// Waits until the published snapshot satisfies `ready`; returns how long that took.
async fn wait_for<T: std::fmt::Debug>(
    receiver: &mut watch::Receiver<Option<Arc<T>>>,
    limit: Duration,
    ready: impl Fn(&T) -> bool,
) -> Duration {
    let started = Instant::now();
    let reached = tokio::time::timeout(
        limit,
        receiver.wait_for(|snapshot| snapshot.as_deref().is_some_and(&ready)),
    )
    .await
    .is_ok_and(|changed| changed.is_ok());
    assert!(
        reached,
        "condition not reached within {limit:?}; last snapshot: {:?}",
        receiver.borrow()
    );
    started.elapsed()
}

fn state_of(entries: &[ServiceEntry], id: &str) -> Option<RoutingState> {
    entries
        .iter()
        .find(|e| e.service.id == id)
        .map(|e| routing_state(&e.checks, e.service.weights, None))
}

#[tokio::test]
async fn a_registered_instance_reaches_a_watch_within_a_second_with_its_meta() {
    let consul = ConsulDev::start().await;
    let client = client_for(consul.http_url());
    let watch = Watch::health_service(client.clone(), SERVICE, test_watch_config());
    let mut snapshots = watch.subscribe();
    wait_for(&mut snapshots, Duration::from_secs(5), |entries| {
        entries.is_empty()
    })
    .await;

    client
        .register_service(&registration("ollama-gpu-a-11434", 11434))
        .await
        .unwrap();
    let took = wait_for(&mut snapshots, Duration::from_secs(5), |entries| {
        !entries.is_empty()
    })
    .await;
    assert!(took < Duration::from_secs(1), "took {took:?}");

    let entries = watch.current().unwrap();
    let entry = &entries[0];
    assert_eq!(entry.service.id, "ollama-gpu-a-11434");
    assert_eq!(entry.address(), "127.0.0.1");
    assert_eq!(entry.service.tags, [contract::MESH_TAG]);
    assert_eq!(
        NodeMeta::from_consul_meta(&entry.service.meta).unwrap(),
        node_meta()
    );
    assert_eq!(
        state_of(&entries, "ollama-gpu-a-11434"),
        Some(RoutingState::Active {
            weight: 8,
            degraded: false
        })
    );

    let agent_view = client
        .agent_service("ollama-gpu-a-11434")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        agent_view.weights,
        Weights {
            passing: 8,
            warning: 1
        }
    );
    assert_eq!(client.agent_service("nope").await.unwrap(), None);
    assert_eq!(
        client.services_with_tag(contract::MESH_TAG).await.unwrap(),
        [SERVICE]
    );
}

#[tokio::test]
async fn checks_maintenance_and_deregistration_change_routing_state() {
    let consul = ConsulDev::start().await;
    let client = client_for(consul.http_url());
    let id = "ollama-gpu-b-11434";
    client
        .register_service(&registration(id, 11434))
        .await
        .unwrap();
    let watch = Watch::health_service(client.clone(), SERVICE, test_watch_config());
    let mut snapshots = watch.subscribe();
    let active = |e: &Vec<ServiceEntry>| {
        matches!(
            state_of(e, id),
            Some(RoutingState::Active { weight: 8, .. })
        )
    };
    wait_for(&mut snapshots, Duration::from_secs(5), active).await;

    let heartbeat = format!("{id}:heartbeat");
    client
        .update_ttl_check(&heartbeat, CheckStatus::Warning, "GPU probe failed")
        .await
        .unwrap();
    let took = wait_for(&mut snapshots, Duration::from_secs(5), |e| {
        state_of(e, id)
            == Some(RoutingState::Active {
                weight: 1,
                degraded: true,
            })
    })
    .await;
    assert!(took < Duration::from_secs(1), "warning took {took:?}");

    client
        .update_ttl_check(&heartbeat, CheckStatus::Critical, "Ollama unreachable")
        .await
        .unwrap();
    let took = wait_for(&mut snapshots, Duration::from_secs(5), |e| {
        matches!(state_of(e, id), Some(RoutingState::Out { reason }) if reason.contains("Ollama unreachable"))
    })
    .await;
    assert!(took < Duration::from_secs(1), "critical took {took:?}");

    client
        .update_ttl_check(&heartbeat, CheckStatus::Passing, "ok")
        .await
        .unwrap();
    wait_for(&mut snapshots, Duration::from_secs(5), active).await;

    client
        .set_service_maintenance(id, true, "swapping a GPU")
        .await
        .unwrap();
    let took = wait_for(&mut snapshots, Duration::from_secs(5), |e| {
        state_of(e, id)
            == Some(RoutingState::Draining {
                reason: "swapping a GPU".into(),
            })
    })
    .await;
    assert!(took < Duration::from_secs(1), "maintenance took {took:?}");

    client.set_service_maintenance(id, false, "").await.unwrap();
    wait_for(&mut snapshots, Duration::from_secs(5), active).await;

    client.deregister_service(id).await.unwrap();
    let took = wait_for(&mut snapshots, Duration::from_secs(5), |e| {
        state_of(e, id).is_none()
    })
    .await;
    assert!(
        took < Duration::from_secs(1),
        "deregistration took {took:?}"
    );
}

#[tokio::test]
async fn kv_reads_writes_cas_and_prefix_watches() {
    let consul = ConsulDev::start().await;
    let client = client_for(consul.http_url());
    let key = layout::drain_key(&contract::InstanceId::parse("ollama-gpu-c-11434").unwrap());

    let missing = client.kv_get(&key, &QueryOptions::default()).await.unwrap();
    assert_eq!(missing.value, None);
    assert!(missing.index > 0, "a missing key still carries an index");

    let watch = Watch::kv_prefix(client.clone(), layout::DRAIN_PREFIX, test_watch_config());
    let mut snapshots = watch.subscribe();
    wait_for(&mut snapshots, Duration::from_secs(5), Vec::is_empty).await;

    assert!(client
        .kv_put(&key, "kernel upgrade", WriteCondition::Create)
        .await
        .unwrap());
    assert!(
        !client
            .kv_put(&key, "again", WriteCondition::Create)
            .await
            .unwrap(),
        "create-only must not overwrite"
    );
    let took = wait_for(
        &mut snapshots,
        Duration::from_secs(5),
        |pairs: &Vec<KvPair>| pairs.len() == 1 && pairs[0].value_str() == Some("kernel upgrade"),
    )
    .await;
    assert!(took < Duration::from_secs(1), "write took {took:?}");

    let stored = client
        .kv_get(&key, &QueryOptions::default())
        .await
        .unwrap()
        .value
        .unwrap();
    assert!(!client
        .kv_put(
            &key,
            "stale",
            WriteCondition::ModifyIndex(stored.modify_index + 1)
        )
        .await
        .unwrap());
    assert!(client
        .kv_put(
            &key,
            "GPU swap",
            WriteCondition::ModifyIndex(stored.modify_index)
        )
        .await
        .unwrap());
    wait_for(
        &mut snapshots,
        Duration::from_secs(5),
        |pairs: &Vec<KvPair>| pairs.first().and_then(KvPair::value_str) == Some("GPU swap"),
    )
    .await;

    client.kv_delete(&key).await.unwrap();
    let took = wait_for(&mut snapshots, Duration::from_secs(5), Vec::is_empty).await;
    assert!(took < Duration::from_secs(1), "delete took {took:?}");
}

#[tokio::test]
async fn a_watch_keeps_its_snapshot_while_the_agent_is_down_and_converges_after_restart() {
    let mut consul = ConsulDev::start().await;
    let client = client_for(consul.http_url());
    client
        .register_service(&registration("before-restart", 1))
        .await
        .unwrap();
    let watch = Watch::health_service(client.clone(), SERVICE, test_watch_config());
    let mut snapshots = watch.subscribe();
    wait_for(&mut snapshots, Duration::from_secs(5), |e| {
        state_of(e, "before-restart").is_some()
    })
    .await;

    consul.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = watch.current().unwrap();
    assert!(
        state_of(&kept, "before-restart").is_some(),
        "last good snapshot is kept"
    );
    assert!(!watch.status().is_connected());
    assert!(watch.status().errors() > 0);
    let since = watch.status().since_last_success().unwrap();
    assert!(
        since >= Duration::from_secs(1),
        "staleness is visible: {since:?}"
    );

    // A restarted dev agent has forgotten everything and its index starts over.
    consul.restart().await;
    client
        .register_service(&registration("after-restart", 2))
        .await
        .unwrap();
    wait_for(&mut snapshots, Duration::from_secs(10), |e| {
        state_of(e, "after-restart").is_some() && state_of(e, "before-restart").is_none()
    })
    .await;
    assert!(watch.status().is_connected());
}
