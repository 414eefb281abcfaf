use std::collections::HashMap;

use super::*;

fn settings(vars: &[(&str, &str)]) -> ConsulSettings {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ConsulSettings::from_lookup(|name| vars.get(name).cloned())
}

fn address(vars: &[(&str, &str)]) -> ConsulAddress {
    settings(vars).validate().unwrap().address
}

fn tcp(host: &str, port: u16, https: bool) -> ConsulAddress {
    ConsulAddress::Tcp {
        host: host.into(),
        port,
        https,
    }
}

#[test]
fn defaults_to_the_local_agent() {
    let config = settings(&[]).validate().unwrap();
    assert_eq!(config.address, tcp("127.0.0.1", 8500, false));
    assert_eq!(config.token, None);
    assert_eq!(config.tls, None);
}

#[test]
fn reads_addresses_like_consul() {
    assert_eq!(
        address(&[("CONSUL_HTTP_ADDR", "10.0.0.1:8500")]),
        tcp("10.0.0.1", 8500, false)
    );
    assert_eq!(
        address(&[("CONSUL_HTTP_ADDR", "http://consul.local:8500")]),
        tcp("consul.local", 8500, false)
    );
    assert_eq!(
        address(&[("CONSUL_HTTP_ADDR", "https://consul.local")]),
        tcp("consul.local", 8501, true)
    );
    assert_eq!(
        address(&[
            ("CONSUL_HTTP_ADDR", "consul.local:8501"),
            ("CONSUL_HTTP_SSL", "true")
        ]),
        tcp("consul.local", 8501, true)
    );
    assert_eq!(
        address(&[("CONSUL_HTTP_ADDR", "[::1]:8500")]),
        tcp("::1", 8500, false)
    );
    assert_eq!(
        address(&[("CONSUL_HTTP_ADDR", "unix:///run/consul/http.sock")]),
        ConsulAddress::Unix("/run/consul/http.sock".into())
    );
    assert_eq!(tcp("::1", 8500, false).to_string(), "http://[::1]:8500");
}

#[test]
fn invalid_settings_name_the_variable() {
    for (vars, field) in [
        (vec![("CONSUL_HTTP_ADDR", "ftp://x:1")], "CONSUL_HTTP_ADDR"),
        (vec![("CONSUL_HTTP_ADDR", "x:port")], "CONSUL_HTTP_ADDR"),
        (vec![("CONSUL_HTTP_ADDR", "x:1/v1")], "CONSUL_HTTP_ADDR"),
        (vec![("CONSUL_HTTP_ADDR", "unix://")], "CONSUL_HTTP_ADDR"),
        (vec![("CONSUL_HTTP_SSL", "yes")], "CONSUL_HTTP_SSL"),
        (
            vec![
                ("CONSUL_HTTP_ADDR", "https://x"),
                ("CONSUL_HTTP_SSL_VERIFY", "maybe"),
            ],
            "CONSUL_HTTP_SSL_VERIFY",
        ),
        (
            vec![("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/token")],
            "CONSUL_HTTP_TOKEN_FILE",
        ),
        (
            vec![
                ("CONSUL_HTTP_ADDR", "https://x"),
                ("CONSUL_CACERT", "/nonexistent/ca.pem"),
            ],
            "CONSUL_CACERT",
        ),
        (
            vec![
                ("CONSUL_HTTP_ADDR", "https://x"),
                ("CONSUL_CLIENT_CERT", "/etc/hostname"),
            ],
            "CONSUL_CLIENT_KEY",
        ),
    ] {
        let err = settings(&vars).validate().unwrap_err();
        assert_eq!(err.field, field, "{vars:?}: {err}");
        assert!(err.to_string().starts_with(field), "{err}");
    }
}

#[test]
fn token_file_wins_over_token_and_is_trimmed() {
    let dir = std::env::temp_dir().join(format!("ollama-mesh-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "  from-file\n").unwrap();
    let config = settings(&[
        ("CONSUL_HTTP_TOKEN", "from-env"),
        ("CONSUL_HTTP_TOKEN_FILE", file.to_str().unwrap()),
    ])
    .validate()
    .unwrap();
    assert_eq!(config.token.as_deref(), Some("from-file"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn flags_override_environment_field_by_field() {
    let env = settings(&[
        ("CONSUL_HTTP_ADDR", "10.0.0.1:8500"),
        ("CONSUL_HTTP_TOKEN", "env-token"),
    ]);
    let flags = ConsulSettings {
        http_addr: Some("10.0.0.2:8500".into()),
        ..ConsulSettings::default()
    };
    let config = env.overridden_by(flags).validate().unwrap();
    assert_eq!(config.address, tcp("10.0.0.2", 8500, false));
    assert_eq!(config.token.as_deref(), Some("env-token"));
}

#[test]
fn empty_variables_count_as_unset() {
    let config = settings(&[("CONSUL_HTTP_ADDR", ""), ("CONSUL_HTTP_TOKEN", "")])
        .validate()
        .unwrap();
    assert_eq!(config.address, tcp("127.0.0.1", 8500, false));
    assert_eq!(config.token, None);
}

#[test]
fn tls_settings_follow_the_variables() {
    let config = settings(&[
        ("CONSUL_HTTP_ADDR", "https://consul.service:8501"),
        ("CONSUL_HTTP_SSL_VERIFY", "false"),
        ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
    ])
    .validate()
    .unwrap();
    let tls = config.tls.unwrap();
    assert!(!tls.verify);
    assert_eq!(tls.server_name.as_deref(), Some("server.dc1.consul"));
}
