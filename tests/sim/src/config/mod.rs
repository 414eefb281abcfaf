//! Node configuration: the TOML file / builder ([`NodeSpec`]) and the validated form the
//! simulator runs on ([`SimConfig`]).
//!
//! Every setting is optional in the file; defaults model one RTX 4090 (24 GiB) running a few
//! common models with Ollama's default scheduler settings. Validation turns the loose spec into
//! concrete values and names the offending field when something is wrong, e.g.
//! `models[1].decode_tps: must be a positive number`.
//!
//! ```toml
//! node_name = "gpu-1"
//! time_scale = 0.1          # real seconds per simulated second; 0 = never sleep
//!
//! [[gpus]]
//! name = "NVIDIA GeForce RTX 4090"
//! count = 1
//! vram = "24564MiB"
//!
//! [[models]]
//! name = "llama3.1:8b"      # everything else defaults from the built-in catalogue
//! [[models]]
//! name = "my-model:13b"
//! size = "7.4GB"
//! decode_tps = 89
//! prefill_tps = 3140
//! capabilities = ["completion", "tools"]   # default: the catalogue's, or ["completion"]
//!
//! [scheduler]
//! num_parallel = 1          # OLLAMA_NUM_PARALLEL
//! max_queue = 512           # OLLAMA_MAX_QUEUE
//! max_loaded_models = 0     # OLLAMA_MAX_LOADED_MODELS (0 = 3 per GPU)
//! keep_alive = "5m"         # OLLAMA_KEEP_ALIVE
//! disk_speed = "2GB"        # bytes per second read while loading
//! decode_slowdown = [1.0, 1.1, 1.2, 1.35]
//!
//! [generation]
//! output_tokens = { kind = "uniform", min = 32, max = 384 }
//!
//! [faults]
//! stall_ms = 0
//! ```

mod spec;
mod validate;

use std::path::PathBuf;
use std::time::Duration;

pub use self::spec::{
    ByteSize, DurationSpec, GenerationSpec, GpuSpec, ModelEntrySpec, NodeSpec, SchedulerSpec,
};
pub use self::validate::OLLAMA_VERSION;
use crate::catalogue::ModelSpec;
use crate::duration::KeepAlive;
use crate::faults::FaultSpec;
use crate::textgen::OutputLength;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config: {0}")]
    Toml(#[from] toml::de::Error),
    /// A value is out of range or malformed.
    #[error("{field}: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `scheduler.max_queue`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A [`ConfigError::Invalid`] for `field`.
fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One GPU device.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    /// As nvidia-smi reports it.
    pub name: String,
    /// Total memory in bytes.
    pub vram_bytes: u64,
}

/// A model present on disk at start.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskModelConfig {
    /// Canonical name.
    pub name: String,
    /// Its properties.
    pub spec: ModelSpec,
}

/// Validated scheduler settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// `OLLAMA_NUM_PARALLEL`. Defaults to 1, the default of the newest Ollama (since v0.9.7);
    /// v0.2–v0.9.6 used 4 (2 from v0.6.7), so set it to simulate those nodes. Embedding-only
    /// models always get 1 slot, as in Ollama.
    pub num_parallel: usize,
    /// `OLLAMA_MAX_QUEUE` (default 512): requests waiting for a model load beyond this get 503.
    pub max_queue: usize,
    /// `OLLAMA_MAX_LOADED_MODELS`, resolved (default 3 per GPU).
    pub max_loaded_models: usize,
    /// `OLLAMA_KEEP_ALIVE` (default 5m).
    pub keep_alive: KeepAlive,
    /// The `num_ctx` of requests that set none, before capping at the model's training context.
    pub default_context_length: u32,
    /// Disk read speed during loads.
    pub disk_bytes_per_sec: u64,
    /// Runner start-up cost added to every load.
    pub load_overhead: Duration,
    /// Wait after an eviction before the freed VRAM can be used.
    pub vram_release: Duration,
    /// Decode slowdown curve; see [`SchedulerSpec::decode_slowdown`].
    pub decode_slowdown: Vec<f64>,
    /// Sum of the GPUs' memory.
    pub vram_total: u64,
}

/// A validated simulator configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Node name reported by `/sim/stats`.
    pub node_name: String,
    /// Reported by `/api/version`.
    pub ollama_version: String,
    /// Real seconds per simulated second (0 = never sleep).
    pub time_scale: f64,
    /// Default seed of the pseudo-text.
    pub seed: u64,
    /// The GPU devices.
    pub gpus: Vec<Gpu>,
    /// Models on disk at start.
    pub models: Vec<DiskModelConfig>,
    /// Scheduler settings.
    pub scheduler: SchedulerConfig,
    /// Response length distribution.
    pub output_tokens: OutputLength,
    /// Download speed of `/api/pull`.
    pub pull_bytes_per_sec: u64,
    /// Faults active from the start.
    pub faults: FaultSpec,
}

