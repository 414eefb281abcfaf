use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use http_body_util::BodyExt;
use ollama_mesh_consul::watch::WatchStatus;
use serde_json::Value;

use super::*;
use crate::testing::{instance, set};
use crate::BackendSet;

/// A fleet whose set, readiness and watches the test controls.
#[derive(Default)]
struct TestFleet {
    set: ArcSwap<BackendSet>,
    ready: AtomicBool,
    watches: Vec<(&'static str, Arc<WatchStatus>)>,
}

impl Fleet for TestFleet {
    fn backends(&self) -> Arc<BackendSet> {
        self.set.load_full()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn watches(&self) -> Vec<(&'static str, Arc<WatchStatus>)> {
        self.watches.clone()
    }
}

fn ops(fleet: Arc<TestFleet>) -> Ops {
    Ops {
        fleet,
        metrics: Metrics::new(),
        changes: ChangeLog::default(),
    }
}

async fn call(ops: &Ops, method: Method, path: &str) -> (StatusCode, String, Value) {
    let response = ops.handle(&method, path);
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, content_type, json)
}

#[tokio::test]
async fn readiness_waits_for_the_first_set() {
    let fleet = Arc::new(TestFleet::default());
    let ops = ops(fleet.clone());
    let (status, content_type, body) = call(&ops, Method::GET, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(content_type, "application/json");
    assert_eq!(body["ready"], false);
    assert_eq!(body["consul"], "not used");

    fleet
        .set
        .store(Arc::new(set(&[instance("a"), instance("b")])));
    fleet.ready.store(true, Ordering::Relaxed);
    let (status, _, body) = call(&ops, Method::GET, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ready"], true);
    assert_eq!(body["backends"], 2);
}

#[tokio::test]
async fn a_disconnected_watch_keeps_readiness_and_says_consul_is_unreachable() {
    let fleet = Arc::new(TestFleet {
        ready: AtomicBool::new(true),
        // A watch that has not succeeded since it started is disconnected.
        watches: vec![("health", Arc::new(WatchStatus::default()))],
        ..TestFleet::default()
    });
    let (status, _, body) = call(&ops(fleet), Method::GET, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["consul"], "unreachable");
    assert_eq!(body["watches"][0]["name"], "health");
    assert_eq!(body["watches"][0]["connected"], false);
}

#[tokio::test]
async fn health_is_always_ok() {
    let ops = ops(Arc::new(TestFleet::default()));
    let (status, _, body) = call(&ops, Method::GET, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn nodes_lists_every_instance() {
    let fleet = Arc::new(TestFleet::default());
    fleet.set.store(Arc::new(set(&[
        instance("a").on_disk(&["llama3.2:3b"]),
        instance("b").foreign(),
    ])));
    let (status, content_type, body) = call(&ops(fleet), Method::GET, "/v1/mesh/nodes").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/json");
    let nodes = body.as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0]["id"], "a");
    assert_eq!(nodes[0]["models"]["on_disk"]["names"][0], "llama3.2:3b");
    assert_eq!(nodes[1]["id"], "b");
    assert!(nodes[1]["meta_error"]
        .as_str()
        .unwrap()
        .contains("not an ollama-mesh instance"));
}

#[tokio::test]
async fn unknown_paths_and_methods_are_json_errors() {
    let ops = ops(Arc::new(TestFleet::default()));
    let (status, content_type, body) = call(&ops, Method::GET, "/api/tags").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(content_type, "application/json");
    assert_eq!(body["error"], "not found: /api/tags");

    let (status, _, body) = call(&ops, Method::POST, "/readyz").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].as_str().unwrap().contains("only GET"));
}
