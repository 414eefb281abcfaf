use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ollama_mesh_consul::ConsulSettings;

use super::*;

fn parse(argv: &[&str]) -> Args {
    let mut full = vec!["ollama-mesh-router"];
    full.extend_from_slice(argv);
    Args::try_parse_from(full).expect("flags parse")
}

fn config(argv: &[&str]) -> Result<RouterConfig, ConfigError> {
    RouterConfig::from_args(&parse(argv), ConsulSettings::default())
}

fn error(argv: &[&str]) -> String {
    config(argv).expect_err("invalid").to_string()
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ollama-mesh-router-config-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn defaults_are_the_documented_ones() {
    let config = config(&["--allow-anonymous"]).unwrap();
    assert_eq!(
        config.listen,
        "0.0.0.0:11434".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        config.ops_listen,
        "127.0.0.1:11435".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.service_name, "ollama");
    assert!(config.static_backends.is_empty());
    assert_eq!(config.consul.address.to_string(), "http://127.0.0.1:8500");
    assert_eq!(
        config.timeouts,
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(600),
            first_byte: Duration::from_secs(30),
            stream_idle: Duration::from_secs(30),
        }
    );
    assert_eq!(config.schedule.retries, 2);
    assert_eq!(
        config.threads,
        std::thread::available_parallelism().unwrap()
    );
    assert_eq!(config.grace_period, Duration::from_secs(30));
    assert!(!config.enable_management);
    assert!(!config.register);
    assert_eq!(config.max_body_size, 64 * 1024 * 1024);
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.keys, KeySources::default());
}

#[test]
fn every_flag_is_read() {
    let config = config(&[
        "--listen=127.0.0.1:8080",
        "--ops-listen=[::1]:9090",
        "--service-name=gpu-pool",
        "--backend=http://10.0.0.5:11434",
        "--backend",
        "http://gpu-2:11434/",
        "--consul-addr=https://consul.internal:8501",
        "--connect-timeout=2s",
        "--read-timeout=15m",
        "--first-byte-timeout=45s",
        "--stream-idle-timeout=1m",
        "--retries=0",
        "--threads=3",
        "--grace-period=2m",
        "--enable-management",
        "--register",
        "--max-body-size=10MB",
        "--log-format=json",
    ])
    .unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.ops_listen.to_string(), "[::1]:9090");
    assert_eq!(config.service_name, "gpu-pool");
    let urls: Vec<&str> = config.static_backends.iter().map(|b| b.url()).collect();
    assert_eq!(urls, ["http://10.0.0.5:11434", "http://gpu-2:11434"]);
    assert_eq!(
        config.consul.address.to_string(),
        "https://consul.internal:8501"
    );
    assert_eq!(
        config.timeouts,
        Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(900),
            first_byte: Duration::from_secs(45),
            stream_idle: Duration::from_secs(60),
        }
    );
    assert_eq!(config.schedule.retries, 0);
    assert_eq!(config.threads.get(), 3);
    assert_eq!(config.grace_period, Duration::from_secs(120));
    assert!(config.enable_management);
    assert!(config.register);
    assert_eq!(config.max_body_size, 10_000_000);
    assert_eq!(config.log_format, LogFormat::Json);
}

#[test]
fn boolean_flags_take_an_explicit_value_too() {
    let args = parse(&["--register=false", "--enable-management", "true"]);
    assert_eq!(args.settings.register, Some(false));
    assert_eq!(args.settings.enable_management, Some(true));
    // As environment variables are often written.
    let args = parse(&["--register=yes", "--enable-management=0"]);
    assert_eq!(args.settings.register, Some(true));
    assert_eq!(args.settings.enable_management, Some(false));
}

#[test]
fn consul_addr_overrides_consul_http_addr_and_the_token_is_kept() {
    let env = ConsulSettings {
        http_addr: Some("10.1.1.1:8500".into()),
        token: Some("s3cr3t-token".into()),
        ..ConsulSettings::default()
    };
    let from_env = RouterConfig::from_args(&parse(&["--allow-anonymous"]), env.clone()).unwrap();
    assert_eq!(from_env.consul.address.to_string(), "http://10.1.1.1:8500");
    let flagged = RouterConfig::from_args(
        &parse(&["--consul-addr=127.0.0.1:18500", "--allow-anonymous"]),
        env,
    )
    .unwrap();
    assert_eq!(flagged.consul.address.to_string(), "http://127.0.0.1:18500");
    assert_eq!(flagged.consul.token.as_deref(), Some("s3cr3t-token"));
}

