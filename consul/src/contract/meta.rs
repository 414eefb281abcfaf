//! What a node says about itself in its service instance's Meta, and how that survives
//! Consul's Meta limits.
//!
//! Consul accepts at most 64 Meta pairs per instance, keys of at most 128 characters matching
//! `^[a-zA-Z0-9_-]+$`, and values of at most 512 characters. Model lists can be longer than one
//! value, so they are spread over numbered continuation keys (`models_on_disk`,
//! `models_on_disk_2`, …) and always carry their full count in `<list>_count`: a reader can tell
//! a truncated list from a complete one, and a name is never cut in half.

use std::collections::BTreeMap;

/// Consul's limit on Meta pairs per service instance.
pub const MAX_META_PAIRS: usize = 64;
/// Consul's limit on a Meta key's length.
pub const MAX_META_KEY_LEN: usize = 128;
/// Consul's limit on a Meta value's length.
pub const MAX_META_VALUE_LEN: usize = 512;

/// The schema this code writes and reads. Bump it when a key changes meaning; readers reject
/// schemas they do not know rather than guess.
pub const SCHEMA_VERSION: u32 = 1;

/// How many Meta values the models on disk may use (16 × 512 characters: hundreds of names).
pub const MODELS_ON_DISK_MAX_VALUES: usize = 16;
/// How many Meta values the loaded models may use (a GPU node rarely holds more than a few).
pub const MODELS_LOADED_MAX_VALUES: usize = 4;

/// Separates model names in a list value. Ollama model names never contain it.
const LIST_SEPARATOR: char = ',';

/// Every Meta key ollama-mesh writes. The Consul UI lists them verbatim, so they are
/// readable names.
pub mod keys {
    /// Version of this Meta layout ([`super::SCHEMA_VERSION`]).
    pub const SCHEMA: &str = "ollama_mesh_schema";
    /// GPU model as the driver names it, e.g. `NVIDIA GeForce RTX 4090`; absent on CPU nodes.
    pub const GPU_NAME: &str = "gpu_name";
    /// Number of GPUs Ollama can use.
    pub const GPU_COUNT: &str = "gpu_count";
    /// Total VRAM of all GPUs, in MiB.
    pub const GPU_VRAM_MIB: &str = "gpu_vram_mib";
    /// Requests one loaded model serves at once (`OLLAMA_NUM_PARALLEL`).
    pub const PARALLEL_SLOTS: &str = "parallel_slots";
    /// Comma-separated models on disk (`/api/tags`), continued in `models_on_disk_2`, ….
    pub const MODELS_ON_DISK: &str = "models_on_disk";
    /// Comma-separated models loaded in memory (`/api/ps`), continued in `models_loaded_2`, ….
    pub const MODELS_LOADED: &str = "models_loaded";
    /// Ollama's version (`/api/version`).
    pub const OLLAMA_VERSION: &str = "ollama_version";
    /// The sidecar's version.
    pub const SIDECAR_VERSION: &str = "sidecar_version";
    /// `true` when the node can be reclaimed by its cloud without warning (spot/preemptible).
    pub const PREEMPTIBLE: &str = "preemptible";
    /// Suffix of the key holding a list's full length.
    pub const COUNT_SUFFIX: &str = "_count";
}

/// A node's self-description as stored in its service instance's Meta.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMeta {
    /// GPU model name; `None` on CPU-only nodes.
    pub gpu_name: Option<String>,
    /// Number of GPUs.
    pub gpu_count: u32,
    /// Total VRAM of all GPUs, in MiB.
    pub gpu_vram_mib: u64,
    /// Requests one loaded model serves at once.
    pub parallel_slots: u32,
    /// Models on disk.
    pub models_on_disk: ModelList,
    /// Models loaded in memory.
    pub models_loaded: ModelList,
    /// Ollama's version, when known.
    pub ollama_version: Option<String>,
    /// The sidecar's version.
    pub sidecar_version: String,
    /// Whether the node may vanish without warning.
    pub preemptible: bool,
}

