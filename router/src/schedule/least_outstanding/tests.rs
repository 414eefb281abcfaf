use std::collections::HashMap;

use ollama_mesh_consul::health::CheckStatus;

use super::*;
use crate::backend::InFlightGuard;
use crate::testing::{instance, set};

fn rng() -> fastrand::Rng {
    fastrand::Rng::with_seed(6)
}

/// The instance chosen for `model`, with the guard dropped at once.
fn pick(set: &BackendSet, model: Option<&str>, rng: &mut fastrand::Rng) -> String {
    choose(set, model, &[], rng)
        .expect("a backend")
        .id()
        .to_string()
}

/// How often each instance is chosen over `n` picks with nothing in flight.
fn spread(set: &BackendSet, model: Option<&str>, n: usize) -> HashMap<String, usize> {
    let mut rng = rng();
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(pick(set, model, &mut rng)).or_default() += 1;
    }
    counts
}

fn hold(set: &BackendSet, id: &str, requests: usize) -> Vec<InFlightGuard> {
    let backend = set.get(id).expect("instance in set");
    (0..requests)
        .map(|_| InFlightGuard::new(backend.clone()))
        .collect()
}

#[test]
fn only_instances_with_the_model_on_disk_are_candidates() {
    let set = set(&[
        instance("a").on_disk(&["llama3.2:3b"]),
        instance("b").on_disk(&["qwen2.5:7b"]),
        instance("c").on_disk(&["llama3.2:3b", "qwen2.5:7b"]),
    ]);
    let counts = spread(&set, Some("qwen2.5:7b"), 200);
    assert_eq!(counts.get("a"), None);
    assert!(counts["b"] > 0 && counts["c"] > 0, "{counts:?}");
}

#[test]
fn a_missing_tag_means_latest_both_ways() {
    let set = set(&[
        instance("a").on_disk(&["llama3.2"]),
        instance("b").on_disk(&["mistral:latest"]),
    ]);
    let mut rng = rng();
    assert_eq!(pick(&set, Some("llama3.2:latest"), &mut rng), "a");
    assert_eq!(pick(&set, Some("mistral"), &mut rng), "b");
    assert!(matches!(
        choose(&set, Some("llama3.2:1b"), &[], &mut rng),
        Err(ScheduleError::ModelNotFound { .. })
    ));
}

#[test]
fn a_model_nobody_lists_may_be_on_a_node_whose_list_did_not_fit() {
    let fleet = set(&[
        instance("short").on_disk(&["a"]),
        instance("long").on_disk(&["b"]).truncated_to(400),
    ]);
    assert_eq!(spread(&fleet, Some("unlisted"), 50).get("long"), Some(&50));
    // A node that lists the model wins over one that only might have it.
    assert_eq!(spread(&fleet, Some("a"), 50).get("short"), Some(&50));
}

#[test]
fn an_unknown_model_lists_what_the_accepting_fleet_has() {
    let set = set(&[
        instance("a").on_disk(&["qwen2.5:7b", "llama3.2"]),
        instance("b").on_disk(&["llama3.2:latest", "gemma3:4b"]),
        instance("c")
            .on_disk(&["only-on-a-dead-node"])
            .with_check("heartbeat", CheckStatus::Critical),
    ]);
    let error = choose(&set, Some("phi4"), &[], &mut rng()).unwrap_err();
    assert_eq!(
        error,
        ScheduleError::ModelNotFound {
            model: "phi4".into(),
            available: vec![
                "gemma3:4b".into(),
                "llama3.2:latest".into(),
                "qwen2.5:7b".into()
            ],
        }
    );
}

#[test]
fn loaded_instances_are_preferred() {
    let set = set(&[
        instance("cold").on_disk(&["m"]),
        instance("warm").on_disk(&["m"]).loaded(&["m"]),
        instance("cold-too").on_disk(&["m"]).loaded(&["other"]),
    ]);
    assert_eq!(spread(&set, Some("m"), 100).get("warm"), Some(&100));
}

#[test]
fn when_every_loaded_instance_is_full_the_cold_ones_take_the_overflow() {
    let set = set(&[
        instance("cold").on_disk(&["m"]),
        instance("warm-1")
            .on_disk(&["m"])
            .loaded(&["m"])
            .capacity(1, 2),
        instance("warm-2")
            .on_disk(&["m"])
            .loaded(&["m"])
            .capacity(1, 2),
    ]);
    let mut rng = rng();
    let _one_full = hold(&set, "warm-1", 2);
    assert_eq!(pick(&set, Some("m"), &mut rng), "warm-2");
    let _both_full = hold(&set, "warm-2", 2);
    assert_eq!(pick(&set, Some("m"), &mut rng), "cold");
}

#[test]
fn weights_spread_an_idle_fleet_in_proportion() {
    let set = set(&[instance("heavy").weight(3), instance("light").weight(1)]);
    let counts = spread(&set, None, 4000);
    let heavy = counts["heavy"] as f64 / 4000.0;
    assert!((0.70..0.80).contains(&heavy), "{counts:?}");
}

