//! How long simulated work takes: loads, prefill, decode, and how memory a runner needs.

use std::time::Duration;

use crate::catalogue::ModelSpec;

/// How much slower a layer runs on the CPU than on the GPU when a model is split.
const CPU_PENALTY: f64 = 10.0;

/// Effective speeds of one loaded runner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// Prompt tokens per second.
    pub prefill_tps: f64,
    /// Generated tokens per second of a single stream.
    pub decode_tps: f64,
}

impl Speed {
    /// The speeds of `spec` with `gpu_fraction` of its bytes in VRAM (the rest on the CPU).
    pub fn placed(spec: &ModelSpec, gpu_fraction: f64) -> Self {
        let f = gpu_fraction.clamp(0.0, 1.0);
        let factor = 1.0 / (f + (1.0 - f) * CPU_PENALTY);
        Self {
            prefill_tps: spec.prefill_tps * factor,
            decode_tps: spec.decode_tps * factor,
        }
    }

    /// Time to process `tokens` uncached prompt tokens.
    pub fn prefill(self, tokens: usize) -> Duration {
        Duration::from_secs_f64(tokens as f64 / self.prefill_tps)
    }

    /// Time of one generated token while `busy` slots of the same runner decode.
    pub fn token(self, curve: &[f64], busy: usize) -> Duration {
        Duration::from_secs_f64(slowdown(curve, busy) / self.decode_tps)
    }
}

/// The per-token time multiplier with `busy` slots decoding at once: `curve[busy - 1]`, and past
/// the end of the curve its last step repeats (so `[1.0, 1.1]` gives 1.2 for three slots).
pub fn slowdown(curve: &[f64], busy: usize) -> f64 {
    let i = busy.max(1) - 1;
    match curve.get(i) {
        Some(f) => *f,
        None => {
            let last = curve[curve.len() - 1];
            let step = if curve.len() > 1 {
                last - curve[curve.len() - 2]
            } else {
                0.0
            };
            last + step * (i + 1 - curve.len()) as f64
        }
    }
}

/// Time to load `bytes` of weights at `disk_bytes_per_sec`, plus the runner start-up cost.
pub fn load_time(bytes: u64, disk_bytes_per_sec: u64, overhead: Duration) -> Duration {
    overhead + Duration::from_secs_f64(bytes as f64 / disk_bytes_per_sec as f64)
}

/// Memory a runner takes: the weights plus a KV cache of `num_ctx × num_parallel` tokens
/// (Ollama sizes the cache that way, `-c` in llm/llama_server.go).
pub fn runner_size(spec: &ModelSpec, num_ctx: u32, num_parallel: usize) -> u64 {
    spec.size_bytes + spec.kv_bytes_per_token * u64::from(num_ctx) * num_parallel as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue;

    #[test]
    fn slowdown_curve_extrapolates_its_last_step() {
        let curve = [1.0, 1.1, 1.25];
        assert_eq!(slowdown(&curve, 0), 1.0);
        assert_eq!(slowdown(&curve, 2), 1.1);
        assert!((slowdown(&curve, 5) - 1.55).abs() < 1e-9);
        assert_eq!(slowdown(&[1.3], 7), 1.3);
    }

    #[test]
    fn split_models_are_slower() {
        let spec = catalogue::lookup("llama3.1:8b");
        let full = Speed::placed(&spec, 1.0);
        let half = Speed::placed(&spec, 0.5);
        assert_eq!(full.decode_tps, spec.decode_tps);
        assert!(half.decode_tps < full.decode_tps / 5.0);
        assert_eq!(full.prefill(5000), Duration::from_secs(1));
    }

    #[test]
    fn load_time_follows_disk_speed() {
        let t = load_time(4_000_000_000, 2_000_000_000, Duration::from_millis(500));
        assert_eq!(t, Duration::from_millis(2500));
    }
}
