//! What the simulator knows about models: a built-in catalogue of common Ollama models with
//! realistic sizes, RTX 4090 speeds and the capabilities the Ollama library gives them, and an
//! estimate for any other `name:tag`.
//!
//! Speeds come from llama.cpp measurements on one RTX 4090, sizes and architectures (blocks,
//! widths, attention heads) from the Ollama library's GGUF files. Unknown names are estimated
//! from a size hint in the tag (`7b`, `70b`, `1.5b`, `135m`); a name without one (such as the
//! conformance tests' `tiny`) is a tiny generative model that answers in microseconds, like the
//! random-weight model the real-Ollama tests use.

use crate::capability::{Capabilities, Capability};
use crate::names;

/// The properties of one model that the API reports and the scheduler simulates.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// `details.family`, also the architecture prefix of `model_info` keys.
    pub family: String,
    /// `details.parameter_size`, e.g. `8.0B`.
    pub parameter_size: String,
    /// `details.quantization_level`, e.g. `Q4_K_M`.
    pub quantization: String,
    /// Weights on disk, in bytes.
    pub size_bytes: u64,
    /// Prompt processing speed on the reference GPU, tokens per second.
    pub prefill_tps: f64,
    /// Generation speed of a single stream on the reference GPU, tokens per second.
    pub decode_tps: f64,
    /// What the model can do; a request needing more is refused (see [`Capabilities`]).
    pub capabilities: Capabilities,
    /// Transformer blocks: `<arch>.block_count` and the `blk.N.*` tensors of `/api/show`.
    pub block_count: u32,
    /// Training context length; caps the default `num_ctx`.
    pub context_length: u32,
    /// Length of the vectors `/api/embed` returns.
    pub embedding_length: u32,
    /// KV-cache bytes per token of context, which together with `num_ctx × num_parallel`
    /// decides how much VRAM a loaded model takes.
    pub kv_bytes_per_token: u64,
    /// Attention heads: `<arch>.attention.head_count`.
    pub head_count: u32,
    /// Key-value heads (fewer than `head_count` with grouped-query attention):
    /// `<arch>.attention.head_count_kv`.
    pub head_count_kv: u32,
}

impl ModelSpec {
    /// An embedding model: Ollama runs it with one slot, and it refuses to generate.
    pub fn is_embedding(&self) -> bool {
        self.capabilities.contains(Capability::Embedding)
    }
}

struct Entry {
    name: &'static str,
    family: &'static str,
    parameter_size: &'static str,
    quantization: &'static str,
    size_bytes: u64,
    prefill_tps: f64,
    decode_tps: f64,
    capabilities: Capabilities,
    block_count: u32,
    context_length: u32,
    embedding_length: u32,
    kv_bytes_per_token: u64,
    head_count: u32,
    head_count_kv: u32,
}

const KIB: u64 = 1024;

