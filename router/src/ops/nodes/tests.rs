use std::time::Duration;

use ollama_mesh_consul::health::{CheckStatus, ServiceEntry};
use serde_json::{json, Value};

use super::*;
use crate::backend::MeshPolicy;
use crate::testing::{instance, set, Instance};

fn report(log: &ChangeLog, set: &Arc<BackendSet>) -> Vec<Value> {
    log.update(set);
    let scheduler = Scheduler::new(
        crate::testing::TestFleet::new(BackendSet::default()),
        Default::default(),
    );
    log.describe(set, &scheduler)
        .into_iter()
        .map(|node| serde_json::to_value(node).unwrap())
        .collect()
}

fn rebuilt(instances: &[Instance], previous: &BackendSet) -> Arc<BackendSet> {
    let entries: Vec<ServiceEntry> = instances.iter().map(Instance::entry).collect();
    Arc::new(BackendSet::build(
        &entries,
        &[],
        previous,
        MeshPolicy::default(),
    ))
}

#[test]
fn an_instance_is_described_in_full() {
    let set = Arc::new(set(&[instance("gpu-1")
        .on_disk(&["llama3.2:3b", "qwen3:8b"])
        .loaded(&["qwen3:8b"])
        .capacity(2, 4)
        .weight(8)
        .truncated_to(5)]));
    set.backends()[0].in_flight().acquire();
    let nodes = report(&ChangeLog::default(), &set);
    set.backends()[0].in_flight().release();
    let node = &nodes[0];
    assert_eq!(node["id"], "gpu-1");
    assert_eq!(node["node"], "node-gpu-1");
    assert_eq!(node["address"], "10.0.0.1:11434");
    assert_eq!(node["state"], "active");
    assert_eq!(node["reason"], Value::Null);
    assert_eq!(node["weight"], 8);
    assert_eq!(node["in_flight"], 1);
    assert_eq!(node["capacity"], 8);
    assert_eq!(
        node["models"],
        json!({
            "on_disk": {"names": ["llama3.2:3b", "qwen3:8b"], "total": 5, "truncated": true},
            "loaded": {"names": ["qwen3:8b"], "total": 1, "truncated": false},
        })
    );
    assert_eq!(
        node["gpu"],
        json!({"name": null, "count": 2, "vram_mib": 0})
    );
    assert_eq!(node["parallel_slots"], 4);
    assert_eq!(node["versions"], json!({"ollama": null, "sidecar": "test"}));
    assert_eq!(node["preemptible"], false);
    assert_eq!(node["meta_error"], Value::Null);
    let stamp = node["last_change"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(stamp).is_ok(), "{stamp}");
}

#[test]
fn draining_and_out_instances_say_why() {
    let set = Arc::new(set(&[
        instance("a").with_check("_service_maintenance:a", CheckStatus::Critical),
        instance("b").with_check("api", CheckStatus::Critical),
    ]));
    let nodes = report(&ChangeLog::default(), &set);
    assert_eq!(nodes[0]["state"], "draining");
    assert_eq!(nodes[0]["weight"], 0);
    assert!(nodes[0]["reason"].is_string());
    assert_eq!(nodes[1]["state"], "out");
    assert!(nodes[1]["reason"]
        .as_str()
        .unwrap()
        .contains("check \"api\" is critical"));
}

#[test]
fn an_instance_without_mesh_meta_shows_the_error_and_no_facts() {
    let nodes = report(
        &ChangeLog::default(),
        &Arc::new(set(&[instance("x").foreign()])),
    );
    assert_eq!(nodes[0]["models"], Value::Null);
    assert_eq!(nodes[0]["gpu"], Value::Null);
    assert!(nodes[0]["meta_error"].is_string());
}

#[test]
fn last_change_moves_only_when_state_or_meta_changes() {
    let log = ChangeLog::default();
    let first = rebuilt(&[instance("a"), instance("b")], &BackendSet::default());
    let before = report(&log, &first);
    std::thread::sleep(Duration::from_millis(20));

    // a changes state, b only gets a request in flight: only a's stamp moves.
    let second = rebuilt(
        &[
            instance("a").with_check("gpu", CheckStatus::Warning),
            instance("b"),
        ],
        &first,
    );
    second.get("b").unwrap().in_flight().acquire();
    let after = report(&log, &second);
    second.get("b").unwrap().in_flight().release();
    assert_ne!(after[0]["last_change"], before[0]["last_change"]);
    assert_eq!(after[1]["last_change"], before[1]["last_change"]);

    // A meta change counts too.
    std::thread::sleep(Duration::from_millis(20));
    let third = rebuilt(
        &[
            instance("a").with_check("gpu", CheckStatus::Warning),
            instance("b").loaded(&["qwen3:8b"]),
        ],
        &second,
    );
    let last = report(&log, &third);
    assert_eq!(last[0]["last_change"], after[0]["last_change"]);
    assert_ne!(last[1]["last_change"], after[1]["last_change"]);
}