/// A list of model names that remembers how many there really were.
///
/// Names are kept sorted and unique, so the same set always encodes to the same Meta and an
/// unchanged node never causes a Consul write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelList {
    names: Vec<String>,
    total: usize,
}

/// Why Meta could not be read as [`NodeMeta`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The instance was not registered by an ollama-mesh sidecar.
    #[error("meta key {} is missing: not an ollama-mesh instance", keys::SCHEMA)]
    NotOllamaMesh,
    /// Written by a newer sidecar whose layout this code does not know.
    #[error("meta schema {0:?} is not supported (this build reads schema {SCHEMA_VERSION})")]
    UnsupportedSchema(String),
    /// A value does not parse as what its key holds.
    #[error("meta key {key} has invalid value {value:?}: expected {expected}")]
    InvalidValue {
        /// The offending key.
        key: String,
        /// Its value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

impl ModelList {
    /// A complete list of the given names.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut names: Vec<String> = names.into_iter().map(Into::into).collect();
        names.sort();
        names.dedup();
        let total = names.len();
        Self { names, total }
    }

    /// The names that are listed (all of them unless [`ModelList::is_truncated`]).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// How many models there are, listed or not.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Whether some names did not fit in Meta.
    pub fn is_truncated(&self) -> bool {
        self.total > self.names.len()
    }

    /// Whether `model` is listed, treating `name` and `name:latest` as the same model.
    pub fn contains(&self, model: &str) -> bool {
        let wanted = canonical_model_name(model);
        self.names.iter().any(|n| canonical_model_name(n) == wanted)
    }

    fn encode(&self, key: &str, max_values: usize, meta: &mut BTreeMap<String, String>) {
        let mut values: Vec<String> = Vec::new();
        let mut current = String::new();
        for name in &self.names {
            if name.is_empty() || name.len() > MAX_META_VALUE_LEN || name.contains(LIST_SEPARATOR) {
                continue;
            }
            let needed = if current.is_empty() {
                name.len()
            } else {
                current.len() + 1 + name.len()
            };
            if needed > MAX_META_VALUE_LEN {
                if values.len() + 1 == max_values {
                    break;
                }
                values.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push(LIST_SEPARATOR);
            }
            current.push_str(name);
        }
        values.push(current);
        for (i, value) in values.into_iter().enumerate() {
            meta.insert(list_value_key(key, i), value);
        }
        meta.insert(
            format!("{key}{}", keys::COUNT_SUFFIX),
            self.total.to_string(),
        );
    }

    fn decode(
        key: &str,
        max_values: usize,
        meta: &BTreeMap<String, String>,
    ) -> Result<Self, MetaError> {
        let names: Vec<String> = (0..max_values)
            .map_while(|i| meta.get(&list_value_key(key, i)))
            .flat_map(|value| value.split(LIST_SEPARATOR))
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        let mut list = Self::new(names);
        let count_key = format!("{key}{}", keys::COUNT_SUFFIX);
        if meta.contains_key(&count_key) {
            let count: usize = parse_number(meta, &count_key)?;
            list.total = count.max(list.names.len());
        }
        Ok(list)
    }
}

/// `models_on_disk`, `models_on_disk_2`, `models_on_disk_3`, …
fn list_value_key(key: &str, index: usize) -> String {
    if index == 0 {
        key.to_owned()
    } else {
        format!("{key}_{}", index + 1)
    }
}

/// The name Ollama resolves `model` to: a missing tag means `:latest`.
///
/// The tag is what follows the last `:` after the last `/`, so a registry port
/// (`localhost:5000/llama3`) is not mistaken for a tag.
pub fn canonical_model_name(model: &str) -> String {
    let last_segment = model.rsplit('/').next().unwrap_or(model);
    if last_segment.contains(':') {
        model.to_owned()
    } else {
        format!("{model}:latest")
    }
}