#[rustfmt::skip]
const BUILT_IN: &[Entry] = &[
    Entry { name: "llama3.2:1b", family: "llama", parameter_size: "1.2B", quantization: "Q8_0", size_bytes: 1_321_098_329, prefill_tps: 20_000.0, decode_tps: 280.0, capabilities: Capabilities::TOOLS, block_count: 16, context_length: 131_072, embedding_length: 2048, kv_bytes_per_token: 32 * KIB, head_count: 32, head_count_kv: 8 },
    Entry { name: "llama3.2:3b", family: "llama", parameter_size: "3.2B", quantization: "Q4_K_M", size_bytes: 2_019_393_189, prefill_tps: 12_000.0, decode_tps: 200.0, capabilities: Capabilities::TOOLS, block_count: 28, context_length: 131_072, embedding_length: 3072, kv_bytes_per_token: 112 * KIB, head_count: 24, head_count_kv: 8 },
    Entry { name: "llama3.1:8b", family: "llama", parameter_size: "8.0B", quantization: "Q4_K_M", size_bytes: 4_920_753_328, prefill_tps: 5_000.0, decode_tps: 130.0, capabilities: Capabilities::TOOLS, block_count: 32, context_length: 131_072, embedding_length: 4096, kv_bytes_per_token: 128 * KIB, head_count: 32, head_count_kv: 8 },
    Entry { name: "qwen2.5:7b", family: "qwen2", parameter_size: "7.6B", quantization: "Q4_K_M", size_bytes: 4_683_087_332, prefill_tps: 5_200.0, decode_tps: 135.0, capabilities: Capabilities::TOOLS, block_count: 28, context_length: 32_768, embedding_length: 3584, kv_bytes_per_token: 56 * KIB, head_count: 28, head_count_kv: 4 },
    Entry { name: "qwen2.5:14b", family: "qwen2", parameter_size: "14.8B", quantization: "Q4_K_M", size_bytes: 8_988_124_069, prefill_tps: 2_800.0, decode_tps: 75.0, capabilities: Capabilities::TOOLS, block_count: 48, context_length: 32_768, embedding_length: 5120, kv_bytes_per_token: 192 * KIB, head_count: 40, head_count_kv: 8 },
    Entry { name: "mistral:7b", family: "llama", parameter_size: "7.2B", quantization: "Q4_0", size_bytes: 4_113_301_824, prefill_tps: 5_500.0, decode_tps: 140.0, capabilities: Capabilities::TOOLS, block_count: 32, context_length: 32_768, embedding_length: 4096, kv_bytes_per_token: 128 * KIB, head_count: 32, head_count_kv: 8 },
    Entry { name: "gemma2:9b", family: "gemma2", parameter_size: "9.2B", quantization: "Q4_0", size_bytes: 5_443_152_417, prefill_tps: 4_200.0, decode_tps: 105.0, capabilities: Capabilities::COMPLETION, block_count: 42, context_length: 8_192, embedding_length: 3584, kv_bytes_per_token: 336 * KIB, head_count: 16, head_count_kv: 8 },
    Entry { name: "qwen3:8b", family: "qwen3", parameter_size: "8.2B", quantization: "Q4_K_M", size_bytes: 5_225_388_164, prefill_tps: 4_800.0, decode_tps: 125.0, capabilities: Capabilities::THINKING, block_count: 36, context_length: 40_960, embedding_length: 4096, kv_bytes_per_token: 144 * KIB, head_count: 32, head_count_kv: 8 },
    Entry { name: "deepseek-r1:14b", family: "qwen2", parameter_size: "14.8B", quantization: "Q4_K_M", size_bytes: 8_988_112_040, prefill_tps: 2_800.0, decode_tps: 72.0, capabilities: Capabilities::THINKING, block_count: 48, context_length: 131_072, embedding_length: 5120, kv_bytes_per_token: 192 * KIB, head_count: 40, head_count_kv: 8 },
    Entry { name: "nomic-embed-text:v1.5", family: "nomic-bert", parameter_size: "137M", quantization: "F16", size_bytes: 274_302_450, prefill_tps: 30_000.0, decode_tps: 1.0, capabilities: Capabilities::EMBEDDING, block_count: 12, context_length: 2_048, embedding_length: 768, kv_bytes_per_token: KIB, head_count: 12, head_count_kv: 12 },
    Entry { name: "mxbai-embed-large:335m", family: "bert", parameter_size: "334M", quantization: "F16", size_bytes: 669_615_493, prefill_tps: 20_000.0, decode_tps: 1.0, capabilities: Capabilities::EMBEDDING, block_count: 24, context_length: 512, embedding_length: 1024, kv_bytes_per_token: KIB, head_count: 16, head_count_kv: 16 },
];

/// Which built-in entry each library model's `latest` tag points at.
const LATEST: &[(&str, &str)] = &[
    ("llama3.2:latest", "llama3.2:3b"),
    ("llama3.1:latest", "llama3.1:8b"),
    ("qwen2.5:latest", "qwen2.5:7b"),
    ("mistral:latest", "mistral:7b"),
    ("gemma2:latest", "gemma2:9b"),
    ("qwen3:latest", "qwen3:8b"),
    ("deepseek-r1:latest", "deepseek-r1:14b"),
    ("nomic-embed-text:latest", "nomic-embed-text:v1.5"),
    ("mxbai-embed-large:latest", "mxbai-embed-large:335m"),
];

/// The models a node has on disk when neither `--models` nor a config file names any.
pub const DEFAULT_MODELS: &[&str] = &[
    "llama3.2:3b",
    "llama3.1:8b",
    "qwen2.5:7b",
    "nomic-embed-text",
];

/// The spec of the model with canonical name `name`: the built-in entry, or an estimate.
pub fn lookup(name: &str) -> ModelSpec {
    let resolved = LATEST
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, target)| target);
    BUILT_IN
        .iter()
        .find(|e| e.name == resolved)
        .map_or_else(|| estimate(name), from_entry)
}

fn from_entry(e: &Entry) -> ModelSpec {
    ModelSpec {
        family: e.family.to_owned(),
        parameter_size: e.parameter_size.to_owned(),
        quantization: e.quantization.to_owned(),
        size_bytes: e.size_bytes,
        prefill_tps: e.prefill_tps,
        decode_tps: e.decode_tps,
        capabilities: e.capabilities,
        block_count: e.block_count,
        context_length: e.context_length,
        embedding_length: e.embedding_length,
        kv_bytes_per_token: e.kv_bytes_per_token,
        head_count: e.head_count,
        head_count_kv: e.head_count_kv,
    }
}

/// Bytes per parameter of a Q4_K_M GGUF including its non-quantized tensors.
const Q4_BYTES_PER_PARAM: f64 = 0.61;
/// Effective memory bandwidth of an RTX 4090 for decoding (about 65% of 1008 GB/s): decode of a
/// memory-bound model is roughly this divided by the weights' size.
const DECODE_BYTES_PER_SEC: f64 = 650e9;

