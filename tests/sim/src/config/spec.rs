//! The loose, all-optional node description: what a TOML file holds and what tests build.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, validate, ConfigError, SimConfig};
use crate::capability::Capability;
use crate::duration::KeepAlive;
use crate::faults::FaultSpec;
use crate::textgen::OutputLength;

/// A byte count: an integer, or a string with a unit (`"24GiB"`, `"4.9GB"`, `"700MB"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    /// Plain bytes.
    Bytes(u64),
    /// A number with a unit.
    Text(String),
}

impl ByteSize {
    pub(super) fn resolve(&self, field: &str) -> Result<u64, ConfigError> {
        let text = match self {
            ByteSize::Bytes(b) => return Ok(*b),
            ByteSize::Text(t) => t.trim(),
        };
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let number: f64 = text[..split]
            .parse()
            .map_err(|_| invalid(field, format!("{text:?} is not a size such as \"24GiB\"")))?;
        let unit = match text[split..].trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "tb" => 1e12,
            "kib" => 1024.0,
            "mib" => 1024.0 * 1024.0,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            "tib" => 1024.0f64.powi(4),
            other => return Err(invalid(field, format!("unknown unit {other:?}"))),
        };
        Ok((number * unit) as u64)
    }
}

/// A duration: seconds as a number, or a Go duration string (`"5m"`, `"-1s"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum DurationSpec {
    /// Seconds.
    Secs(f64),
    /// A Go duration.
    Text(String),
}

impl DurationSpec {
    /// Like `OLLAMA_KEEP_ALIVE`: a Go duration, or a bare number of seconds.
    pub(super) fn keep_alive(&self, field: &str) -> Result<KeepAlive, ConfigError> {
        let secs = match self {
            DurationSpec::Secs(s) => *s,
            DurationSpec::Text(t) => match (KeepAlive::parse(t), t.trim().parse::<f64>()) {
                (Ok(k), _) => return Ok(k),
                (Err(_), Ok(secs)) => secs,
                (Err(e), Err(_)) => return Err(invalid(field, e.to_string())),
            },
        };
        Ok(if secs < 0.0 {
            KeepAlive::Forever
        } else {
            KeepAlive::For(Duration::from_secs_f64(secs.min(1e12)))
        })
    }

    pub(super) fn duration(&self, field: &str) -> Result<Duration, ConfigError> {
        match self.keep_alive(field)? {
            KeepAlive::For(d) => Ok(d),
            KeepAlive::Forever => Err(invalid(field, "must not be negative")),
        }
    }
}

/// One kind of GPU in the node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// As nvidia-smi names it; default `NVIDIA GeForce RTX 4090`.
    pub name: Option<String>,
    /// How many; default 1.
    pub count: Option<u32>,
    /// Memory per GPU; default 24564 MiB.
    pub vram: Option<ByteSize>,
}

/// A model on the node's disk; unset fields come from the catalogue.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntrySpec {
    /// The Ollama name, e.g. `llama3.1:8b`.
    pub name: String,
    /// Size of the weights.
    pub size: Option<ByteSize>,
    /// `details.family`.
    pub family: Option<String>,
    /// `details.parameter_size`, e.g. `8.0B`.
    pub parameter_size: Option<String>,
    /// `details.quantization_level`.
    pub quantization: Option<String>,
    /// Prompt tokens per second.
    pub prefill_tps: Option<f64>,
    /// Generated tokens per second of one stream.
    pub decode_tps: Option<f64>,
    /// Embedding-only model (refuses chat and generate): shorthand for `capabilities =
    /// ["embedding"]`, or with `false` for `["completion"]`.
    pub embedding: Option<bool>,
    /// The capabilities `/api/show` lists and requests are checked against, e.g.
    /// `["completion", "tools"]`; overrides `embedding`.
    pub capabilities: Option<Vec<Capability>>,
    /// Training context length.
    pub context_length: Option<u32>,
    /// Embedding vector length.
    pub embedding_length: Option<u32>,
}