impl NodeMeta {
    /// Encodes the node as Consul Meta, within Consul's limits.
    pub fn to_consul_meta(&self) -> BTreeMap<String, String> {
        let mut meta = BTreeMap::new();
        meta.insert(keys::SCHEMA.to_owned(), SCHEMA_VERSION.to_string());
        if let Some(gpu) = &self.gpu_name {
            meta.insert(keys::GPU_NAME.to_owned(), fit_value(gpu));
        }
        meta.insert(keys::GPU_COUNT.to_owned(), self.gpu_count.to_string());
        meta.insert(keys::GPU_VRAM_MIB.to_owned(), self.gpu_vram_mib.to_string());
        meta.insert(
            keys::PARALLEL_SLOTS.to_owned(),
            self.parallel_slots.to_string(),
        );
        self.models_on_disk
            .encode(keys::MODELS_ON_DISK, MODELS_ON_DISK_MAX_VALUES, &mut meta);
        self.models_loaded
            .encode(keys::MODELS_LOADED, MODELS_LOADED_MAX_VALUES, &mut meta);
        if let Some(version) = &self.ollama_version {
            meta.insert(keys::OLLAMA_VERSION.to_owned(), fit_value(version));
        }
        meta.insert(
            keys::SIDECAR_VERSION.to_owned(),
            fit_value(&self.sidecar_version),
        );
        meta.insert(keys::PREEMPTIBLE.to_owned(), self.preemptible.to_string());
        meta
    }

    /// Reads a node back from Consul Meta. Keys this schema does not define are ignored, so
    /// operators may add their own.
    pub fn from_consul_meta(meta: &BTreeMap<String, String>) -> Result<Self, MetaError> {
        match meta.get(keys::SCHEMA) {
            None => return Err(MetaError::NotOllamaMesh),
            Some(v) if v.parse::<u32>() != Ok(SCHEMA_VERSION) => {
                return Err(MetaError::UnsupportedSchema(v.clone()))
            }
            Some(_) => {}
        }
        Ok(Self {
            gpu_name: meta.get(keys::GPU_NAME).cloned(),
            gpu_count: parse_number(meta, keys::GPU_COUNT)?,
            gpu_vram_mib: parse_number(meta, keys::GPU_VRAM_MIB)?,
            parallel_slots: parse_number(meta, keys::PARALLEL_SLOTS)?,
            models_on_disk: ModelList::decode(
                keys::MODELS_ON_DISK,
                MODELS_ON_DISK_MAX_VALUES,
                meta,
            )?,
            models_loaded: ModelList::decode(keys::MODELS_LOADED, MODELS_LOADED_MAX_VALUES, meta)?,
            ollama_version: meta.get(keys::OLLAMA_VERSION).cloned(),
            sidecar_version: meta.get(keys::SIDECAR_VERSION).cloned().unwrap_or_default(),
            preemptible: match meta.get(keys::PREEMPTIBLE).map(String::as_str) {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(MetaError::InvalidValue {
                        key: keys::PREEMPTIBLE.to_owned(),
                        value: other.to_owned(),
                        expected: "true or false",
                    })
                }
            },
        })
    }
}

/// Reads a numeric key; a missing key reads as zero (an older sidecar may not write it).
fn parse_number<T: std::str::FromStr + Default>(
    meta: &BTreeMap<String, String>,
    key: &str,
) -> Result<T, MetaError> {
    match meta.get(key) {
        None => Ok(T::default()),
        Some(value) => value.parse().map_err(|_| MetaError::InvalidValue {
            key: key.to_owned(),
            value: value.clone(),
            expected: "a non-negative integer",
        }),
    }
}

/// Cuts free text to Consul's value limit on a character boundary.
fn fit_value(text: &str) -> String {
    if text.len() <= MAX_META_VALUE_LEN {
        return text.to_owned();
    }
    let mut end = MAX_META_VALUE_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Whether `key` is a Meta key Consul accepts.
pub fn is_valid_meta_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_META_KEY_LEN
        && !key.starts_with("consul-")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests;
