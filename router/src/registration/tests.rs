use super::*;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn the_id_names_host_and_main_port() {
    let service =
        RouterService::on_host("edge 1", addr("0.0.0.0:11434"), addr("127.0.0.1:11435")).unwrap();
    assert_eq!(service.id.as_str(), "ollama-mesh-router-edge-1-11434");
}

#[test]
fn the_definition_carries_port_ops_port_and_a_healthz_check() {
    let service =
        RouterService::on_host("edge", addr("0.0.0.0:11434"), addr("0.0.0.0:11435")).unwrap();
    let definition = service.definition();
    assert_eq!(definition.name, "ollama-mesh-router");
    assert_eq!(definition.id, "ollama-mesh-router-edge-11434");
    assert_eq!(definition.port, 11434);
    assert_eq!(
        definition.address, "",
        "a wildcard listener lets Consul use the node's address"
    );
    assert_eq!(
        definition.meta.get(OPS_PORT_META).map(String::as_str),
        Some("11435")
    );
    assert!(definition.meta.contains_key(VERSION_META));
    for key in definition.meta.keys() {
        assert!(
            ollama_mesh_consul::contract::meta::is_valid_meta_key(key),
            "{key}"
        );
    }
    let [check] = definition.checks.as_slice() else {
        panic!("one check: {:?}", definition.checks);
    };
    match &check.kind {
        CheckKind::Http { url, .. } => assert_eq!(url, "http://127.0.0.1:11435/healthz"),
        other => panic!("an HTTP check, not {other:?}"),
    }
    assert_eq!(
        check.deregister_critical_after,
        Some(Duration::from_secs(600))
    );
}

#[test]
fn a_specific_listen_address_is_advertised() {
    let service = RouterService::on_host("edge", addr("10.0.0.7:8080"), addr("[::]:9090")).unwrap();
    let definition = service.definition();
    assert_eq!(definition.address, "10.0.0.7");
    match &definition.checks[0].kind {
        CheckKind::Http { url, .. } => assert_eq!(url, "http://[::1]:9090/healthz"),
        other => panic!("an HTTP check, not {other:?}"),
    }
}
