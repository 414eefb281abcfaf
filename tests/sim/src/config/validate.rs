//! Turning a [`NodeSpec`](super::NodeSpec) into concrete, checked values.

use std::time::Duration;

use super::spec::{ByteSize, DurationSpec, GpuSpec, ModelEntrySpec, NodeSpec, SchedulerSpec};
use super::{invalid, ConfigError, DiskModelConfig, Gpu, SchedulerConfig, SimConfig};
use crate::capability::{Capabilities, Capability};
use crate::catalogue;
use crate::duration::KeepAlive;
use crate::names;
use crate::textgen::OutputLength;

/// The Ollama version the project's conformance tests run against.
pub const OLLAMA_VERSION: &str = "0.17.4";
const RTX_4090: &str = "NVIDIA GeForce RTX 4090";
const RTX_4090_VRAM: u64 = 24_564 * 1024 * 1024;
const DEFAULT_DISK_SPEED: u64 = 2_000_000_000;
const DEFAULT_PULL_SPEED: u64 = 100_000_000;
const GIB: u64 = 1024 * 1024 * 1024;

fn positive_bytes(spec: Option<&ByteSize>, field: &str, default: u64) -> Result<u64, ConfigError> {
    match spec.map(|s| s.resolve(field)).transpose()? {
        Some(0) => Err(invalid(field, "must be positive")),
        value => Ok(value.unwrap_or(default)),
    }
}

fn build_gpus(specs: Option<Vec<GpuSpec>>) -> Result<Vec<Gpu>, ConfigError> {
    let specs = specs.unwrap_or_else(|| vec![GpuSpec::default()]);
    let mut gpus = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let vram_bytes = positive_bytes(
            spec.vram.as_ref(),
            &format!("gpus[{i}].vram"),
            RTX_4090_VRAM,
        )?;
        let name = spec.name.clone().unwrap_or_else(|| RTX_4090.to_owned());
        if name.trim().is_empty() {
            return Err(invalid(format!("gpus[{i}].name"), "must not be empty"));
        }
        for _ in 0..spec.count.unwrap_or(1) {
            gpus.push(Gpu {
                name: name.clone(),
                vram_bytes,
            });
        }
    }
    if gpus.is_empty() {
        return Err(invalid("gpus", "at least one GPU is required"));
    }
    Ok(gpus)
}

fn build_scheduler(
    spec: SchedulerSpec,
    gpus: &[Gpu],
    vram_total: u64,
) -> Result<SchedulerConfig, ConfigError> {
    let num_parallel = spec.num_parallel.unwrap_or(1);
    if num_parallel == 0 {
        return Err(invalid("scheduler.num_parallel", "must be at least 1"));
    }
    let max_queue = spec.max_queue.unwrap_or(512);
    if max_queue == 0 {
        return Err(invalid("scheduler.max_queue", "must be at least 1"));
    }
    let max_loaded_models = match spec.max_loaded_models.unwrap_or(0) {
        0 => 3 * gpus.len(),
        n => n,
    };
    let keep_alive = spec
        .keep_alive
        .map(|k| k.keep_alive("scheduler.keep_alive"))
        .transpose()?
        .unwrap_or(KeepAlive::DEFAULT);
    let default_context_length = match spec.context_length {
        Some(0) => return Err(invalid("scheduler.context_length", "must be positive")),
        Some(n) => n,
        None if vram_total >= 47 * GIB => 262_144,
        None if vram_total >= 23 * GIB => 32_768,
        None => 4_096,
    };
    let decode_slowdown = spec
        .decode_slowdown
        .unwrap_or_else(|| vec![1.0, 1.1, 1.2, 1.35]);
    if decode_slowdown.is_empty() || decode_slowdown.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
        return Err(invalid(
            "scheduler.decode_slowdown",
            "must be a non-empty list of positive numbers",
        ));
    }
    let duration = |spec: Option<DurationSpec>, field: &str, default: Duration| {
        spec.map(|d| d.duration(field))
            .transpose()
            .map(|d| d.unwrap_or(default))
    };
    Ok(SchedulerConfig {
        num_parallel,
        max_queue,
        max_loaded_models,
        keep_alive,
        default_context_length,
        disk_bytes_per_sec: positive_bytes(
            spec.disk_speed.as_ref(),
            "scheduler.disk_speed",
            DEFAULT_DISK_SPEED,
        )?,
        load_overhead: duration(
            spec.load_overhead,
            "scheduler.load_overhead",
            Duration::from_millis(800),
        )?,
        vram_release: duration(
            spec.vram_release,
            "scheduler.vram_release",
            Duration::from_millis(500),
        )?,
        decode_slowdown,
        vram_total,
    })
}

