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