#[test]
fn the_file_gives_defaults_that_flags_override() {
    let file = temp_file(
        "precedence",
        r#"
            listen = "127.0.0.1:7000"
            service-name = "from-file"
            backend = ["http://10.0.0.1:11434", "http://10.0.0.2:11434"]
            retries = 5
            register = true
            max-body-size = "1GiB"
            log-format = "json"
            read-timeout = "30s"
        "#,
    );
    let path = file.to_str().unwrap();
    let config = config(&[
        &format!("--config={path}"),
        "--listen=127.0.0.1:7001",
        "--register=false",
    ])
    .unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:7001", "flag wins");
    assert!(
        !config.register,
        "an explicit false flag wins over the file's true"
    );
    assert_eq!(config.service_name, "from-file");
    assert_eq!(config.static_backends.len(), 2);
    assert_eq!(config.schedule.retries, 5);
    assert_eq!(config.max_body_size, 1 << 30);
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.timeouts.read, Duration::from_secs(30));

    let overridden = self::config(&[
        &format!("--config={path}"),
        "--backend=http://10.9.9.9:11434",
    ])
    .unwrap();
    let urls: Vec<&str> = overridden.static_backends.iter().map(|b| b.url()).collect();
    assert_eq!(
        urls,
        ["http://10.9.9.9:11434"],
        "flags replace the file's list"
    );
    std::fs::remove_file(file).unwrap();
}

#[test]
fn file_errors_name_the_file_and_the_key() {
    let file = temp_file(
        "unknown-key",
        "listen = \"127.0.0.1:7000\"\nlisten-port = 7\n",
    );
    let message = error(&[&format!("--config={}", file.display())]);
    assert!(message.starts_with("--config "), "{message}");
    assert!(message.contains("listen-port"), "{message}");
    std::fs::remove_file(file).unwrap();

    let missing = error(&["--config=/nonexistent/router.toml"]);
    assert!(missing.contains("/nonexistent/router.toml"), "{missing}");
}

#[test]
fn invalid_values_name_their_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--listen=11434"], "--listen: "),
        (&["--ops-listen=localhost:x"], "--ops-listen: "),
        (
            &["--listen=127.0.0.1:9000", "--ops-listen=127.0.0.1:9000"],
            "--ops-listen: must differ",
        ),
        (&["--service-name=no spaces"], "--service-name: "),
        (&["--backend=ftp://gpu:11434"], "--backend: "),
        (&["--backend=http://gpu:11434/api"], "--backend: "),
        (
            &["--backend=http://gpu:1", "--backend=http://gpu:1/"],
            "--backend: ",
        ),
        (&["--consul-addr=ftp://consul"], "--consul-addr: "),
        (&["--connect-timeout=soon"], "--connect-timeout: "),
        (
            &["--connect-timeout=0s"],
            "--connect-timeout: must be greater than zero",
        ),
        (&["--read-timeout=-1s"], "--read-timeout: "),
        (&["--read-timeout=0s"], "--read-timeout: "),
        (&["--first-byte-timeout=0s"], "--first-byte-timeout: "),
        (&["--stream-idle-timeout=soon"], "--stream-idle-timeout: "),
        (&["--threads=0"], "--threads: must be at least 1"),
        (&["--grace-period=forever"], "--grace-period: "),
        (&["--max-body-size=64 parsecs"], "--max-body-size: "),
        (
            &["--max-body-size=0"],
            "--max-body-size: must be greater than zero",
        ),
        (&["--max-body-size=99999999999GiB"], "--max-body-size: "),
    ];
    for (argv, expected) in cases {
        let message = error(argv);
        assert!(
            message.starts_with(expected),
            "{argv:?}: {message:?} should start with {expected:?}"
        );
    }
}

#[test]
fn a_zero_grace_period_is_allowed() {
    assert_eq!(
        config(&["--grace-period=0s", "--allow-anonymous"])
            .unwrap()
            .grace_period,
        Duration::ZERO
    );
}

#[test]
fn port_zero_may_be_shared_by_both_listeners() {
    let config = config(&["--listen=127.0.0.1:0", "--ops-listen=127.0.0.1:0"]).unwrap();
    assert_eq!(config.listen, config.ops_listen);
}

