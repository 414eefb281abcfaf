use super::*;

fn sample() -> NodeMeta {
    NodeMeta {
        gpu_name: Some("NVIDIA GeForce RTX 4090".into()),
        gpu_count: 2,
        gpu_vram_mib: 49_140,
        parallel_slots: 4,
        models_on_disk: ModelList::new(["qwen2.5:7b", "llama3.2:3b", "nomic-embed-text:latest"]),
        models_loaded: ModelList::new(["llama3.2:3b"]),
        ollama_version: Some("0.17.4".into()),
        sidecar_version: "0.1.0".into(),
        preemptible: true,
    }
}

fn round_trip(meta: &NodeMeta) -> NodeMeta {
    NodeMeta::from_consul_meta(&meta.to_consul_meta()).expect("decodes")
}

fn assert_within_consul_limits(meta: &BTreeMap<String, String>) {
    assert!(meta.len() <= MAX_META_PAIRS, "{} pairs", meta.len());
    for (key, value) in meta {
        assert!(is_valid_meta_key(key), "invalid key {key:?}");
        assert!(
            value.len() <= MAX_META_VALUE_LEN,
            "value of {key} is {} long",
            value.len()
        );
    }
}

#[test]
fn round_trips_through_consul_meta() {
    let meta = sample();
    assert_eq!(round_trip(&meta), meta);
    assert_within_consul_limits(&meta.to_consul_meta());
}

#[test]
fn cpu_node_round_trips() {
    let meta = NodeMeta {
        sidecar_version: "0.1.0".into(),
        ..NodeMeta::default()
    };
    let encoded = meta.to_consul_meta();
    assert!(!encoded.contains_key(keys::GPU_NAME));
    assert_eq!(round_trip(&meta), meta);
}

#[test]
fn keys_are_readable_names() {
    let encoded = sample().to_consul_meta();
    assert_eq!(encoded["gpu_name"], "NVIDIA GeForce RTX 4090");
    assert_eq!(
        encoded["models_on_disk"],
        "llama3.2:3b,nomic-embed-text:latest,qwen2.5:7b"
    );
    assert_eq!(encoded["models_on_disk_count"], "3");
    assert_eq!(encoded["models_loaded"], "llama3.2:3b");
    assert_eq!(encoded["ollama_mesh_schema"], "1");
}

#[test]
fn long_lists_continue_in_numbered_keys_without_cutting_names() {
    let names: Vec<String> = (0..100)
        .map(|i| format!("some-org/a-model-name-{i:03}:q4_K_M"))
        .collect();
    let meta = NodeMeta {
        models_on_disk: ModelList::new(names.clone()),
        ..sample()
    };
    let encoded = meta.to_consul_meta();
    assert_within_consul_limits(&encoded);
    assert!(encoded.contains_key("models_on_disk_2"));
    for value in encoded
        .iter()
        .filter(|(k, _)| k.starts_with("models_on_disk") && !k.ends_with("_count"))
        .map(|(_, v)| v)
    {
        for name in value.split(',') {
            assert!(names.contains(&name.to_owned()), "{name:?} was cut");
        }
    }
    let decoded = round_trip(&meta);
    assert_eq!(decoded.models_on_disk.names().len(), 100);
    assert!(!decoded.models_on_disk.is_truncated());
}

#[test]
fn overflowing_lists_are_truncated_with_an_explicit_count() {
    let names: Vec<String> = (0..2_000)
        .map(|i| format!("model-number-{i:05}:7b"))
        .collect();
    let meta = NodeMeta {
        models_on_disk: ModelList::new(names),
        models_loaded: ModelList::new((0..200).map(|i| format!("loaded-{i:04}:latest"))),
        ..sample()
    };
    let encoded = meta.to_consul_meta();
    assert_within_consul_limits(&encoded);
    assert_eq!(encoded["models_on_disk_count"], "2000");

    let decoded = round_trip(&meta);
    assert!(decoded.models_on_disk.is_truncated());
    assert_eq!(decoded.models_on_disk.total(), 2_000);
    let listed = decoded.models_on_disk.names().len();
    assert!(listed > 300 && listed < 2_000, "listed {listed}");
    assert!(decoded
        .models_on_disk
        .names()
        .iter()
        .all(|n| n.starts_with("model-number-") && n.ends_with(":7b")));
    assert!(decoded.models_loaded.is_truncated());
    assert_eq!(decoded.models_loaded.total(), 200);
}

#[test]
fn overlong_free_text_is_cut_on_a_character_boundary() {
    let meta = NodeMeta {
        gpu_name: Some("é".repeat(400)),
        ..sample()
    };
    let encoded = meta.to_consul_meta();
    assert_within_consul_limits(&encoded);
    assert_eq!(encoded["gpu_name"].chars().count(), 256);
}

#[test]
fn rejects_foreign_and_future_instances() {
    assert_eq!(
        NodeMeta::from_consul_meta(&BTreeMap::new()),
        Err(MetaError::NotOllamaMesh)
    );
    let future: BTreeMap<String, String> = [(keys::SCHEMA.to_owned(), "2".to_owned())].into();
    assert!(matches!(
        NodeMeta::from_consul_meta(&future),
        Err(MetaError::UnsupportedSchema(_))
    ));
}

#[test]
fn invalid_values_name_the_key() {
    let mut encoded = sample().to_consul_meta();
    encoded.insert(keys::GPU_COUNT.into(), "two".into());
    let err = NodeMeta::from_consul_meta(&encoded).unwrap_err();
    assert!(err.to_string().contains("gpu_count"), "{err}");
}

#[test]
fn operator_keys_are_ignored() {
    let mut encoded = sample().to_consul_meta();
    encoded.insert("zone".into(), "eu-west-1a".into());
    assert_eq!(NodeMeta::from_consul_meta(&encoded).unwrap(), sample());
}

#[test]
fn model_names_resolve_like_ollama() {
    assert_eq!(canonical_model_name("llama3.2"), "llama3.2:latest");
    assert_eq!(canonical_model_name("llama3.2:3b"), "llama3.2:3b");
    assert_eq!(
        canonical_model_name("localhost:5000/llama3"),
        "localhost:5000/llama3:latest"
    );
    assert_eq!(
        canonical_model_name("hf.co/org/model:Q4_K_M"),
        "hf.co/org/model:Q4_K_M"
    );
    let list = ModelList::new(["llama3.2:latest", "qwen2.5:7b"]);
    assert!(list.contains("llama3.2"));
    assert!(list.contains("qwen2.5:7b"));
    assert!(!list.contains("qwen2.5"));
}

#[test]
fn same_set_encodes_identically_whatever_the_order() {
    let a = ModelList::new(["b:1", "a:1", "a:1"]);
    let b = ModelList::new(["a:1", "b:1"]);
    assert_eq!(a, b);
}
