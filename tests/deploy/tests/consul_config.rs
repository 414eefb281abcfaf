//! Every `examples/consul/*.hcl` parses, the ACL policies grant what the binaries use (and no
//! more than reading where reading is enough), the intentions let only routers reach the
//! nodes, and the agent configuration is the locked-down one the docs describe.

use hcl::eval::{Context, Evaluate};
use hcl::{Block, Body, Value};
use ollama_mesh_deploy_tests::workspace_root;

fn parse(name: &str) -> Body {
    let path = workspace_root().join("examples/consul").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    hcl::parse(&text).unwrap_or_else(|e| panic!("{name} is not valid HCL: {e}"))
}

/// The literal value of `key` in `body` (these files hold no expressions).
fn literal(body: &Body, key: &str) -> Option<Value> {
    body.attributes().find(|a| a.key() == key).map(|a| {
        a.expr()
            .evaluate(&Context::new())
            .unwrap_or_else(|e| panic!("{key} is not a literal: {e}"))
    })
}

fn string(body: &Body, key: &str) -> Option<String> {
    match literal(body, key)? {
        Value::String(s) => Some(s),
        other => panic!("{key} is {other}, not a string"),
    }
}

fn block<'a>(body: &'a Body, identifier: &str) -> &'a Block {
    body.blocks()
        .find(|b| b.identifier() == identifier)
        .unwrap_or_else(|| panic!("no {identifier} block"))
}

/// An ACL policy: its rules as (kind, name, policy, intentions).
struct Policy {
    name: String,
    rules: Vec<(String, String, String, Option<String>)>,
}

impl Policy {
    fn load(name: &str) -> Self {
        let body = parse(name);
        let rules = body
            .blocks()
            .map(|rule| {
                let label = rule
                    .labels()
                    .first()
                    .unwrap_or_else(|| panic!("{name}: {} rule without a name", rule.identifier()))
                    .as_str()
                    .to_owned();
                let policy = string(rule.body(), "policy").unwrap_or_else(|| {
                    panic!("{name}: {} {label:?} has no policy", rule.identifier())
                });
                (
                    rule.identifier().to_owned(),
                    label,
                    policy,
                    string(rule.body(), "intentions"),
                )
            })
            .collect::<Vec<_>>();
        assert_eq!(
            body.attributes().count(),
            0,
            "{name}: top-level settings (acl, operator, …) are more than ollama-mesh needs"
        );
        Self {
            name: name.to_owned(),
            rules,
        }
    }

    /// The policy that applies to `resource` of `kind` (`service`, `node`, `key`): an exact
    /// rule wins, else the longest matching prefix rule, as in Consul.
    fn grant(&self, kind: &str, resource: &str) -> Option<&str> {
        let exact = self
            .rules
            .iter()
            .find(|(k, name, _, _)| k == kind && name == resource);
        let prefix = self
            .rules
            .iter()
            .filter(|(k, name, _, _)| {
                *k == format!("{kind}_prefix") && resource.starts_with(name.as_str())
            })
            .max_by_key(|(_, name, _, _)| name.len());
        exact.or(prefix).map(|(_, _, policy, _)| policy.as_str())
    }

    fn allows(&self, kind: &str, resource: &str, wanted: &str) -> bool {
        matches!(
            (self.grant(kind, resource), wanted),
            (Some("write"), _) | (Some("read"), "read")
        )
    }

    fn intentions(&self, service: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|(k, name, _, _)| k == "service" && name == service)
            .and_then(|(_, _, _, intentions)| intentions.as_deref())
    }

    fn assert_allows(&self, kind: &str, resource: &str, wanted: &str, why: &str) {
        assert!(
            self.allows(kind, resource, wanted),
            "{}: needs {kind} {resource:?} {wanted} ({why})",
            self.name
        );
    }
}

#[test]
fn every_example_parses() {
    let dir = workspace_root().join("examples/consul");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "hcl") {
            parse(path.file_name().unwrap().to_str().unwrap());
            parsed += 1;
        }
    }
    assert!(
        parsed >= 6,
        "expected the agent config, four policies and the intentions"
    );
}

