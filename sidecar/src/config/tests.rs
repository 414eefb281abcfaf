use clap::Parser as _;

use super::*;

fn parse(extra: &[&str]) -> Result<SidecarConfig, ConfigError> {
    let mut argv = vec!["ollama-mesh-sidecar", "--node-name", "gpu-01"];
    argv.extend_from_slice(extra);
    let args = Args::try_parse_from(argv).expect("flags parse");
    SidecarConfig::from_args(&args, ConsulSettings::default())
}

#[test]
fn defaults_fit_a_local_ollama_and_agent() {
    let config = parse(&[]).unwrap();
    assert_eq!(config.ollama_url, "http://127.0.0.1:11434");
    assert_eq!(config.instance_id.as_str(), "ollama-gpu-01-11434");
    assert_eq!(config.service_name, "ollama");
    assert_eq!(
        config.advertise_host, "127.0.0.1",
        "the agent is local, so is the advertised address"
    );
    assert_eq!(config.advertise_port, 11434);
    assert_eq!(config.parallel_slots, 1);
    assert!(matches!(config.gpu_probe, GpuProbe::NvidiaSmi { .. }));
    assert_eq!(config.drain_timeout, Duration::from_secs(30));
    assert_eq!(config.mesh, None, "mesh mode is opt-in");
    assert_eq!(config.metrics_listen, None);
}

#[test]
fn mesh_mode_advertises_the_mesh_port_and_forwards_to_ollama() {
    let config = parse(&["--mesh"]).unwrap();
    let mesh = config.mesh.as_ref().unwrap();
    assert_eq!(mesh.listen, "0.0.0.0:11444".parse().unwrap());
    assert_eq!(
        (mesh.ollama_host.as_str(), mesh.ollama_port),
        ("127.0.0.1", 11434)
    );
    assert_eq!(
        config.advertise_port, 11444,
        "routers must come through the mesh"
    );
    assert_eq!(
        config.instance_id.as_str(),
        "ollama-gpu-01-11434",
        "the instance ID stays the same with or without mesh"
    );
    assert!(
        config.summary().contains("mesh on 0.0.0.0:11444"),
        "{}",
        config.summary()
    );

    let config = parse(&[
        "--mesh",
        "--mesh-listen",
        "[::]:8443",
        "--ollama-url",
        "http://[::1]:11500",
    ])
    .unwrap();
    assert_eq!(config.advertise_port, 8443);
    assert_eq!(config.mesh.unwrap().ollama_host, "::1");

    let config = parse(&["--mesh", "--ollama-url", "http://localhost:11434"]).unwrap();
    assert!(config.mesh.is_some(), "localhost is loopback");

    let explicit = parse(&["--mesh", "--advertise", "http://10.0.0.5:443"]).unwrap();
    assert_eq!(explicit.advertise_port, 443, "an explicit --advertise wins");
}

#[test]
fn mesh_mode_refuses_an_ollama_reachable_around_it() {
    for url in [
        "http://10.0.0.5:11434",
        "http://0.0.0.0:11434",
        "http://gpu-01:11434",
    ] {
        let err = parse(&["--mesh", "--ollama-url", url]).unwrap_err();
        assert_eq!(err.field, "ollama-url", "{url}: {err}");
        assert!(
            err.to_string().contains("OLLAMA_HOST=127.0.0.1:11434"),
            "{err}"
        );
    }
    assert!(
        parse(&["--ollama-url", "http://10.0.0.5:11434"]).is_ok(),
        "without mesh a remote Ollama is fine"
    );
}

#[test]
fn metrics_can_be_served_with_or_without_mesh() {
    let config = parse(&["--metrics-listen", "127.0.0.1:9464"]).unwrap();
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert!(config
        .summary()
        .contains("metrics http://127.0.0.1:9464/metrics"));
    assert!(config.summary().contains("mesh off"));
}

#[test]
fn advertise_and_instance_id_can_be_set() {
    let config = parse(&[
        "--advertise",
        "http://10.1.2.3:8080",
        "--instance-id",
        "gpu-a",
        "--gpu-probe",
        "none",
    ])
    .unwrap();
    assert_eq!(
        (config.advertise_host.as_str(), config.advertise_port),
        ("10.1.2.3", 8080)
    );
    assert_eq!(config.instance_id.as_str(), "gpu-a");
    assert_eq!(config.gpu_probe, GpuProbe::None);
}

#[test]
fn invalid_values_name_the_flag() {
    for (flags, field) in [
        (vec!["--ollama-url", "ftp://x"], "ollama-url"),
        (vec!["--advertise", "not a url"], "advertise"),
        (vec!["--instance-id", "_nomad-task-abc"], "instance-id"),
        (vec!["--service-name", "bad name"], "service-name"),
        (
            vec!["--deregister-critical-after", "30s"],
            "deregister-critical-after",
        ),
        (
            vec!["--heartbeat-ttl", "1s", "--poll-interval", "5s"],
            "heartbeat-ttl",
        ),
        (vec!["--parallel-slots", "0"], "parallel-slots"),
        (vec!["--poll-interval", "0s"], "poll-interval"),
        (
            vec!["--preemption-notice-url", "nope"],
            "preemption-notice-url",
        ),
        (vec!["--consul-addr", "ftp://consul"], "consul-addr"),
        (vec!["--mesh", "--mesh-listen", "11444"], "mesh-listen"),
        (vec!["--mesh", "--mesh-listen", "0.0.0.0:0"], "mesh-listen"),
        (vec!["--metrics-listen", "localhost:9100"], "metrics-listen"),
    ] {
        let err = parse(&flags).unwrap_err();
        assert_eq!(err.field, field, "{flags:?}: {err}");
        assert!(
            err.to_string().starts_with(&format!("--{field}: ")),
            "{err}"
        );
    }
}

#[test]
fn the_summary_never_shows_the_token() {
    let args = Args::try_parse_from(["ollama-mesh-sidecar"]).unwrap();
    let env = ConsulSettings {
        token: Some("s3cr3t-token".into()),
        ..ConsulSettings::default()
    };
    let summary = SidecarConfig::from_args(&args, env).unwrap().summary();
    assert!(!summary.contains("s3cr3t"), "{summary}");
    assert!(summary.contains("with ACL token"), "{summary}");
}
