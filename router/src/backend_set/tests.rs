use ollama_mesh_consul::contract::RoutingState;

use super::*;
use crate::backend::MeshPolicy;
use crate::testing::{instance, set};

fn drain_key(key: &str, value: &str) -> KvPair {
    KvPair {
        key: key.to_owned(),
        value: value.as_bytes().to_vec().into(),
        ..KvPair::default()
    }
}

#[test]
fn sorted_by_id_and_found_by_id() {
    let set = set(&[instance("b"), instance("c"), instance("a")]);
    let ids: Vec<&str> = set.backends().iter().map(|b| &**b.id()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(set.len(), 3);
    assert!(!set.is_empty());
    assert_eq!(&**set.get("b").unwrap().id(), "b");
    assert!(set.get("z").is_none());
    assert!(BackendSet::default().is_empty());
}

#[test]
fn in_flight_counters_survive_rebuilds_of_the_same_instance() {
    let first = set(&[instance("a"), instance("b")]);
    first.get("a").unwrap().in_flight().acquire();
    // "a" changes (a model is pulled), "b" leaves, "c" arrives.
    let entries = [
        instance("a").on_disk(&["llama3.2"]).entry(),
        instance("c").entry(),
    ];
    let second = BackendSet::build(&entries, &[], &first, MeshPolicy::default());
    let a = second.get("a").unwrap();
    assert!(a.has_model("llama3.2"));
    assert_eq!(a.in_flight().get(), 1);
    assert_eq!(second.get("c").unwrap().in_flight().get(), 0);
    // A request started on the old view is released on the shared counter.
    first.get("a").unwrap().in_flight().release();
    assert_eq!(a.in_flight().get(), 0);
}

#[test]
fn the_same_id_on_another_node_does_not_share_a_counter() {
    let first = set(&[instance("a")]);
    first.get("a").unwrap().in_flight().acquire();
    let mut moved = instance("a").entry();
    moved.node.node = "elsewhere".into();
    let second = BackendSet::build(&[moved], &[], &first, MeshPolicy::default());
    assert_eq!(second.get("a").unwrap().in_flight().get(), 0);
}

#[test]
fn drain_keys_drain_their_instance_with_the_operator_s_reason() {
    let entries = [
        instance("a").entry(),
        instance("b").entry(),
        instance("c").entry(),
    ];
    let keys = [
        drain_key("ollama-mesh/drain/a", "replacing fan"),
        drain_key("ollama-mesh/drain/b", ""),
        drain_key("ollama-mesh/drain/", ""),
        drain_key("ollama-mesh/drain/unknown", "gone already"),
    ];
    let set = BackendSet::build(
        &entries,
        &keys,
        &BackendSet::default(),
        MeshPolicy::default(),
    );
    assert_eq!(
        set.get("a").unwrap().state(),
        &RoutingState::Draining {
            reason: "replacing fan".into()
        }
    );
    assert!(matches!(
        set.get("b").unwrap().state(),
        RoutingState::Draining { reason } if !reason.is_empty()
    ));
    assert!(set.get("c").unwrap().state().accepts_new_work());
    assert_eq!(set.len(), 3);
}
