//! The monitoring examples match the router. The Prometheus configuration
//! (`examples/prometheus/prometheus.yml`) finds routers under the service name and Meta key they
//! register with; the Grafana dashboards (`examples/grafana/*.json`) query only metrics the
//! router exports: a router discovering simulated nodes from a real `consul agent -dev` serves some
//! traffic (generations, a retry, a refused key), and every `ollama_mesh_*` name in the
//! dashboards must be a series of its `/metrics`.
//!
//! The mesh metrics are the one exception to "driven for real": a Consul Connect CA and
//! Connect-native nodes are out of scope here, so the test records a handshake, a denial and a
//! certificate expiry through `ollama_mesh_connect::metrics` (the functions the router and the
//! sidecar call), which are registered in the same process-wide registry the router exports.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::http::{Method, StatusCode};
use common::{call, consul_client, key_store, post, settings, sidecar_registration, Router};
use ollama_mesh_connect::metrics as mesh_metrics;
use ollama_mesh_consul::contract::ROUTER_SERVICE_NAME;
use ollama_mesh_consul::watch::WatchConfig;
use ollama_mesh_router::metrics::Metrics;
use ollama_mesh_router::registration::OPS_PORT_META;
use ollama_mesh_router::{ops, Discovery, Fleet};
use ollama_mesh_test_support::{http, ConsulDev, SimNode};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const MODEL: &str = "llama3.2:3b";
const PREFIX: &str = "ollama_mesh_";

/// Every dashboard of `examples/grafana`, by file name.
fn dashboards() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/grafana");
    let mut found = Vec::new();
    for file in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            found.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                json,
            ));
        }
    }
    assert!(!found.is_empty(), "no dashboard in {}", dir.display());
    found
}

/// Every string in `value` (queries, legends, variable definitions…).
fn strings<'a>(value: &'a Value, into: &mut Vec<&'a str>) {
    match value {
        Value::String(text) => into.push(text),
        Value::Array(items) => items.iter().for_each(|item| strings(item, into)),
        Value::Object(fields) => fields.values().for_each(|field| strings(field, into)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The metric names `text` mentions: whole identifiers starting with `ollama_mesh_` (a
/// histogram's series keep their `_bucket`, `_sum` and `_count` suffixes, as in `/metrics`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices(PREFIX) {
        // `xollama_mesh_…` would be another identifier that merely contains the prefix.
        if text[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let len = text[start..]
            .find(|c| !is_ident(c))
            .unwrap_or(text.len() - start);
        names.insert(text[start..start + len].to_owned());
    }
    names
}

/// The series names of a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_prometheus_example_scrapes_the_ops_port_routers_register() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/prometheus/prometheus.yml");
    let config =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for expected in [
        format!("services: [{ROUTER_SERVICE_NAME}]"),
        format!("__meta_consul_service_metadata_{OPS_PORT_META}"),
    ] {
        assert!(
            config.contains(&expected),
            "{} lacks {expected}",
            path.display()
        );
    }
}

#[test]
fn metric_names_are_whole_identifiers() {
    let expr = r#"histogram_quantile(0.9, sum by (le) (rate(ollama_mesh_tokens_per_second_bucket{job=~"$job"}[5m]))) / xollama_mesh_no + ollama_mesh_backends"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        [
            "ollama_mesh_backends",
            "ollama_mesh_tokens_per_second_bucket"
        ]
    );
}

#[tokio::test]
async fn every_dashboard_metric_is_exported_by_the_router() {
    let consul = ConsulDev::start().await;
    let client = consul_client(&consul);
    let nodes = [
        SimNode::with_models(&[MODEL]).await,
        SimNode::with_models(&[MODEL, "qwen2.5:7b"]).await,
    ];
    for (i, node) in nodes.iter().enumerate() {
        let registration = sidecar_registration(&format!("sim-{i}"), node.addr(), &[MODEL]);
        client.register_service(&registration).await.unwrap();
    }
    // Registered with the model loaded, refusing connections: the scheduler's first choice,
    // and requests sent there are retried.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let mut dead = sidecar_registration("dead", dead_addr, &[MODEL]);
    dead.meta.insert("models_loaded".into(), MODEL.into());
    client.register_service(&dead).await.unwrap();

    let config = WatchConfig {
        wait: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        ..WatchConfig::default()
    };
    let discovery = Arc::new(Discovery::start(client, "ollama", config, None));
    tokio::time::timeout(Duration::from_secs(10), async {
        while discovery.backends().len() < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("discovery lists the three instances");
    let router = Router::with_fleet(discovery.clone(), settings()).await;

    // Generations until one of them was retried off the dead instance.
    let mut retried = false;
    for _ in 0..40 {
        let answer = post(
            &router.url("/api/generate"),
            json!({"model": MODEL, "prompt": "hi", "stream": false}),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
        let metrics = Metrics::new().encode();
        if metrics.contains("ollama_mesh_retries_total{") {
            retried = true;
            break;
        }
    }
    assert!(retried, "no request was retried off the dead instance");
    let missing = post(
        &router.url("/api/generate"),
        json!({"model": "nobody-has-this"}),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let guarded =
        Router::with_keys(Vec::new(), settings(), key_store(&[("ci", "om-ci", "")])).await;
    let refused = call(Method::GET, &guarded.url("/api/tags"), "").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    mesh_metrics::handshake(mesh_metrics::Side::Client, true);
    mesh_metrics::denied("web");
    mesh_metrics::certificate_expiry(
        "ollama-mesh-router",
        SystemTime::now() + Duration::from_secs(86_400),
    );
    let _open = mesh_metrics::OpenConnection::new();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = listener.local_addr().unwrap();
    let fleet: Arc<dyn Fleet> = discovery;
    tokio::spawn(ops::serve(
        listener,
        fleet.clone(),
        ollama_mesh_router::Scheduler::new(fleet, Default::default()),
        Metrics::new(),
        None,
        std::future::pending(),
    ));
    let (status, text) = http::get(ops_addr, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    let exported = exported(&text);

    for (file, dashboard) in dashboards() {
        let mut texts = Vec::new();
        strings(&dashboard, &mut texts);
        let queried: BTreeSet<String> = texts.iter().flat_map(|t| metric_names(t)).collect();
        assert!(
            queried.len() >= 10,
            "{file}: only {} metrics found in its queries: {queried:?}",
            queried.len()
        );
        let unknown: Vec<&String> = queried.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics the router does not export: {unknown:?}\n\
             exported: {exported:?}"
        );
    }
    router.stop().await;
    guarded.stop().await;
}
