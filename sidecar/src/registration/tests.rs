use clap::Parser as _;
use ollama_mesh_consul::ConsulSettings;
use ollama_mesh_ollama_client::LoadedModel;

use super::*;
use crate::config::Args;

fn config(extra: &[&str]) -> SidecarConfig {
    let mut argv = vec![
        "ollama-mesh-sidecar",
        "--instance-id",
        "gpu-a",
        "--parallel-slots",
        "4",
    ];
    argv.extend_from_slice(extra);
    SidecarConfig::from_args(
        &Args::try_parse_from(argv).unwrap(),
        ConsulSettings::default(),
    )
    .unwrap()
}

fn healthy() -> Observation {
    Observation {
        ollama: Some(NodeState {
            version: "0.17.4".into(),
            models_on_disk: vec!["llama3.2:3b".into(), "qwen2.5:7b".into()],
            models_loaded: vec![LoadedModel {
                name: "llama3.2:3b".into(),
                size_vram: 3 << 30,
            }],
        }),
        gpu: Some(GpuInfo {
            name: Some("NVIDIA GeForce RTX 4090".into()),
            count: 2,
            vram_total_mib: 49_128,
        }),
        ..Observation::default()
    }
}

#[test]
fn the_summary_reads_like_a_sentence_for_operators() {
    let Heartbeat { status, output } = heartbeat(&healthy());
    assert_eq!(status, CheckStatus::Passing);
    assert_eq!(
        output,
        "ollama 0.17.4 · 2× NVIDIA GeForce RTX 4090 48 GiB · loaded: llama3.2:3b · 2 models on disk"
    );
}

#[test]
fn gpu_trouble_warns_and_ollama_trouble_is_critical() {
    let mut observed = healthy();
    observed.gpu_error = Some("nvidia-smi did not finish within 10s".into());
    let Heartbeat { status, output } = heartbeat(&observed);
    assert_eq!(status, CheckStatus::Warning);
    assert!(
        output.starts_with(
            "GPU probe failing (nvidia-smi did not finish within 10s) · ollama 0.17.4"
        ),
        "{output}"
    );

    observed.ollama_error = Some("connection refused".into());
    let Heartbeat { status, output } = heartbeat(&observed);
    assert_eq!(status, CheckStatus::Critical);
    assert_eq!(output, "Ollama unreachable: connection refused");
    assert_eq!(
        heartbeat(&Observation::default()).status,
        CheckStatus::Critical
    );
}

#[test]
fn weight_is_capacity_unless_set() {
    let config = config(&[]);
    let meta = node_meta(&config, &healthy());
    assert_eq!(
        weights(&config, &meta),
        Weights {
            passing: 8,
            warning: 1
        }
    );
    let cpu = node_meta(&config, &Observation::default());
    assert_eq!(weights(&config, &cpu).passing, 4, "no GPU counts as one");
    let fixed = self::config(&["--weight", "3", "--warning-weight", "0"]);
    assert_eq!(
        weights(&fixed, &meta),
        Weights {
            passing: 3,
            warning: 0
        }
    );
}

#[test]
fn the_service_definition_carries_both_checks_and_the_contract() {
    let config = config(&["--ollama-url", "http://127.0.0.1:11434"]);
    let service = service(&config, &node_meta(&config, &healthy()), &healthy());
    assert_eq!(service.id, "gpu-a");
    assert_eq!(service.tags, ["ollama-mesh"]);
    assert_eq!(service.meta["models_loaded"], "llama3.2:3b");
    assert_eq!(service.checks.len(), 2);
    let http = &service.checks[0];
    assert!(
        matches!(&http.kind, CheckKind::Http { url, .. } if url == "http://127.0.0.1:11434/api/version")
    );
    let ttl = &service.checks[1];
    assert_eq!(ttl.check_id, "gpu-a:heartbeat");
    assert_eq!(ttl.status, Some(CheckStatus::Passing));
    assert!(ttl.deregister_critical_after.is_some());
    assert!(service.checks.iter().all(|c| !c.notes.is_empty()));
}

#[test]
fn mesh_mode_registers_connect_native_on_the_mesh_port_and_checks_ollama_directly() {
    let config = config(&["--mesh", "--mesh-listen", "0.0.0.0:11444"]);
    let service = service(&config, &node_meta(&config, &healthy()), &healthy());
    assert_eq!(service.connect, Some(ConnectSettings { native: true }));
    assert_eq!(service.port, 11444);
    assert!(
        matches!(&service.checks[0].kind, CheckKind::Http { url, .. } if url == "http://127.0.0.1:11434/api/version")
    );

    let plain = self::config(&[]);
    let service = super::service(&plain, &node_meta(&plain, &healthy()), &healthy());
    assert_eq!(service.connect, None);
    assert_eq!(service.port, 11434);
}

#[test]
fn a_summary_needs_a_registration_to_reach_the_catalog_unless_the_status_changed() {
    let passing = |output: &str| Heartbeat::new(CheckStatus::Passing, output);
    let mut copy = SummaryCopy::default();

    // A registration from scratch, then the first report: the agent may have held an earlier
    // run's heartbeat, so the catalog's copy is unknown until a registration carries it.
    copy.registered(true);
    copy.reported(&passing("nothing loaded"));
    assert!(copy.catalog_lags() && copy.catalog_unknown());
    copy.registered(false);
    assert!(!copy.catalog_lags() && !copy.catalog_unknown());

    // The same report again changes nothing.
    copy.reported(&passing("nothing loaded"));
    assert!(!copy.catalog_lags());

    // A new summary with the same status: the agent would copy it only minutes later.
    copy.reported(&passing("loaded: llama3.2:3b"));
    assert!(copy.catalog_lags() && !copy.catalog_unknown());
    copy.registered(false);
    assert!(!copy.catalog_lags());

    // A status change goes to the catalog at once, summary and all.
    copy.reported(&Heartbeat::new(CheckStatus::Warning, "GPU probe failing"));
    assert!(!copy.catalog_lags());
}