#[test]
fn sizes_read_binary_and_decimal_units() {
    assert_eq!(parse_size("1048576"), Ok(1 << 20));
    assert_eq!(parse_size("64MiB"), Ok(64 << 20));
    assert_eq!(parse_size("64M"), Ok(64 << 20));
    assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
    assert_eq!(parse_size("512KiB"), Ok(512 << 10));
    assert_eq!(parse_size("10MB"), Ok(10_000_000));
    assert_eq!(parse_size("3kB"), Ok(3_000));
    assert_eq!(parse_size("100B"), Ok(100));
    assert!(parse_size("MiB").is_err());
    assert!(parse_size("1.5GiB").is_err());
    assert!(parse_size("12TiB").is_err());
}

#[test]
fn the_summary_says_what_runs_and_hides_the_token() {
    let env = ConsulSettings {
        token: Some("s3cr3t-token".into()),
        ..ConsulSettings::default()
    };
    let config = RouterConfig::from_args(
        &parse(&[
            "--backend=http://10.0.0.5:11434",
            "--read-timeout=2h",
            "--keys-from-consul",
        ]),
        env,
    )
    .unwrap();
    let summary = config.summary();
    assert!(!summary.contains("s3cr3t-token"), "{summary}");
    assert!(summary.contains("with ACL token"), "{summary}");
    assert!(
        summary.contains("static: http://10.0.0.5:11434"),
        "{summary}"
    );
    assert!(summary.contains("listen 0.0.0.0:11434"), "{summary}");
    assert!(summary.contains("read 2h"), "{summary}");
    assert!(summary.contains("API keys from Consul KV"), "{summary}");
}

#[test]
fn without_keys_only_loopback_or_an_explicit_flag_is_served() {
    let refused = error(&[]);
    assert!(
        refused.starts_with("--allow-anonymous: no API key source"),
        "{refused}"
    );
    for allowed in [
        &["--listen=127.0.0.1:11434"][..],
        &["--listen=[::1]:11434"],
        &["--allow-anonymous"],
        &["--keys-from-consul"],
        &["--keys-file=/etc/ollama-mesh/keys.json"],
    ] {
        assert!(config(allowed).is_ok(), "{allowed:?}");
    }
    let ops = error(&["--listen=127.0.0.1:1", "--ops-listen=0.0.0.0:9"]);
    assert!(ops.contains("--ops-listen 0.0.0.0:9 is reachable"), "{ops}");
    let keys = config(&["--keys-file=/k.json"]).unwrap().keys;
    assert_eq!(keys.file.as_deref(), Some(Path::new("/k.json")));
    assert!(keys.required() && !keys.consul);
    assert!(error(&["--keys-from-consul", "--allow-anonymous"]).starts_with("--allow-anonymous: "));
    assert!(error(&["--keys-from-consul", "--keys-file=/k.json"]).starts_with("--keys-file: "));
}

#[test]
fn keygen_is_a_subcommand_beside_the_flags() {
    let args = parse(&[
        "keygen",
        "--name=ci",
        "--scope=admin",
        "--models=llama3*,qwen2.5",
        "--expires=2027-01-01T00:00:00Z",
    ]);
    let Some(Command::Keygen(keygen)) = args.command else {
        panic!("keygen parsed: {args:?}");
    };
    assert_eq!(keygen.name, "ci");
    assert_eq!(keygen.models, ["llama3*", "qwen2.5"]);
    let routing = parse(&["--listen=127.0.0.1:1", "--keys-from-consul"]);
    assert_eq!(routing.command, None);
    assert_eq!(routing.settings.keys_from_consul, Some(true));
}

#[test]
fn client_limits_are_read_and_bounded_by_pingora() {
    let set = config(&[
        "--listen=127.0.0.1:1",
        "--client-timeout=5s",
        "--max-header-size=16KiB",
    ])
    .unwrap();
    assert_eq!(set.client_timeout, Duration::from_secs(5));
    assert_eq!(set.max_header_size, 16 << 10);
    let defaults = config(&["--listen=127.0.0.1:1"]).unwrap();
    assert_eq!(defaults.client_timeout, Duration::from_secs(60));
    assert_eq!(defaults.max_header_size, 64 << 10);
    assert!(error(&["--listen=127.0.0.1:1", "--max-header-size=2MiB"])
        .starts_with("--max-header-size: must be at most"));
    assert!(
        error(&["--listen=127.0.0.1:1", "--client-timeout=0s"]).starts_with("--client-timeout: ")
    );
}

