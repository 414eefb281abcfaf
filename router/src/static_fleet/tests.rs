use ollama_mesh_consul::contract::RoutingState;
use ollama_mesh_ollama_client::LoadedModel;

use super::*;
use crate::backend::MeshPolicy;

fn reading(models: &[&str], loaded: &[&str]) -> NodeState {
    NodeState {
        version: "0.17.4".into(),
        models_on_disk: models.iter().map(|m| m.to_string()).collect(),
        models_loaded: loaded
            .iter()
            .map(|m| LoadedModel {
                name: m.to_string(),
                size_vram: 0,
            })
            .collect(),
    }
}

fn build(
    backend: &StaticBackend,
    last_good: Option<&NodeState>,
    error: Option<&str>,
) -> BackendSet {
    BackendSet::build(
        &[backend.entry(last_good, error)],
        &[],
        &BackendSet::default(),
        MeshPolicy::default(),
    )
}

#[test]
fn urls_are_validated_and_named_after_host_and_port() {
    let backend = StaticBackend::parse("http://10.0.0.5:11434/").unwrap();
    assert_eq!(backend.url(), "http://10.0.0.5:11434");
    assert_eq!(backend.id().as_str(), "static-10.0.0.5-11434");
    let v6 = StaticBackend::parse("http://[::1]:11434").unwrap();
    assert_eq!(v6.id().as_str(), "static---1-11434");
    assert_eq!(
        StaticBackend::parse("http://gpu-1").unwrap().id().as_str(),
        "static-gpu-1-80"
    );
    let behind_nginx = StaticBackend::parse("https://gpu-1").unwrap();
    assert!(behind_nginx.tls());
    assert_eq!(behind_nginx.id().as_str(), "static-gpu-1-443");
    assert!(!backend.tls());
    for bad in [
        "gpu-1:11434",
        "ftp://gpu-1:11434",
        "http://gpu-1:11434/api",
        "http://gpu-1:11434/?x=1",
        "http://:11434",
        "not a url",
    ] {
        let error = StaticBackend::parse(bad).expect_err(bad);
        assert_eq!(error.url, bad);
    }
}

#[test]
fn an_answering_backend_is_active_with_what_it_has() {
    let backend = StaticBackend::parse("http://10.0.0.5:11434").unwrap();
    let set = build(
        &backend,
        Some(&reading(&["llama3.2:3b", "qwen3"], &["qwen3"])),
        None,
    );
    let b = &set.backends()[0];
    assert_eq!(&**b.id(), "static-10.0.0.5-11434");
    assert_eq!(b.address(), "10.0.0.5:11434");
    assert!(b.state().accepts_new_work());
    assert!(b.has_model("llama3.2:3b"));
    assert!(b.has_model("qwen3:latest"));
    assert!(b.has_loaded("qwen3"));
    assert!(!b.has_loaded("llama3.2:3b"));
    let meta = b.meta().unwrap();
    assert_eq!(meta.ollama_version.as_deref(), Some("0.17.4"));
}

#[test]
fn a_backend_that_stops_answering_is_out_and_keeps_its_last_models() {
    let backend = StaticBackend::parse("http://10.0.0.5:11434").unwrap();
    let set = build(
        &backend,
        Some(&reading(&["llama3.2:3b"], &[])),
        Some("connection refused"),
    );
    let b = &set.backends()[0];
    match b.state() {
        RoutingState::Out { reason } => assert!(reason.contains("connection refused"), "{reason}"),
        other => panic!("expected out, got {other:?}"),
    }
    assert!(b.has_model("llama3.2:3b"));
}

#[test]
fn a_backend_never_read_is_out() {
    let backend = StaticBackend::parse("http://10.0.0.5:11434").unwrap();
    let set = build(&backend, None, None);
    assert!(matches!(
        set.backends()[0].state(),
        RoutingState::Out { .. }
    ));
}