#[test]
fn weights_spread_three_instances_in_proportion() {
    let set = set(&[
        instance("a").weight(1),
        instance("b").weight(2),
        instance("c").weight(5),
    ]);
    let counts = spread(&set, None, 8000);
    for (id, share) in [("a", 1.0 / 8.0), ("b", 2.0 / 8.0), ("c", 5.0 / 8.0)] {
        let measured = counts[id] as f64 / 8000.0;
        assert!((measured - share).abs() < 0.03, "{id}: {counts:?}");
    }
}

#[test]
fn the_less_loaded_instance_wins() {
    let set = set(&[instance("busy"), instance("idle")]);
    let _load = hold(&set, "busy", 3);
    assert_eq!(spread(&set, None, 100).get("idle"), Some(&100));
}

#[test]
fn load_is_compared_per_unit_of_weight() {
    // 4 in flight at weight 8 is less loaded than 1 in flight at weight 1.
    let set = set(&[instance("big").weight(8), instance("small").weight(1)]);
    let _big = hold(&set, "big", 4);
    let _small = hold(&set, "small", 1);
    assert_eq!(spread(&set, None, 100).get("big"), Some(&100));
}

#[test]
fn held_requests_spread_by_weight_under_load() {
    let set = set(&[instance("heavy").weight(3), instance("light").weight(1)]);
    let mut rng = rng();
    let guards: Vec<InFlightGuard> = (0..400)
        .map(|_| InFlightGuard::new(choose(&set, None, &[], &mut rng).unwrap()))
        .collect();
    let heavy = set.get("heavy").unwrap().in_flight().get();
    assert_eq!(heavy + set.get("light").unwrap().in_flight().get(), 400);
    assert!((290..=310).contains(&heavy), "heavy has {heavy} of 400");
    drop(guards);
}

#[test]
fn draining_out_and_zero_weight_instances_get_nothing() {
    let set = set(&[
        instance("maintenance").with_check("_service_maintenance:x", CheckStatus::Critical),
        instance("out").with_check("heartbeat", CheckStatus::Critical),
        instance("zero").weight(0),
        instance("warning-zero")
            .weight(5)
            .warning_weight(0)
            .with_check("heartbeat", CheckStatus::Warning),
        instance("ok"),
    ]);
    assert_eq!(spread(&set, None, 200).get("ok"), Some(&200));
}

#[test]
fn warning_instances_take_work_at_their_warning_weight() {
    let set = set(&[
        instance("warning")
            .weight(9)
            .warning_weight(1)
            .with_check("heartbeat", CheckStatus::Warning),
        instance("ok"),
    ]);
    let counts = spread(&set, None, 400);
    assert!(counts["warning"] > 150 && counts["ok"] > 150, "{counts:?}");
}

#[test]
fn nothing_accepting_is_an_error_not_a_panic() {
    let mut rng = rng();
    assert_eq!(
        choose(&BackendSet::default(), None, &[], &mut rng).unwrap_err(),
        ScheduleError::NoneAvailable
    );
    let all_zero = set(&[instance("a").weight(0), instance("b").weight(0)]);
    assert_eq!(
        choose(&all_zero, Some("m"), &[], &mut rng).unwrap_err(),
        ScheduleError::NoneAvailable
    );
}

#[test]
fn tried_instances_are_skipped_until_none_is_left() {
    let set = set(&[
        instance("a").on_disk(&["m"]).loaded(&["m"]),
        instance("b").on_disk(&["m"]),
        instance("c"),
    ]);
    let mut rng = rng();
    let mut tried: Vec<Arc<str>> = Vec::new();
    for expected in ["a", "b"] {
        let backend = choose(&set, Some("m"), &tried, &mut rng).unwrap();
        assert_eq!(&**backend.id(), expected);
        tried.push(backend.id().clone());
    }
    assert_eq!(
        choose(&set, Some("m"), &tried, &mut rng).unwrap_err(),
        ScheduleError::AllTried { tried: 2 }
    );
    let backend = choose(&set, None, &tried, &mut rng).unwrap();
    assert_eq!(&**backend.id(), "c");
}

#[test]
fn requests_without_a_model_go_to_any_accepting_instance() {
    let set = set(&[
        instance("no-models"),
        instance("foreign").foreign(),
        instance("has-models").on_disk(&["m"]).loaded(&["m"]),
    ]);
    let counts = spread(&set, None, 600);
    assert_eq!(counts.len(), 3, "{counts:?}");
}

#[test]
fn foreign_instances_get_no_model_requests() {
    let set = set(&[
        instance("foreign").foreign(),
        instance("mesh").on_disk(&["m"]),
    ]);
    assert_eq!(spread(&set, Some("m"), 100).get("mesh"), Some(&100));
}