#[test]
fn tls_needs_a_certificate_and_its_key() {
    let tls = config(&[
        "--listen=127.0.0.1:1",
        "--tls-cert=/c.pem",
        "--tls-key=/k.pem",
        "--tls-client-ca=/ca.pem",
    ])
    .unwrap()
    .tls
    .unwrap();
    assert_eq!(tls.cert, Path::new("/c.pem"));
    assert_eq!(tls.key, Path::new("/k.pem"));
    assert_eq!(tls.client_ca.as_deref(), Some(Path::new("/ca.pem")));
    assert!(error(&["--listen=127.0.0.1:1", "--tls-cert=/c.pem"]).starts_with("--tls-key: "));
    assert!(error(&["--listen=127.0.0.1:1", "--tls-key=/k.pem"]).starts_with("--tls-cert: "));
    assert!(error(&["--listen=127.0.0.1:1", "--tls-client-ca=/ca.pem"]).starts_with("--tls-cert: "));
}

/// A PEM CA certificate made for the test, in a file.
/// A listener that needs no key source.
const LOOPBACK: &str = "--listen=127.0.0.1:1";

fn ca_file(name: &str) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    temp_file(name, &params.self_signed(&key).unwrap().pem())
}

#[test]
fn backend_tls_is_off_by_default_and_on_with_the_flag_or_https_backends() {
    let ca = ca_file("backend-ca");
    let ca_flag = format!("--backend-ca={}", ca.display());

    let plain = config(&[LOOPBACK]).unwrap();
    assert!(plain.backend_tls.is_none());
    assert!(plain.summary().contains("TLS to the nodes off"));

    let discovered = config(&[LOOPBACK, "--backend-tls", &ca_flag]).unwrap();
    assert_eq!(
        discovered.backend_tls.as_ref().and_then(|t| t.ca_file()),
        Some(ca.as_path())
    );
    assert!(discovered
        .summary()
        .contains(&format!("TLS to the nodes on, trusting {}", ca.display())));
    assert!(config(&[LOOPBACK, "--backend-tls=false", &ca_flag]).is_err());

    let static_https = config(&[
        LOOPBACK,
        "--backend=https://10.0.0.5:11434",
        "--backend=https://gpu-2",
        &ca_flag,
    ])
    .unwrap();
    assert!(static_https.backend_tls.is_some());

    let from_file = temp_file(
        "backend-tls",
        &format!(
            "backend-tls = true\nbackend-ca = {:?}\n",
            ca.display().to_string()
        ),
    );
    let from_file = config(&[LOOPBACK, &format!("--config={}", from_file.display())]).unwrap();
    assert_eq!(
        from_file.backend_tls.as_ref().and_then(|t| t.ca_file()),
        Some(ca.as_path())
    );
}

#[test]
fn backend_tls_contradictions_and_unusable_cas_name_their_flag() {
    let ca = ca_file("backend-ca-errors");
    let ca_flag = format!("--backend-ca={}", ca.display());
    assert!(error(&[
        LOOPBACK,
        "--backend=http://10.0.0.5:11434",
        "--backend=https://10.0.0.6:11434",
        &ca_flag,
    ])
    .starts_with("--backend: "));
    assert!(error(&[
        LOOPBACK,
        "--backend=http://10.0.0.5:11434",
        "--backend-tls",
        &ca_flag
    ])
    .starts_with("--backend-tls: "));
    assert!(error(&[LOOPBACK, &ca_flag]).starts_with("--backend-ca: "));
    assert!(error(&[
        LOOPBACK,
        "--backend-tls",
        "--backend-ca=/nonexistent/ca.pem"
    ])
    .starts_with("--backend-ca /nonexistent/ca.pem: "));
    let empty = temp_file("backend-ca-empty", "not a certificate\n");
    assert!(error(&[
        LOOPBACK,
        "--backend-tls",
        &format!("--backend-ca={}", empty.display())
    ])
    .starts_with(&format!("--backend-ca {}: ", empty.display())));
}

#[test]
fn the_mesh_is_off_by_default_and_takes_its_identity_from_the_flags() {
    let plain = config(&[LOOPBACK]).unwrap();
    assert!(plain.mesh.is_none());
    assert!(plain.summary().contains("mesh off"));

    let mesh = config(&[LOOPBACK, "--mesh"]).unwrap().mesh.unwrap();
    assert_eq!(mesh.service, "ollama-mesh-router");
    assert!(!mesh.allow_plain);

    let custom = config(&[
        LOOPBACK,
        "--mesh",
        "--mesh-service=team-a-router",
        "--mesh-allow-plain",
    ])
    .unwrap();
    assert_eq!(
        custom.mesh,
        Some(MeshSettings {
            service: "team-a-router".into(),
            allow_plain: true
        })
    );
    assert!(custom
        .summary()
        .contains("mesh on, as service \"team-a-router\", plain HTTP to nodes without Connect"));
}

