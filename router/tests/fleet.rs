//! The router in front of a fleet it learns from a real `consul agent -dev`: operators' drains
//! and failing nodes change routing within a second, and no request is lost to them.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ollama_mesh_consul::contract::{self, kv as layout, InstanceId};
use ollama_mesh_consul::kv::WriteCondition;
use ollama_mesh_consul::watch::WatchConfig;
use ollama_mesh_consul::Client;
use ollama_mesh_router::proxy::ProxySettings;
use ollama_mesh_router::{Discovery, Fleet};
use ollama_mesh_sim::NodeSpec;
use ollama_mesh_test_support::{ConsulDev, SimNode};
use serde_json::json;

const MODEL: &str = "llama3.2:1b";

/// Registers a node as its sidecar would.
async fn register(client: &Client, id: &str, addr: SocketAddr) {
    client
        .register_service(&sidecar_registration(id, addr, &[MODEL]))
        .await
        .unwrap();
}

async fn router_over_consul(consul: &ConsulDev, nodes: usize) -> (Router, Arc<Discovery>) {
    let config = WatchConfig {
        wait: Duration::from_secs(10),
        ..WatchConfig::default()
    };
    let discovery = Arc::new(Discovery::start(
        consul_client(consul),
        contract::DEFAULT_SERVICE_NAME,
        config,
        None,
    ));
    let started = Instant::now();
    while discovery.backends().len() < nodes {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "discovery did not see the nodes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settings = ProxySettings {
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(30),
        first_byte_timeout: Duration::from_secs(30),
        stream_idle_timeout: Duration::from_secs(30),
        schedule: ollama_mesh_router::schedule::ScheduleSettings {
            retries: 2,
            ..Default::default()
        },
        max_body_size: 1 << 20,
        enable_management: false,
        client_timeout: Duration::from_secs(60),
        max_header_size: 64 << 10,
        max_connections: 1_000,
        backend_tls: None,
        mesh: None,
    };
    let router = Router::with_fleet(discovery.clone() as Arc<dyn Fleet>, settings).await;
    (router, discovery)
}

fn in_flight(node: &SimNode) -> u64 {
    node.sim().stats()["requests_in_flight"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_gets_nothing_new_within_a_second_and_finishes_its_streams() {
    let consul = ConsulDev::start().await;
    let client = consul_client(&consul);
    let spec = || NodeSpec::default().models([MODEL]).time_scale(1.0);
    let a = SimNode::start(spec()).await;
    let b = SimNode::start(spec()).await;
    register(&client, "gpu-a", a.addr()).await;
    register(&client, "gpu-b", b.addr()).await;
    let (router, discovery) = router_over_consul(&consul, 2).await;

    // A long stream lands on one of the two nodes.
    let url = router.url("/api/generate");
    let stream = tokio::spawn(async move {
        post(
            &url,
            json!({"model": MODEL, "prompt": "a long story", "options": {"num_predict": 300}}),
        )
        .await
    });
    let started = Instant::now();
    while in_flight(&a) + in_flight(&b) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stream never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (busy, busy_id, other) = if in_flight(&a) > 0 {
        (&a, "gpu-a", &b)
    } else {
        (&b, "gpu-b", &a)
    };
    // Streaming already: a request still waiting for its first byte would move to the other
    // node on the drain instead (tests/watchdog.rs).
    while busy.sim().stats()["generated_tokens"].as_u64().unwrap_or(0) < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "no token came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The operator drains that node in the Consul UI (a KV key).
    let key = layout::drain_key(&InstanceId::parse(busy_id).unwrap());
    client
        .kv_put(&key, "replacing a fan", WriteCondition::Always)
        .await
        .unwrap();
    let drained = Instant::now();
    while discovery
        .backends()
        .get(busy_id)
        .is_some_and(|b| b.state().accepts_new_work())
    {
        assert!(
            drained.elapsed() < Duration::from_secs(1),
            "the drain took over a second to reach routing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = requests_on(busy);
    let on_other = requests_on(other);
    for _ in 0..8 {
        let answer = post(
            &router.url("/api/generate"),
            json!({"model": MODEL, "prompt": "hi", "stream": false, "options": {"num_predict": 2}}),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(requests_on(busy), before, "a drained node got new work");
    assert_eq!(requests_on(other), on_other + 8);

    let answer = stream.await.unwrap();
    assert_eq!(answer.status, 200);
    let last = answer.last_line();
    assert_eq!(
        last["done"], true,
        "the running stream finished on the drained node"
    );
    assert_eq!(last["eval_count"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_load_loses_no_request() {
    let consul = ConsulDev::start().await;
    let client = consul_client(&consul);
    // Real-time loads from a slow disk: requests queue on each node while its model loads.
    let spec = || {
        NodeSpec::from_toml(&format!(
            "time_scale = 1.0\n[[models]]\nname = \"{MODEL}\"\n[scheduler]\nnum_parallel = 4\ndisk_speed = \"1GB\""
        ))
        .unwrap()
    };
    let first = SimNode::start(spec()).await;
    let second = SimNode::start(spec()).await;
    register(&client, "first", first.addr()).await;
    register(&client, "second", second.addr()).await;
    let (router, _discovery) = router_over_consul(&consul, 2).await;

    let requests: Vec<_> = (0..8)
        .map(|i| {
            let url = router.url("/api/chat");
            tokio::spawn(async move {
                post(&url, json!({"model": MODEL, "stream": false, "messages": [{"role": "user", "content": format!("question {i}")}], "options": {"num_predict": 3}})).await
            })
        })
        .collect();
    // The scheduler keeps one model's burst on the node it loads on: that node dies.
    let started = Instant::now();
    let (doomed, survivor) = loop {
        match (in_flight(&first), in_flight(&second)) {
            (0, 0) => {}
            (_, 0) => break (first, second),
            _ => break (second, first),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "nothing reached a node"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    doomed.stop().await;

    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(
            answer.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.json()["done"], true);
    }
    assert!(
        requests_on(&survivor) >= 8,
        "the survivor took over every request"
    );
}