/// Scheduler settings, mirroring Ollama's environment variables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSpec {
    /// `OLLAMA_NUM_PARALLEL`: slots per loaded model.
    pub num_parallel: Option<usize>,
    /// `OLLAMA_MAX_QUEUE`: capacity of the pending-load queue.
    pub max_queue: Option<usize>,
    /// `OLLAMA_MAX_LOADED_MODELS`; 0 means 3 per GPU.
    pub max_loaded_models: Option<usize>,
    /// `OLLAMA_KEEP_ALIVE`.
    pub keep_alive: Option<DurationSpec>,
    /// `OLLAMA_CONTEXT_LENGTH`; unset means Ollama's VRAM-based default.
    pub context_length: Option<u32>,
    /// Bytes per second read from disk while loading a model.
    pub disk_speed: Option<ByteSize>,
    /// Fixed cost of starting a runner, on top of reading the weights.
    pub load_overhead: Option<DurationSpec>,
    /// How long freed VRAM takes to become available after an eviction.
    pub vram_release: Option<DurationSpec>,
    /// Per-token decode time multiplier by number of busy slots of the model: entry `i` applies
    /// when `i + 1` slots decode at once; beyond the list the last step repeats.
    pub decode_slowdown: Option<Vec<f64>>,
}

/// Generation settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    /// Response length when a request sets no limit.
    pub output_tokens: Option<OutputLength>,
    /// Download speed of `/api/pull`, bytes per second.
    pub pull_speed: Option<ByteSize>,
}

/// A node description as written in a TOML file, and the builder tests use.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Reported in `/sim/stats`; default `ollama-sim`.
    pub node_name: Option<String>,
    /// What `/api/version` reports; default the real Ollama the project tests against.
    pub ollama_version: Option<String>,
    /// Real seconds per simulated second: 1 is real time, 0 never sleeps.
    pub time_scale: Option<f64>,
    /// Seed of the pseudo-text (a request's `seed` option overrides it).
    pub seed: Option<u64>,
    /// The GPUs; default one RTX 4090.
    pub gpus: Option<Vec<GpuSpec>>,
    /// Models on disk; default [`crate::catalogue::DEFAULT_MODELS`].
    pub models: Option<Vec<ModelEntrySpec>>,
    /// Scheduler settings.
    #[serde(default)]
    pub scheduler: SchedulerSpec,
    /// Generation settings.
    #[serde(default)]
    pub generation: GenerationSpec,
    /// Faults active from the start.
    #[serde(default)]
    pub faults: FaultSpec,
}

impl NodeSpec {
    /// Parses a TOML node description.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Reads a TOML node description from `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Replaces the models on disk by catalogue models with these names.
    pub fn models<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.models = Some(
            names
                .into_iter()
                .map(|n| ModelEntrySpec {
                    name: n.as_ref().to_owned(),
                    ..ModelEntrySpec::default()
                })
                .collect(),
        );
        self
    }

    /// Sets the time scale.
    pub fn time_scale(mut self, scale: f64) -> Self {
        self.time_scale = Some(scale);
        self
    }

    /// Sets `OLLAMA_NUM_PARALLEL`.
    pub fn num_parallel(mut self, n: usize) -> Self {
        self.scheduler.num_parallel = Some(n);
        self
    }

    /// Sets `OLLAMA_MAX_QUEUE`.
    pub fn max_queue(mut self, n: usize) -> Self {
        self.scheduler.max_queue = Some(n);
        self
    }

    /// Sets `OLLAMA_MAX_LOADED_MODELS`.
    pub fn max_loaded_models(mut self, n: usize) -> Self {
        self.scheduler.max_loaded_models = Some(n);
        self
    }

    /// Sets `OLLAMA_KEEP_ALIVE` from a Go duration string.
    pub fn keep_alive(mut self, value: &str) -> Self {
        self.scheduler.keep_alive = Some(DurationSpec::Text(value.to_owned()));
        self
    }

    /// Sets the node name.
    pub fn node_name(mut self, name: &str) -> Self {
        self.node_name = Some(name.to_owned());
        self
    }

    /// Makes every response exactly `tokens` long unless the request limits it.
    pub fn output_tokens(mut self, tokens: u32) -> Self {
        self.generation.output_tokens = Some(OutputLength::Fixed { tokens });
        self
    }

    /// Validates the description into a runnable configuration.
    pub fn build(self) -> Result<SimConfig, ConfigError> {
        validate::node(self)
    }
}
