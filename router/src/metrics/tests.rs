//! The metrics live in one process-wide registry shared by every test running in parallel, so
//! each test uses label values of its own and looks only at those.

use std::sync::Arc;
use std::time::Duration;

use ollama_mesh_consul::health::CheckStatus;
use ollama_mesh_consul::watch::WatchStatus;

use super::*;
use crate::testing::{instance, set};

/// The lines of `text` for metric `name` whose labels contain every one of `labels`.
fn lines<'a>(text: &'a str, name: &str, labels: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .collect()
}

/// The value of the one sample of `name` with these labels.
fn value(text: &str, name: &str, labels: &[&str]) -> f64 {
    let found = lines(text, name, labels);
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0]
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .expect("a number")
}

#[test]
fn a_finished_request_is_counted_with_its_duration() {
    let metrics = Metrics::new();
    metrics.request_finished("chat", "m-request", 200, Duration::from_millis(30));
    metrics.request_finished("chat", "m-request", 200, Duration::from_secs(90));
    metrics.request_finished("chat", "m-request", 503, Duration::from_millis(2));
    let text = metrics.encode();
    let ok = [r#"route="chat""#, r#"model="m-request""#, r#"status="200""#];
    assert_eq!(value(&text, "ollama_mesh_requests_total", &ok), 2.0);
    let busy = [r#"model="m-request""#, r#"status="503""#];
    assert_eq!(value(&text, "ollama_mesh_requests_total", &busy), 1.0);
    let labels = [r#"model="m-request""#];
    assert_eq!(
        value(&text, "ollama_mesh_request_duration_seconds_count", &labels),
        3.0
    );
    // 30 ms and 2 ms are under 50 ms; 90 s is not, but is under 120 s.
    let le = |bucket: &str| {
        let mut labels = labels.to_vec();
        let le = format!(r#"le="{bucket}""#);
        labels.push(&le);
        value(
            &text,
            "ollama_mesh_request_duration_seconds_bucket",
            &labels,
        )
    };
    assert_eq!(le("0.05"), 2.0);
    assert_eq!(le("60"), 2.0);
    assert_eq!(le("120"), 3.0);
    assert_eq!(le("600"), 3.0);
}

#[test]
fn time_to_first_byte_is_a_histogram() {
    let metrics = Metrics::new();
    metrics.first_byte("generate", "m-ttfb", Duration::from_secs(40));
    let text = metrics.encode();
    let labels = [r#"route="generate""#, r#"model="m-ttfb""#];
    assert_eq!(
        value(&text, "ollama_mesh_time_to_first_byte_seconds_sum", &labels),
        40.0
    );
}

#[test]
fn tokens_are_counted_and_their_speed_observed() {
    let metrics = Metrics::new();
    metrics.tokens("m-tokens", "gpu-1", 120, Duration::from_secs(2));
    metrics.tokens("m-tokens", "gpu-1", 30, Duration::ZERO);
    let text = metrics.encode();
    let labels = [r#"model="m-tokens""#, r#"node="gpu-1""#];
    assert_eq!(
        value(&text, "ollama_mesh_tokens_generated_total", &labels),
        150.0
    );
    // Only the request with a duration says anything about speed: 60 tokens/s.
    assert_eq!(
        value(&text, "ollama_mesh_tokens_per_second_count", &labels),
        1.0
    );
    assert_eq!(
        value(&text, "ollama_mesh_tokens_per_second_sum", &labels),
        60.0
    );
}

#[test]
fn retries_are_counted_by_reason() {
    let metrics = Metrics::new();
    metrics.retry("r-retry", "busy");
    metrics.retry("r-retry", "busy");
    metrics.retry("r-retry", "connect");
    let text = metrics.encode();
    let busy = [r#"route="r-retry""#, r#"reason="busy""#];
    assert_eq!(value(&text, "ollama_mesh_retries_total", &busy), 2.0);
    let connect = [r#"route="r-retry""#, r#"reason="connect""#];
    assert_eq!(value(&text, "ollama_mesh_retries_total", &connect), 1.0);
}

#[test]
fn the_fleet_is_counted_by_state_and_departed_instances_lose_their_series() {
    let metrics = Metrics::new();
    let fleet = set(&[
        instance("obs-a"),
        instance("obs-b").with_check("gpu", CheckStatus::Warning),
        instance("obs-c").with_check("_service_maintenance:obs-c", CheckStatus::Critical),
        instance("obs-d").with_check("api", CheckStatus::Critical),
        instance("obs-e"),
    ]);
    let busy = fleet.get("obs-a").unwrap().clone();
    busy.in_flight().acquire();
    busy.in_flight().acquire();
    metrics.observe_fleet(&fleet);
    let text = metrics.encode();
    // The state gauges are process-wide: another test observing another set at the same time
    // would change them, and this is the only test that observes a set.
    assert_eq!(
        value(&text, "ollama_mesh_backends", &[r#"state="active""#]),
        2.0
    );
    assert_eq!(
        value(&text, "ollama_mesh_backends", &[r#"state="degraded""#]),
        1.0
    );
    assert_eq!(
        value(&text, "ollama_mesh_backends", &[r#"state="draining""#]),
        1.0
    );
    assert_eq!(
        value(&text, "ollama_mesh_backends", &[r#"state="out""#]),
        1.0
    );
    let a = [r#"instance="obs-a""#, r#"node="node-obs-a""#];
    assert_eq!(value(&text, "ollama_mesh_backend_in_flight", &a), 2.0);
    assert_eq!(
        value(
            &text,
            "ollama_mesh_backend_in_flight",
            &[r#"instance="obs-e""#]
        ),
        0.0
    );
    busy.in_flight().release();
    busy.in_flight().release();

    metrics.observe_fleet(&set(&[instance("obs-a")]));
    let text = metrics.encode();
    assert!(lines(
        &text,
        "ollama_mesh_backend_in_flight",
        &[r#"instance="obs-e""#]
    )
    .is_empty());
    assert_eq!(value(&text, "ollama_mesh_backend_in_flight", &a), 0.0);
    assert_eq!(
        value(&text, "ollama_mesh_backends", &[r#"state="active""#]),
        1.0
    );
    assert_eq!(
        value(&text, "ollama_mesh_backends", &[r#"state="out""#]),
        0.0
    );
}

#[test]
fn watch_status_is_exported() {
    let metrics = Metrics::new();
    let never_connected = Arc::new(WatchStatus::default());
    metrics.observe_watches(&[("w-never", never_connected)]);
    let text = metrics.encode();
    let never = [r#"watch="w-never""#];
    assert_eq!(
        value(&text, "ollama_mesh_consul_watch_connected", &never),
        0.0
    );
    assert_eq!(
        value(&text, "ollama_mesh_consul_watch_errors_total", &never),
        0.0
    );
    assert_eq!(
        value(&text, "ollama_mesh_consul_watch_last_index", &never),
        0.0
    );
    assert!(
        lines(
            &text,
            "ollama_mesh_consul_watch_seconds_since_contact",
            &never
        )
        .is_empty(),
        "no staleness before the first contact"
    );
}

#[test]
fn state_names_follow_the_routing_state() {
    let fleet = set(&[
        instance("n-a"),
        instance("n-b").with_check("gpu", CheckStatus::Warning),
        instance("n-c").with_check("_node_maintenance", CheckStatus::Critical),
        instance("n-d").with_check("api", CheckStatus::Critical),
    ]);
    let names: Vec<&str> = fleet
        .backends()
        .iter()
        .map(|b| state_name(b.state()))
        .collect();
    assert_eq!(names, ["active", "degraded", "draining", "out"]);
}

#[test]
fn every_metric_is_in_the_default_registry() {
    let metrics = Metrics::new();
    metrics.request_finished("r-registry", "m-registry", 200, Duration::from_secs(1));
    metrics.first_byte("r-registry", "m-registry", Duration::from_secs(1));
    metrics.tokens("m-registry", "n-registry", 10, Duration::from_secs(1));
    metrics.retry("r-registry", "reset");
    metrics.observe_watches(&[("w-registry", Arc::new(WatchStatus::default()))]);
    let gathered: Vec<String> = prometheus::gather()
        .iter()
        .map(|family| family.name().to_owned())
        .collect();
    for name in [
        "ollama_mesh_requests_total",
        "ollama_mesh_request_duration_seconds",
        "ollama_mesh_time_to_first_byte_seconds",
        "ollama_mesh_tokens_generated_total",
        "ollama_mesh_tokens_per_second",
        "ollama_mesh_retries_total",
        "ollama_mesh_consul_watch_errors_total",
        "ollama_mesh_consul_watch_last_index",
        "ollama_mesh_consul_watch_connected",
    ] {
        assert!(
            gathered.iter().any(|n| n == name),
            "{name} missing: {gathered:?}"
        );
    }
    assert!(metrics
        .encode()
        .contains("# TYPE ollama_mesh_request_duration_seconds histogram"));
}