#[test]
fn mesh_contradictions_name_their_flag() {
    assert!(error(&[LOOPBACK, "--mesh-allow-plain"]).starts_with("--mesh-allow-plain: "));
    assert!(error(&[LOOPBACK, "--mesh-service=r"]).starts_with("--mesh-service: "));
    assert!(error(&[LOOPBACK, "--mesh", "--mesh-service=bad name"]).starts_with("--mesh-service: "));
    assert!(
        error(&[LOOPBACK, "--mesh", "--backend=http://10.0.0.5:11434"]).starts_with("--mesh: ")
    );
    assert!(error(&[LOOPBACK, "--mesh", "--backend-tls"]).starts_with("--mesh: "));
}

#[test]
fn static_backends_are_polled_every_two_seconds_unless_told() {
    let default = config(&[LOOPBACK, "--backend=http://10.0.0.5:11434"]).unwrap();
    assert_eq!(default.backend_poll_interval, Duration::from_secs(2));
    let fast = config(&[
        LOOPBACK,
        "--backend=http://10.0.0.5:11434",
        "--backend-poll-interval=200ms",
    ])
    .unwrap();
    assert_eq!(fast.backend_poll_interval, Duration::from_millis(200));
    assert!(
        error(&[LOOPBACK, "--backend-poll-interval=1s"]).starts_with("--backend-poll-interval: ")
    );
    assert!(error(&[
        LOOPBACK,
        "--backend=http://10.0.0.5:11434",
        "--backend-poll-interval=0s"
    ])
    .starts_with("--backend-poll-interval: "));
}

#[test]
fn scheduling_is_learned_by_default_and_every_setting_is_read() {
    let defaults = config(&["--allow-anonymous"]).unwrap();
    assert_eq!(defaults.schedule.policy, Policy::Learned);
    assert_eq!(defaults.schedule.queue_max, 1_000);
    assert_eq!(defaults.schedule.queue_timeout, Duration::from_secs(60));
    let set = config(&[
        "--allow-anonymous",
        "--schedule=least-outstanding",
        "--queue-max=50",
        "--queue-timeout=15s",
        "--retries=1",
    ])
    .unwrap();
    assert_eq!(set.schedule.policy, Policy::LeastOutstanding);
    assert_eq!(set.schedule.queue_max, 50);
    assert_eq!(set.schedule.queue_timeout, Duration::from_secs(15));
    assert_eq!(set.schedule.retries, 1);
    assert!(
        set.summary().contains("schedule least-outstanding"),
        "{}",
        set.summary()
    );
    for (argv, expected) in [
        (
            &["--schedule=fastest"][..],
            "--schedule: \"fastest\" is not a policy",
        ),
        (&["--queue-max=0"][..], "--queue-max: must be at least 1"),
        (
            &["--queue-timeout=0s"][..],
            "--queue-timeout: must be greater than zero",
        ),
    ] {
        let message = error(argv);
        assert!(message.starts_with(expected), "{message}");
    }
}

#[test]
fn slots_are_one_value_for_every_backend_or_one_each() {
    let backends = [
        "--allow-anonymous",
        "--backend=http://a:1",
        "--backend=http://b:1",
        "--backend=http://c:1",
    ];
    let slots = |extra: &[&str]| -> Vec<u32> {
        let argv: Vec<&str> = backends.iter().chain(extra).copied().collect();
        config(&argv)
            .unwrap()
            .static_backends
            .iter()
            .map(|b| b.slots())
            .collect()
    };
    assert_eq!(slots(&[]), [1, 1, 1]);
    assert_eq!(slots(&["--slots=4"]), [4, 4, 4]);
    assert_eq!(slots(&["--slots=4,4,2"]), [4, 4, 2]);
    let argv: Vec<&str> = backends.iter().copied().chain(["--slots=4,2"]).collect();
    assert!(error(&argv).starts_with("--slots: give one value, or one per --backend"));
    let argv: Vec<&str> = backends.iter().copied().chain(["--slots=0"]).collect();
    assert!(error(&argv).starts_with("--slots: must be at least 1"));
    assert!(error(&["--allow-anonymous", "--slots=2"])
        .starts_with("--slots: applies to --backend URLs"));
}
