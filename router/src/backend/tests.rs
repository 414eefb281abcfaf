use ollama_mesh_consul::contract::{MetaError, RoutingState};
use ollama_mesh_consul::health::CheckStatus;

use super::*;
use crate::testing::{instance, set};

fn backend(entry: &ServiceEntry) -> Backend {
    Backend::from_entry(entry, None, InFlight::default(), MeshPolicy::default())
}

#[test]
fn address_is_the_instance_s_or_else_the_node_s() {
    let mut entry = instance("a").entry();
    assert_eq!(backend(&entry).address(), "10.0.0.1:11434");
    entry.service.address = "192.168.1.7".into();
    assert_eq!(backend(&entry).address(), "192.168.1.7:11434");
    entry.service.address = "fd00::7".into();
    assert_eq!(backend(&entry).address(), "[fd00::7]:11434");
    assert_eq!(
        backend(&entry).socket_address(),
        Some("[fd00::7]:11434".parse().unwrap())
    );
}

#[test]
fn a_host_name_is_resolved_once_and_one_that_does_not_resolve_is_skipped() {
    let mut entry = instance("a").entry();
    entry.service.address = "localhost".into();
    let named = backend(&entry);
    assert!(named
        .socket_address()
        .is_some_and(|a| a.ip().is_loopback() && a.port() == 11434));
    assert!(named.accepts_new_work());

    // `.invalid` never resolves (RFC 6761).
    entry.service.address = "gpu-1.invalid".into();
    let unresolved = backend(&entry);
    assert_eq!(unresolved.socket_address(), None);
    assert!(matches!(unresolved.reach(), Reach::Skipped(why) if why.contains("resolve")));
    assert!(
        !unresolved.accepts_new_work(),
        "an instance nobody can connect to gets no work"
    );
}

#[test]
fn reads_identity_meta_and_state() {
    let entry = instance("ollama-gpu-1-11434")
        .on_disk(&["llama3.2:3b"])
        .weight(5)
        .entry();
    let b = backend(&entry);
    assert_eq!(&**b.id(), "ollama-gpu-1-11434");
    assert_eq!(b.node(), "node-ollama-gpu-1-11434");
    assert_eq!(
        b.state(),
        &RoutingState::Active {
            weight: 5,
            degraded: false
        }
    );
    assert_eq!(b.meta().unwrap().sidecar_version, "test");
}

#[test]
fn checks_and_drain_reason_decide_the_state_by_the_contract() {
    let warning = instance("a")
        .with_check("heartbeat", CheckStatus::Warning)
        .entry();
    assert!(matches!(
        backend(&warning).state(),
        RoutingState::Active { degraded: true, .. }
    ));
    let critical = instance("a")
        .with_check("heartbeat", CheckStatus::Critical)
        .entry();
    assert!(matches!(
        backend(&critical).state(),
        RoutingState::Out { .. }
    ));
    let drained = Backend::from_entry(
        &instance("a").entry(),
        Some("replacing fan"),
        InFlight::default(),
        MeshPolicy::default(),
    );
    assert_eq!(
        drained.state(),
        &RoutingState::Draining {
            reason: "replacing fan".into()
        }
    );
}

#[test]
fn models_match_with_and_without_the_latest_tag() {
    let b = backend(
        &instance("a")
            .on_disk(&["llama3.2", "qwen2.5:7b"])
            .loaded(&["qwen2.5:7b"])
            .entry(),
    );
    assert!(b.has_model("llama3.2:latest"));
    assert!(b.has_model("llama3.2"));
    assert!(b.has_model("qwen2.5:7b"));
    assert!(!b.has_model("qwen2.5"));
    assert!(b.has_loaded("qwen2.5:7b"));
    assert!(!b.has_loaded("llama3.2"));
}

#[test]
fn knows_when_its_model_list_is_incomplete() {
    let complete = backend(&instance("a").on_disk(&["x", "y"]).entry());
    assert!(!complete.is_model_list_truncated());
    let truncated = backend(&instance("a").on_disk(&["x", "y"]).truncated_to(300).entry());
    assert!(truncated.is_model_list_truncated());
    assert!(!truncated.has_model("z"), "only listed models are known");
}

#[test]
fn foreign_instances_are_kept_with_the_reason_and_no_models() {
    let b = backend(&instance("hand-made").on_disk(&["x"]).foreign().entry());
    assert_eq!(b.meta().unwrap_err(), &MetaError::NotOllamaMesh);
    assert!(b.state().accepts_new_work());
    assert!(!b.has_model("x"));
    assert_eq!(b.capacity(), 1);
}

#[test]
fn capacity_is_slots_times_gpus_and_at_least_one() {
    let capacity = |gpus, slots| backend(&instance("a").capacity(gpus, slots).entry()).capacity();
    assert_eq!(capacity(2, 4), 8);
    assert_eq!(capacity(0, 4), 4, "a CPU node serves its slots");
    assert_eq!(capacity(2, 0), 1, "unknown slots still serve one");
}

#[test]
fn at_capacity_follows_the_in_flight_count() {
    let b = backend(&instance("a").capacity(1, 2).entry());
    assert!(!b.is_at_capacity());
    b.in_flight().acquire();
    b.in_flight().acquire();
    assert_eq!(b.in_flight().get(), 2);
    assert!(b.is_at_capacity());
    b.in_flight().release();
    assert!(!b.is_at_capacity());
}

#[test]
fn the_mesh_policy_decides_how_each_instance_is_reached() {
    let plain = MeshPolicy::default();
    let mesh = MeshPolicy {
        mesh: true,
        allow_plain: false,
    };
    let migrating = MeshPolicy {
        mesh: true,
        allow_plain: true,
    };
    assert_eq!(plain.reach(false), Reach::Direct);
    assert!(matches!(plain.reach(true), Reach::Skipped(why) if why.contains("--mesh")));
    assert_eq!(mesh.reach(true), Reach::Mesh);
    assert!(matches!(mesh.reach(false), Reach::Skipped(why) if why.contains("--mesh-allow-plain")));
    assert_eq!(migrating.reach(false), Reach::Direct);
    assert_eq!(migrating.reach(true), Reach::Mesh);

    let mut entry = instance("a").entry();
    entry.service.connect.native = true;
    let skipped = Backend::from_entry(&entry, None, InFlight::default(), plain);
    assert!(skipped.state().accepts_new_work());
    assert!(
        !skipped.accepts_new_work(),
        "a node the router cannot reach gets no work"
    );
    let meshed = Backend::from_entry(&entry, None, InFlight::default(), mesh);
    assert!(meshed.accepts_new_work());
    assert_eq!(meshed.host_header(), "localhost");
}

#[test]
fn the_guard_counts_the_request_until_dropped() {
    let set = set(&[instance("a")]);
    let a = set.get("a").unwrap();
    let guard = InFlightGuard::new(a.clone());
    assert_eq!(a.in_flight().get(), 1);
    let second = InFlightGuard::new(a.clone());
    assert_eq!(a.in_flight().get(), 2);
    drop(guard);
    assert_eq!(a.in_flight().get(), 1);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _held = second;
        panic!("request handler failed");
    }));
    assert!(unwound.is_err());
    assert_eq!(
        a.in_flight().get(),
        0,
        "a panicking request releases its count"
    );
}
