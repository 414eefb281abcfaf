//! Faults a real agent cannot produce on demand, against a scripted fake Consul.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ollama_mesh_consul::config::ConsulSettings;
use ollama_mesh_consul::watch::{Watch, WatchConfig};
use ollama_mesh_consul::{Client, Error, QueryOptions, QueryResponse};
use ollama_mesh_test_support::{FakeConsul, Reply};

fn client_for(fake: &FakeConsul, token: Option<&str>) -> Client {
    let settings = ConsulSettings {
        http_addr: Some(fake.http_url()),
        token: token.map(str::to_owned),
        ..ConsulSettings::default()
    };
    let mut config = settings.validate().expect("valid settings");
    config.request_timeout = Duration::from_millis(500);
    Client::new(&config).expect("client")
}

fn kv_body(value: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(value);
    format!(
        r#"[{{"Key":"ollama-mesh/router/x","Value":"{encoded}","ModifyIndex":1,"CreateIndex":1}}]"#
    )
}

fn kv_watch(client: Client) -> Watch<Vec<ollama_mesh_consul::kv::KvPair>> {
    let config = WatchConfig {
        wait: Duration::from_secs(1),
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        ..WatchConfig::default()
    };
    Watch::kv_prefix(client, "ollama-mesh/router/", config)
}

async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_index_that_goes_backwards_is_reset_and_reread() {
    // Index 100, then the agent "restarts" and answers from index 5 on.
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let fake = FakeConsul::start(move |request| {
        let call = counter.fetch_add(1, Ordering::SeqCst);
        let delay = if request.index() > 0 {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        let reply = match call {
            0 => Reply::ok(100, kv_body("before")),
            _ => Reply::ok(5 + call, kv_body("after")),
        };
        Reply::Delay(delay, Box::new(reply))
    })
    .await;
    let watch = kv_watch(client_for(&fake, None));
    eventually(Duration::from_secs(5), || fake.requests().len() >= 4).await;

    let indexes: Vec<u64> = fake.requests().iter().map(|r| r.index()).collect();
    assert_eq!(
        indexes[..4],
        [0, 100, 0, 7],
        "reset to 0, then block on the new index"
    );
    let current = watch.current().unwrap();
    assert_eq!(current[0].value_str(), Some("after"));
}

#[tokio::test]
async fn http_429_backs_off_instead_of_busy_looping() {
    let fake = FakeConsul::start(|_| Reply::status(429, 0, "rate limit exceeded")).await;
    let watch = kv_watch(client_for(&fake, None));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let requests = fake.requests().len();
    // Delays of at least 0.5, 1 and 2 s: no more than 4 requests in 4 s (a busy loop sends thousands).
    assert!((2..=4).contains(&requests), "{requests} requests in 4 s");
    assert_eq!(watch.status().errors() as usize, requests);
    assert!(watch.current().is_none());
}

#[tokio::test]
async fn unchanged_data_is_not_republished() {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    // Every answer has a new index (as when another key changes) but the same data.
    let fake = FakeConsul::start(move |_| {
        let index = 10 + counter.fetch_add(1, Ordering::SeqCst);
        Reply::Delay(
            Duration::from_millis(30),
            Box::new(Reply::ok(index, kv_body("same"))),
        )
    })
    .await;
    let watch = kv_watch(client_for(&fake, None));
    let mut receiver = watch.subscribe();
    receiver.changed().await.unwrap();
    receiver.borrow_and_update();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(fake.requests().len() >= 5, "the watch kept querying");
    assert_eq!(watch.status().updates(), 1);
    assert!(
        !receiver.has_changed().unwrap(),
        "no wake-up for unchanged data"
    );
}

#[tokio::test]
async fn truncated_bodies_are_errors_and_the_last_snapshot_stays() {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let fake = FakeConsul::start(move |_| match counter.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::ok(3, kv_body("good")),
        n => Reply::Truncated {
            index: 3 + n,
            body: kv_body("broken"),
        },
    })
    .await;
    let watch = kv_watch(client_for(&fake, None));
    eventually(Duration::from_secs(5), || watch.status().errors() >= 2).await;
    assert_eq!(watch.current().unwrap()[0].value_str(), Some("good"));
    assert!(!watch.status().is_connected());
}

#[tokio::test]
async fn a_stalled_answer_times_out() {
    let fake = FakeConsul::start(|_| Reply::Stall).await;
    let client = client_for(&fake, None);
    let started = Instant::now();
    let error = client
        .kv_get("x", &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn blocking_queries_outlast_the_wait_and_its_jitter() {
    // Consul may hold a blocking query for wait + wait/16: 1 s + 62 ms here.
    let fake = FakeConsul::start(|_| {
        Reply::Delay(Duration::from_millis(1_060), Box::new(Reply::ok(9, "[]")))
    })
    .await;
    let client = client_for(&fake, None);
    let options = QueryOptions {
        index: 8,
        wait: Some(Duration::from_secs(1)),
        ..QueryOptions::default()
    };
    let response: QueryResponse<Vec<_>> = client.kv_list("ollama-mesh/", &options).await.unwrap();
    assert_eq!(response.index, 9);
    let request = &fake.requests()[0];
    assert_eq!(request.query_param("index"), Some("8"));
    assert_eq!(request.query_param("wait"), Some("1000ms"));
    assert_eq!(request.query_param("recurse"), Some("true"));
}

#[tokio::test]
async fn a_missing_key_still_carries_the_index_to_block_on() {
    let fake = FakeConsul::start(|request| {
        let delay = if request.index() > 0 {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        Reply::Delay(delay, Box::new(Reply::status(404, 42, "")))
    })
    .await;
    let client = client_for(&fake, None);
    let response = client
        .kv_get("ollama-mesh/drain/x", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!((response.value, response.index), (None, 42));

    let watch = kv_watch(client);
    eventually(Duration::from_secs(5), || fake.requests().len() >= 3).await;
    assert_eq!(watch.current().as_deref(), Some(&Vec::new()));
    assert!(
        fake.requests()[2..].iter().all(|r| r.index() == 42),
        "blocks on the 404's index"
    );
}

#[tokio::test]
async fn the_acl_token_is_sent_and_errors_carry_consuls_text() {
    let fake = FakeConsul::start(|_| {
        Reply::status(403, 0, "Permission denied: token lacks service:write")
    })
    .await;
    let client = client_for(&fake, Some("s3cr3t"));
    let error = client.deregister_service("ollama-a-1").await.unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(403));
    assert!(error.to_string().contains("Permission denied"), "{error}");
    let request = &fake.requests()[0];
    assert_eq!(request.header("x-consul-token"), Some("s3cr3t"));
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("PUT", "/v1/agent/service/deregister/ollama-a-1")
    );
}