impl SimConfig {
    /// The default node with these catalogue models on disk.
    pub fn with_models<S: AsRef<str>>(
        names: impl IntoIterator<Item = S>,
    ) -> Result<Self, ConfigError> {
        NodeSpec::default().models(names).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{Capabilities, Capability};

    #[test]
    fn defaults_model_an_rtx_4090_node() {
        let cfg = NodeSpec::default().build().unwrap();
        assert_eq!(cfg.gpus.len(), 1);
        assert_eq!(cfg.scheduler.vram_total, 24_564 * 1024 * 1024);
        assert_eq!(cfg.scheduler.num_parallel, 1);
        assert_eq!(cfg.scheduler.max_queue, 512);
        assert_eq!(cfg.scheduler.max_loaded_models, 3);
        assert_eq!(cfg.scheduler.keep_alive, KeepAlive::DEFAULT);
        assert_eq!(cfg.scheduler.default_context_length, 32_768);
        assert!(cfg
            .models
            .iter()
            .any(|m| m.name == "nomic-embed-text:latest"));
    }

    #[test]
    fn toml_file_overrides_catalogue_values() {
        let cfg = NodeSpec::from_toml(
            r#"
            time_scale = 0
            [[gpus]]
            name = "NVIDIA A100-SXM4-80GB"
            count = 2
            vram = "80GiB"
            [[models]]
            name = "mine:13b"
            size = "7.4GB"
            decode_tps = 89
            [scheduler]
            num_parallel = 4
            keep_alive = -1
            max_loaded_models = 0
            "#,
        )
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(cfg.gpus.len(), 2);
        assert_eq!(cfg.scheduler.max_loaded_models, 6);
        assert_eq!(cfg.scheduler.keep_alive, KeepAlive::Forever);
        assert_eq!(cfg.scheduler.default_context_length, 262_144);
        assert_eq!(cfg.models[0].spec.size_bytes, 7_400_000_000);
        assert_eq!(cfg.models[0].spec.decode_tps, 89.0);
    }

    #[test]
    fn capabilities_come_from_the_catalogue_or_the_file() {
        let cfg = NodeSpec::from_toml(
            r#"
            [[models]]
            name = "llama3.1:8b"
            [[models]]
            name = "mine:13b"
            capabilities = ["thinking", "completion"]
            [[models]]
            name = "vectors:1b"
            embedding = true
            [[models]]
            name = "nomic-embed-text"
            embedding = false
            "#,
        )
        .unwrap()
        .build()
        .unwrap();
        let caps: Vec<_> = cfg.models.iter().map(|m| m.spec.capabilities).collect();
        assert_eq!(
            caps,
            [
                Capabilities::TOOLS,
                Capabilities::of(&[Capability::Completion, Capability::Thinking]),
                Capabilities::EMBEDDING,
                Capabilities::COMPLETION,
            ]
        );
    }

    #[test]
    fn keep_alive_reads_like_ollama_keep_alive() {
        let ka = |v: &str| {
            NodeSpec::default()
                .keep_alive(v)
                .build()
                .unwrap()
                .scheduler
                .keep_alive
        };
        assert_eq!(ka("-1"), KeepAlive::Forever);
        assert_eq!(ka("600"), KeepAlive::For(Duration::from_secs(600)));
        assert_eq!(ka("1h"), KeepAlive::For(Duration::from_secs(3600)));
        assert_eq!(ka("0"), KeepAlive::For(Duration::ZERO));
    }

    #[test]
    fn errors_name_the_field() {
        let err = |toml: &str| {
            NodeSpec::from_toml(toml)
                .unwrap()
                .build()
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("[[models]]\nname = \"a\"\n[[models]]\nname = \"b\"\ndecode_tps = 0")
                .starts_with("models[1].decode_tps:")
        );
        assert!(err("[scheduler]\nnum_parallel = 0").starts_with("scheduler.num_parallel:"));
        assert!(err("[scheduler]\nkeep_alive = \"soon\"").starts_with("scheduler.keep_alive:"));
        assert!(err("[scheduler]\nvram_release = \"-1s\"").starts_with("scheduler.vram_release:"));
        assert!(err("[[gpus]]\nvram = \"24 parsecs\"").starts_with("gpus[0].vram:"));
        assert!(err("gpus = []").starts_with("gpus:"));
        assert!(err("[[models]]\nname = \"a\"\ncapabilities = [\"tools\"]")
            .starts_with("models[0].capabilities:"));
        assert!(NodeSpec::from_toml("bogus = 1").is_err());
        assert!(NodeSpec::from_toml("[[models]]\nname = \"a\"\ncapabilities = [\"x\"]").is_err());
    }
}