fn build_models(specs: Option<Vec<ModelEntrySpec>>) -> Result<Vec<DiskModelConfig>, ConfigError> {
    let specs = specs.unwrap_or_else(|| {
        catalogue::DEFAULT_MODELS
            .iter()
            .map(|n| ModelEntrySpec {
                name: (*n).to_owned(),
                ..ModelEntrySpec::default()
            })
            .collect()
    });
    let mut models: Vec<DiskModelConfig> = Vec::new();
    for (i, entry) in specs.into_iter().enumerate() {
        let field = |name: &str| format!("models[{i}].{name}");
        let name = names::canonical(&entry.name).ok_or_else(|| {
            invalid(
                field("name"),
                format!("{:?} is not a model name", entry.name),
            )
        })?;
        if models.iter().any(|m| m.name == name) {
            return Err(invalid(field("name"), format!("{name} is listed twice")));
        }
        let mut spec = catalogue::lookup(&name);
        if let Some(size) = &entry.size {
            spec.size_bytes = size.resolve(&field("size"))?;
        }
        for (value, target, key) in [
            (entry.prefill_tps, &mut spec.prefill_tps, "prefill_tps"),
            (entry.decode_tps, &mut spec.decode_tps, "decode_tps"),
        ] {
            if let Some(v) = value {
                if !(v.is_finite() && v > 0.0) {
                    return Err(invalid(field(key), "must be a positive number"));
                }
                *target = v;
            }
        }
        for (value, target, key) in [
            (
                entry.context_length,
                &mut spec.context_length,
                "context_length",
            ),
            (
                entry.embedding_length,
                &mut spec.embedding_length,
                "embedding_length",
            ),
        ] {
            match value {
                Some(0) => return Err(invalid(field(key), "must be positive")),
                Some(v) => *target = v,
                None => {}
            }
        }
        spec.family = entry.family.unwrap_or(spec.family);
        spec.parameter_size = entry.parameter_size.unwrap_or(spec.parameter_size);
        spec.quantization = entry.quantization.unwrap_or(spec.quantization);
        spec.capabilities = match (&entry.capabilities, entry.embedding) {
            (Some(caps), _) => capabilities(caps, &field("capabilities"))?,
            (None, Some(true)) => Capabilities::EMBEDDING,
            (None, Some(false)) if spec.is_embedding() => Capabilities::COMPLETION,
            (None, _) => spec.capabilities,
        };
        models.push(DiskModelConfig { name, spec });
    }
    Ok(models)
}

/// A model's capabilities: like every Ollama model, either a generative (`completion`) or an
/// embedding model, never both.
fn capabilities(caps: &[Capability], field: &str) -> Result<Capabilities, ConfigError> {
    let set = Capabilities::of(caps);
    if set.contains(Capability::Completion) == set.contains(Capability::Embedding) {
        return Err(invalid(
            field,
            "must include exactly one of \"completion\" and \"embedding\"",
        ));
    }
    Ok(set)
}

/// Validates a node description.
pub(super) fn node(spec: NodeSpec) -> Result<SimConfig, ConfigError> {
    let time_scale = spec.time_scale.unwrap_or(1.0);
    if !(time_scale.is_finite() && time_scale >= 0.0) {
        return Err(invalid("time_scale", "must be a number >= 0"));
    }
    let gpus = build_gpus(spec.gpus)?;
    let vram_total: u64 = gpus.iter().map(|g| g.vram_bytes).sum();
    let scheduler = build_scheduler(spec.scheduler, &gpus, vram_total)?;
    let models = build_models(spec.models)?;
    let output_tokens = spec.generation.output_tokens.unwrap_or_default();
    if let OutputLength::Uniform { min, max } = output_tokens {
        if min > max {
            return Err(invalid(
                "generation.output_tokens",
                "min must not exceed max",
            ));
        }
    }
    let pull_bytes_per_sec = positive_bytes(
        spec.generation.pull_speed.as_ref(),
        "generation.pull_speed",
        DEFAULT_PULL_SPEED,
    )?;
    Ok(SimConfig {
        node_name: spec.node_name.unwrap_or_else(|| "ollama-sim".to_owned()),
        ollama_version: spec
            .ollama_version
            .unwrap_or_else(|| OLLAMA_VERSION.to_owned()),
        time_scale,
        seed: spec.seed.unwrap_or(0x5eed),
        gpus,
        models,
        scheduler,
        output_tokens,
        pull_bytes_per_sec,
        faults: spec.faults,
    })
}