/// Estimates a model from the size hint in its tag (or base name). Its capabilities are those
/// of a plain generative model, or of an embedding model when the name says so: a name alone
/// does not tell whether a template mentions tools or thinking.
fn estimate(name: &str) -> ModelSpec {
    let base = names::base(name);
    let embedding_only =
        base.contains("embed") || base.starts_with("bge") || base.contains("minilm");
    let capabilities = if embedding_only {
        Capabilities::EMBEDDING
    } else {
        Capabilities::COMPLETION
    };
    let Some(params) = size_hint(names::tag(name)).or_else(|| size_hint(base)) else {
        return tiny(capabilities);
    };
    let billions = params / 1e9;
    let size_bytes = (params * Q4_BYTES_PER_PARAM) as u64;
    ModelSpec {
        family: if embedding_only { "bert" } else { "llama" }.to_owned(),
        parameter_size: if billions >= 1.0 {
            format!("{billions:.1}B")
        } else {
            format!("{:.0}M", params / 1e6)
        },
        quantization: "Q4_K_M".to_owned(),
        size_bytes,
        prefill_tps: (40_000.0 / billions).min(30_000.0),
        decode_tps: (DECODE_BYTES_PER_SEC / size_bytes as f64).min(300.0),
        capabilities,
        // Depth grows with about the cube root of the size: 16 blocks at 1B, 32 at 8B.
        block_count: ((16.0 * billions.cbrt()).round() as u32).max(2),
        context_length: if embedding_only { 2_048 } else { 32_768 },
        embedding_length: if embedding_only { 768 } else { 4096 },
        kv_bytes_per_token: ((16.0 * billions) as u64).max(1) * KIB,
        // 128-wide heads with grouped-query attention, as the llama-style models above.
        head_count: if embedding_only { 12 } else { 32 },
        head_count_kv: if embedding_only { 12 } else { 8 },
    }
}

/// A random-weight model of a few hundred kilobytes, like the one the real-Ollama tests create
/// (two blocks, and only the `completion` capability).
fn tiny(capabilities: Capabilities) -> ModelSpec {
    ModelSpec {
        family: "llama".to_owned(),
        parameter_size: "0.2M".to_owned(),
        quantization: "F32".to_owned(),
        size_bytes: 700_000,
        prefill_tps: 100_000.0,
        decode_tps: 2_000.0,
        capabilities,
        block_count: 2,
        context_length: 2_048,
        embedding_length: 64,
        kv_bytes_per_token: 512,
        head_count: 4,
        head_count_kv: 4,
    }
}

/// The parameter count named by a hint such as `7b`, `1.5b`, `8x7b`, `135m` or `7b-instruct-q8_0`.
fn size_hint(text: &str) -> Option<f64> {
    text.split(['-', '_', ':']).find_map(|part| {
        let (count, rest) = match part.split_once('x') {
            Some((n, rest)) if n.parse::<f64>().is_ok() => (n.parse::<f64>().ok()?, rest),
            _ => (1.0, part),
        };
        let unit = match rest.chars().last()? {
            'b' | 'B' => 1e9,
            'm' | 'M' => 1e6,
            _ => return None,
        };
        let number: f64 = rest[..rest.len() - 1].parse().ok()?;
        (number > 0.0).then_some(count * number * unit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_tags_resolve_to_built_in_entries() {
        assert_eq!(lookup("llama3.2:latest"), lookup("llama3.2:3b"));
        assert_eq!(lookup("qwen3:latest"), lookup("qwen3:8b"));
        assert!(lookup("nomic-embed-text:latest").is_embedding());
        assert!(lookup("mxbai-embed-large:latest").is_embedding());
        assert!(!lookup("mistral:7b").is_embedding());
    }

    #[test]
    fn built_in_models_have_their_library_capabilities() {
        let caps = |name: &str| lookup(name).capabilities.names();
        for name in [
            "llama3.1:8b",
            "llama3.2:1b",
            "qwen2.5:14b",
            "mistral:latest",
        ] {
            assert_eq!(caps(name), ["completion", "tools"], "{name}");
        }
        assert_eq!(caps("gemma2:9b"), ["completion"]);
        for name in ["deepseek-r1:latest", "qwen3:8b"] {
            assert_eq!(caps(name), ["completion", "tools", "thinking"], "{name}");
        }
        assert_eq!(caps("nomic-embed-text:v1.5"), ["embedding"]);
    }

    #[test]
    fn estimates_scale_with_the_tag() {
        let small = lookup("foo:7b");
        let big = lookup("foo:70b");
        assert!(big.size_bytes > 9 * small.size_bytes);
        assert!(big.decode_tps < small.decode_tps / 5.0);
        assert!(big.block_count > small.block_count);
        assert_eq!(big.parameter_size, "70.0B");
        assert!((size_hint("8x7b").unwrap() - 56e9).abs() < 1.0);
        assert!((size_hint("1.5b-instruct-q8_0").unwrap() - 1.5e9).abs() < 1.0);
        assert_eq!(lookup("smollm:135m").parameter_size, "135M");
    }

    #[test]
    fn names_without_a_size_hint_are_tiny_generative_models() {
        let tiny = lookup("tiny:latest");
        assert_eq!(tiny.capabilities, Capabilities::COMPLETION);
        assert!(tiny.size_bytes < 10_000_000);
        assert_eq!(
            lookup("my-embed:latest").capabilities,
            Capabilities::EMBEDDING
        );
        assert_eq!(lookup("foo:7b").capabilities, Capabilities::COMPLETION);
    }
}
