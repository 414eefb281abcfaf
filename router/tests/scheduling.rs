//! The scheduler end to end, through a running router in front of simulated nodes: a node never
//! gets more than its slots, the rest wait at the router, a caller that hangs up while waiting
//! leaves the queue, and a full queue answers 503 with Retry-After in the caller's dialect.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use ollama_mesh_consul::health::ServiceEntry;
use ollama_mesh_router::backend::MeshPolicy;
use ollama_mesh_router::proxy::MeshProxy;
use ollama_mesh_router::schedule::{Policy, ScheduleSettings};
use ollama_mesh_router::{BackendSet, Fleet, Scheduler};
use ollama_mesh_sim::NodeSpec;
use ollama_mesh_test_support::SimNode;
use serde_json::json;

const MODEL: &str = "llama3.2:3b";

/// An instance entry like [`entry`]'s, serving `slots` requests at once per model.
fn with_slots(id: &str, node: &SimNode, slots: u32) -> ServiceEntry {
    let mut entry = entry(id, node.addr(), &[MODEL], &[MODEL], 1);
    entry
        .service
        .meta
        .insert("parallel_slots".into(), slots.to_string());
    entry
}

/// A router over `entries` whose scheduler the test can look into.
async fn router(
    entries: Vec<ServiceEntry>,
    schedule: ScheduleSettings,
) -> (Router, Arc<Scheduler>) {
    let set = BackendSet::build(&entries, &[], &BackendSet::default(), MeshPolicy::default());
    let fleet: Arc<dyn Fleet> = Arc::new(FixedFleet(Arc::new(set)));
    let scheduler = Scheduler::new(fleet.clone(), schedule.clone());
    let mut proxy_settings = settings();
    proxy_settings.schedule = schedule;
    let shared = scheduler.clone();
    let router = Router::with_proxy(move |active| {
        MeshProxy::with_scheduler(fleet, shared, proxy_settings, active)
    })
    .await;
    (router, scheduler)
}

/// A node that takes about a second per answer of `tokens` tokens.
async fn slow_node(tokens: u32) -> SimNode {
    SimNode::start(
        NodeSpec::default()
            .models([MODEL])
            .time_scale(1.0)
            .output_tokens(tokens),
    )
    .await
}

fn in_flight(node: &SimNode) -> u64 {
    node.sim().stats()["requests_in_flight"].as_u64().unwrap()
}

fn generate(router: &Router, tokens: u32) -> tokio::task::JoinHandle<Answer> {
    let url = router.url("/api/generate");
    tokio::spawn(async move {
        post(
            &url,
            json!({"model": MODEL, "prompt": "hi", "stream": false, "options": {"num_predict": tokens}}),
        )
        .await
    })
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gets_no_more_than_its_slots_and_the_rest_wait_at_the_router() {
    let node = slow_node(30).await;
    let (router, scheduler) = router(
        vec![with_slots("gpu-1", &node, 2)],
        ScheduleSettings::default(),
    )
    .await;
    let requests: Vec<_> = (0..6).map(|_| generate(&router, 30)).collect();
    until("requests reached the router's queue", || {
        scheduler.queued() > 0
    })
    .await;
    let mut most = 0;
    while !requests.iter().all(|r| r.is_finished()) {
        most = most.max(in_flight(&node));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for request in requests {
        assert_eq!(request.await.unwrap().status, StatusCode::OK);
    }
    assert!(
        most <= 2,
        "the node had {most} requests at once with 2 slots"
    );
    assert_eq!(scheduler.queued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_while_waiting_leaves_the_queue() {
    let node = slow_node(400).await;
    let (router, scheduler) = router(
        vec![with_slots("gpu-1", &node, 1)],
        ScheduleSettings::default(),
    )
    .await;
    let running = generate(&router, 400);
    until("the first request runs", || in_flight(&node) == 1).await;
    let waiting = generate(&router, 5);
    until("the second request waits", || scheduler.queued() == 1).await;
    waiting.abort();
    until("the hung-up caller left the queue", || {
        scheduler.queued() == 0
    })
    .await;
    drop(running);
    assert_eq!(
        in_flight(&node),
        1,
        "the node never saw the caller that left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after_in_the_callers_dialect() {
    let node = slow_node(400).await;
    let schedule = ScheduleSettings {
        policy: Policy::Queue,
        queue_max: 1,
        ..ScheduleSettings::default()
    };
    let (router, scheduler) = router(vec![with_slots("gpu-1", &node, 1)], schedule).await;
    let _running = generate(&router, 400);
    until("the first request runs", || in_flight(&node) == 1).await;
    let _waiting = generate(&router, 5);
    until("the second request waits", || scheduler.queued() == 1).await;

    let native = post(
        &router.url("/api/chat"),
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(native.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(native.json()["error"]
        .as_str()
        .unwrap()
        .contains("queue is full"));
    let retry_after: u64 = native.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);

    let openai = call(
        Method::POST,
        &router.url("/v1/chat/completions"),
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
    .await;
    assert_eq!(openai.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(openai.headers.contains_key("retry-after"));
    assert_eq!(openai.json()["error"]["type"], "api_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_about_a_model_never_waits_for_a_slot() {
    let node = slow_node(400).await;
    let (router, scheduler) = router(
        vec![with_slots("gpu-1", &node, 1)],
        ScheduleSettings::default(),
    )
    .await;
    let _running = generate(&router, 400);
    until("the first request runs", || in_flight(&node) == 1).await;
    let _waiting = generate(&router, 5);
    until("the second request waits", || scheduler.queued() == 1).await;
    // `ollama run` asks /api/show first: it must not queue behind generations.
    let started = Instant::now();
    let show = post(&router.url("/api/show"), json!({"model": MODEL})).await;
    assert_eq!(show.status, StatusCode::OK);
    let model = call(Method::GET, &router.url(&format!("/v1/models/{MODEL}")), "").await;
    assert_eq!(model.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(scheduler.queued(), 1);
}

/// A request waiting behind a busy warm node makes the router load the model on a cold node
/// ahead of need; the request then runs there without paying the load itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_has_its_model_loaded_on_a_cold_node_ahead_of_need() {
    let warm = slow_node(40).await;
    let cold = slow_node(40).await;
    let mut cold_entry = entry("gpu-2", cold.addr(), &[MODEL], &[], 1);
    cold_entry
        .service
        .meta
        .insert("parallel_slots".into(), "1".into());
    let (router, scheduler) = router(
        vec![with_slots("gpu-1", &warm, 1), cold_entry],
        ScheduleSettings {
            policy: Policy::Preload,
            ..ScheduleSettings::default()
        },
    )
    .await;
    let first = generate(&router, 40);
    until("the first request runs on the warm node", || {
        in_flight(&warm) == 1
    })
    .await;
    // Before anything is learned a request takes 5 s and a load 10 s: waiting for the warm
    // slot is cheaper, but costs half a load already, so the cold node loads the model
    // meanwhile.
    let second = generate(&router, 40);
    until("the cold node was asked to load the model", || {
        cold.sim().stats()["loads"].as_u64() == Some(1)
    })
    .await;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(second.status, StatusCode::OK, "{:?}", second.body);
    assert_eq!(cold.sim().stats()["loads"], 1, "one load, ahead of need");
    assert_eq!(
        cold.sim().stats()["requests_total"],
        2,
        "the load, then the waiting request, bound to the node that had loaded its model"
    );
    let waited_for_load = second.json()["load_duration"].as_u64().unwrap();
    assert!(
        waited_for_load < 100_000_000,
        "the request paid {waited_for_load} ns of load"
    );
    assert_eq!(scheduler.queued(), 0);
}
