//! The simulated fleets the scenarios run against, as `ollama-sim` configuration files.

/// Memory for the synthetic nodes: these fleets measure the proxy, not the GPU. Ollama sizes a
/// runner's KV cache as context × parallel slots, and at llama3.2's full context each slot takes
/// about 15 TB… of simulated memory, so 10 000 streaming slots need about 150 TB. A runner that
/// did not fit would be split onto the "CPU" and decode at a quarter of the speed asked for.
const SYNTHETIC_VRAM: &str = "1000TB";

/// A node that answers at once (time scale 0): the proxy is all that is measured.
pub fn instant_node(name: &str, model: &str, num_parallel: usize) -> String {
    format!(
        r#"node_name = "{name}"
time_scale = 0.0

[[gpus]]
vram = "{SYNTHETIC_VRAM}"

[[models]]
name = "{model}"

[scheduler]
num_parallel = {num_parallel}
max_queue = 100000
"#
    )
}

/// A node that streams `model` at `tokens_per_second` per stream to as many streams as the
/// scenario opens (every one of them gets a slot): for holding thousands of long streams.
pub fn streaming_node(name: &str, model: &str, tokens_per_second: f64, slots: usize) -> String {
    // The catalogue decodes llama3.2:3b at 200 tokens/s; the time scale slows it to the rate
    // wanted, and a flat slowdown curve keeps every stream at that rate however many run.
    let time_scale = 200.0 / tokens_per_second;
    format!(
        r#"node_name = "{name}"
time_scale = {time_scale}

[[gpus]]
vram = "{SYNTHETIC_VRAM}"

[[models]]
name = "{model}"

[scheduler]
num_parallel = {slots}
max_queue = 100000
decode_slowdown = [1.0]
# Loaded at once: the scenario measures streams, not loads.
disk_speed = "1000TB"
load_overhead = "0s"
"#
    )
}

/// A node of the fleet-realism workloads: an RTX 4090 (`fast`) or an older RTX 3090 at about
/// half the speed, 24 GiB, with `slots` parallel slots, realistic speeds and load times, and
/// every model of the workload on disk (not all of which fit in one GPU at once), run
/// `time_scale` times faster than real time.
pub fn realistic_node(
    name: &str,
    fast: bool,
    slots: u32,
    models: &[&str],
    time_scale: f64,
) -> String {
    let (gpu, speed) = if fast {
        ("NVIDIA GeForce RTX 4090", 1.0)
    } else {
        ("NVIDIA GeForce RTX 3090", 0.5)
    };
    let mut toml = format!(
        r#"node_name = "{name}"
time_scale = {time_scale}

[[gpus]]
name = "{gpu}"
count = 1
vram = "24GiB"

[scheduler]
num_parallel = {slots}
max_queue = 512
keep_alive = "5m"
# OLLAMA_CONTEXT_LENGTH=8192, as operators of 24 GiB cards set it: Ollama's default there
# (32k) gives every runner a KV cache so large that only one model fits at a time.
context_length = 8192
# NVMe-class reads: a 7B model loads in about 3 s, a 14B one in about 5 s.
disk_speed = "2GB"
load_overhead = "1s"
"#
    );
    for model in models {
        let (decode, prefill) = catalogue_speed(model);
        toml.push_str(&format!(
            "\n[[models]]\nname = \"{model}\"\ndecode_tps = {}\nprefill_tps = {}\n",
            decode * speed,
            prefill * speed
        ));
    }
    toml
}

/// Decode and prefill tokens/s on an RTX 4090, as the simulator's catalogue has them
/// (from published llama.cpp measurements on that card).
fn catalogue_speed(model: &str) -> (f64, f64) {
    match model {
        "llama3.2:3b" => (200.0, 12_000.0),
        "qwen2.5:7b" => (135.0, 5_200.0),
        "mistral:7b" => (140.0, 5_500.0),
        "llama3.1:8b" => (130.0, 5_000.0),
        "gemma2:9b" => (105.0, 4_200.0),
        "qwen2.5:14b" => (75.0, 2_800.0),
        _ => (130.0, 5_000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slow_node_runs_at_half_speed_with_fewer_slots() {
        let slow = realistic_node("slow-1", false, 2, &["qwen2.5:7b"], 0.1);
        assert!(slow.contains("num_parallel = 2"));
        assert!(slow.contains("decode_tps = 67.5"));
        assert!(slow.contains("time_scale = 0.1"));
        let stream = streaming_node("s", "llama3.2:3b", 10.0, 4000);
        assert!(stream.contains("time_scale = 20"));
    }

    use ollama_mesh_test_support::http;

    #[tokio::test]
    async fn the_largest_streaming_node_holds_its_model_wholly_in_vram() {
        let config = streaming_node("s", "llama3.2:3b", 2.0, 10_000);
        let spec = ollama_mesh_sim::NodeSpec::from_toml(&config).unwrap();
        let node = ollama_mesh_test_support::SimNode::start(spec).await;
        // A request without a prompt loads the model, as in Ollama.
        let (status, _) = http::post(node.addr(), "/api/generate", r#"{"model":"llama3.2:3b"}"#)
            .await
            .expect("the node answers");
        assert_eq!(status, 200, "preloading the model");
        let (_, ps) = http::get(node.addr(), "/api/ps")
            .await
            .expect("the node answers");
        let ps: serde_json::Value = serde_json::from_str(&ps).unwrap();
        let model = &ps["models"][0];
        assert!(
            model["size"].as_u64().unwrap() > 100_000_000_000_000,
            "10 000 KV caches"
        );
        assert_eq!(
            model["size_vram"], model["size"],
            "a runner split onto the CPU decodes slower than the stream rate asked for"
        );
    }
}