#[test]
fn sidecar_policies_cover_registration_heartbeat_and_drain() {
    for (file, mesh) in [
        ("sidecar-policy.hcl", false),
        ("sidecar-mesh-policy.hcl", true),
    ] {
        let policy = Policy::load(file);
        policy.assert_allows(
            "service",
            "ollama",
            "write",
            "register, heartbeat, maintenance, deregister; Connect leaf and authorize",
        );
        policy.assert_allows("node", "gpu-01", "read", "the agent's checks of its node");
        policy.assert_allows(
            "key",
            "ollama-mesh/drain/ollama-gpu-01-11434",
            "read",
            "the operator's drain key",
        );
        assert!(
            !policy.allows("key", "ollama-mesh/keys/ci-bot", "read"),
            "{file}: the sidecar has no business reading API keys"
        );
        assert!(
            !policy.allows("service", "ollama-mesh-router", "write"),
            "{file}"
        );
        if mesh {
            assert_eq!(
                policy.intentions("ollama"),
                Some("read"),
                "{file}: the sidecar follows the intentions to close denied connections"
            );
        }
        for (kind, name, access, _) in &policy.rules {
            if kind.starts_with("key") || kind.starts_with("node") {
                assert_eq!(access, "read", "{file}: {kind} {name:?} is only read");
            }
        }
    }
}

#[test]
fn router_policies_cover_discovery_keys_and_self_registration() {
    for file in ["router-policy.hcl", "router-mesh-policy.hcl"] {
        let policy = Policy::load(file);
        policy.assert_allows("service", "ollama", "read", "health of the nodes");
        assert!(
            !policy.allows("service", "ollama", "write"),
            "{file}: a router never writes the nodes' service"
        );
        policy.assert_allows("node", "gpu-01", "read", "the nodes in health results");
        policy.assert_allows(
            "key",
            "ollama-mesh/drain/ollama-gpu-01-11434",
            "read",
            "drain keys",
        );
        policy.assert_allows(
            "key",
            "ollama-mesh/keys/ci-bot",
            "read",
            "--keys-from-consul",
        );
        policy.assert_allows(
            "service",
            "ollama-mesh-router",
            "write",
            "--register, and its Connect leaf with --mesh",
        );
        for (kind, name, access, _) in &policy.rules {
            if kind.starts_with("key") || kind.starts_with("node") {
                assert_eq!(access, "read", "{file}: {kind} {name:?} is only read");
            }
        }
    }
}

#[test]
fn only_routers_may_reach_the_nodes() {
    let body = parse("intentions.hcl");
    assert_eq!(string(&body, "Kind").as_deref(), Some("service-intentions"));
    assert_eq!(string(&body, "Name").as_deref(), Some("ollama"));
    let Some(Value::Array(sources)) = literal(&body, "Sources") else {
        panic!("Sources must be a list");
    };
    let sources: Vec<(String, String)> = sources
        .iter()
        .map(|source| {
            let field = |key: &str| match source {
                Value::Object(map) => map[key].as_str().expect("a string").to_owned(),
                other => panic!("a source is {other}"),
            };
            (field("Name"), field("Action"))
        })
        .collect();
    assert_eq!(
        sources,
        [("ollama-mesh-router", "allow"), ("*", "deny")].map(|(n, a)| (n.to_owned(), a.to_owned()))
    );
}

#[test]
fn the_agent_denies_by_default_and_speaks_tls_to_the_servers() {
    let body = parse("agent.hcl");
    assert_eq!(
        literal(&body, "server"),
        Some(Value::Bool(false)),
        "a client agent"
    );
    assert_eq!(
        string(&body, "client_addr").as_deref(),
        Some("127.0.0.1"),
        "the HTTP API stays on loopback"
    );
    let acl = block(&body, "acl");
    assert_eq!(literal(acl.body(), "enabled"), Some(Value::Bool(true)));
    assert_eq!(
        string(acl.body(), "default_policy").as_deref(),
        Some("deny")
    );
    let connect = block(&body, "connect");
    assert_eq!(literal(connect.body(), "enabled"), Some(Value::Bool(true)));

    let tls = block(&body, "tls");
    let defaults = block(tls.body(), "defaults");
    for file in ["ca_file", "cert_file", "key_file"] {
        assert!(
            string(defaults.body(), file).is_some(),
            "tls.defaults.{file}"
        );
    }
    assert_eq!(
        literal(defaults.body(), "verify_outgoing"),
        Some(Value::Bool(true))
    );
    let rpc = block(tls.body(), "internal_rpc");
    assert_eq!(
        literal(rpc.body(), "verify_server_hostname"),
        Some(Value::Bool(true))
    );
    let ports = block(&body, "ports");
    assert_eq!(literal(ports.body(), "https"), Some(Value::from(8501)));
}
