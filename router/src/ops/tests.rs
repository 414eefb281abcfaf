use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use http_body_util::BodyExt;
use ollama_mesh_consul::watch::WatchStatus;
use serde_json::Value;

use super::*;
use crate::testing::{api_key, instance, set};
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
        scheduler: crate::Scheduler::new(fleet.clone(), Default::default()),
        fleet,
        metrics: Metrics::new(),
        changes: ChangeLog::default(),
        keys: None,
    }
}

async fn call(ops: &Ops, method: Method, path: &str) -> (StatusCode, String, Value) {
    call_with(ops, method, path, &HeaderMap::new()).await
}

async fn call_with(
    ops: &Ops,
    method: Method,
    path: &str,
    headers: &HeaderMap,
) -> (StatusCode, String, Value) {
    let response = ops.handle(&method, path, headers);
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
async fn the_fleet_page_is_html_at_the_root() {
    let fleet = Arc::new(TestFleet::default());
    fleet.set.store(Arc::new(set(&[instance("a")])));
    let response = ops(fleet).handle(&Method::GET, "/", &HeaderMap::new());
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains(r#""id":"a""#));
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
    assert_eq!(
        call(&ops, Method::POST, "/").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert!(body["error"].as_str().unwrap().contains("only GET"));
}

#[tokio::test]
async fn with_keys_the_fleet_views_need_an_admin_key_and_health_stays_open() {
    let fleet = Arc::new(TestFleet::default());
    fleet.ready.store(true, Ordering::Relaxed);
    let keys = KeyStore::default();
    keys.replace(vec![
        api_key("user", "om-user", ""),
        api_key("admin", "om-admin", r#", "scope": "admin""#),
    ]);
    let ops = Ops {
        keys: Some(keys),
        ..ops(fleet)
    };
    let with = |key: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        headers
    };
    for path in ["/", "/metrics", "/v1/mesh/nodes"] {
        let (status, _, body) = call(&ops, Method::GET, path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(body["error"]
            .as_str()
            .unwrap()
            .starts_with("missing API key"));
        let (status, _, _) = call_with(&ops, Method::GET, path, &with("om-user")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        let (status, _, _) = call_with(&ops, Method::GET, path, &with("om-admin")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            call(&ops, Method::GET, path).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
}
