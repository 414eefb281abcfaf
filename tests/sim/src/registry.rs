//! The models "on disk": what `/api/tags` lists and what requests may name.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use crate::catalogue::ModelSpec;
use crate::config::DiskModelConfig;

/// A model present on the node.
#[derive(Debug)]
pub struct DiskModel {
    /// Canonical name.
    pub name: String,
    /// Its properties.
    pub spec: Arc<ModelSpec>,
    /// When it was pulled or copied.
    pub modified_at: SystemTime,
    /// Bare hex digest of its manifest; copies share it, like copies of a real manifest.
    pub digest: String,
}

/// The node's models.
#[derive(Debug, Default)]
pub struct Registry {
    models: RwLock<HashMap<String, Arc<DiskModel>>>,
}

impl Registry {
    /// A registry holding `models`, listed in the given order (the first is the newest).
    pub fn new(models: &[DiskModelConfig]) -> Self {
        let now = SystemTime::now();
        let registry = Self::default();
        for (i, m) in models.iter().enumerate() {
            let modified_at = now - Duration::from_secs(i as u64);
            registry.put(
                &m.name,
                Arc::new(m.spec.clone()),
                modified_at,
                digest_of(&m.name),
            );
        }
        registry
    }

    /// The model with canonical name `name`.
    pub fn get(&self, name: &str) -> Option<Arc<DiskModel>> {
        self.read().get(name).cloned()
    }

    /// All models, newest first.
    pub fn list(&self) -> Vec<Arc<DiskModel>> {
        let mut all: Vec<Arc<DiskModel>> = self.read().values().cloned().collect();
        all.sort_by(|a, b| b.modified_at.cmp(&a.modified_at).then(a.name.cmp(&b.name)));
        all
    }

    /// Adds (or refreshes) a pulled model.
    pub fn add(&self, name: &str, spec: ModelSpec) {
        self.put(name, Arc::new(spec), SystemTime::now(), digest_of(name));
    }

    /// Copies `source` to `destination`; false when the source does not exist.
    pub fn copy(&self, source: &str, destination: &str) -> bool {
        let Some(src) = self.get(source) else {
            return false;
        };
        self.put(
            destination,
            Arc::clone(&src.spec),
            SystemTime::now(),
            src.digest.clone(),
        );
        true
    }

    /// Deletes a model; false when it does not exist.
    pub fn remove(&self, name: &str) -> bool {
        self.models
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .is_some()
    }

    fn put(&self, name: &str, spec: Arc<ModelSpec>, modified_at: SystemTime, digest: String) {
        let model = DiskModel {
            name: name.to_owned(),
            spec,
            modified_at,
            digest,
        };
        self.models
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), Arc::new(model));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<DiskModel>>> {
        self.models.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A stable 64-hex-digit pseudo digest of a name.
fn digest_of(name: &str) -> String {
    (0..4u64)
        .map(|round| {
            let mut h = 0xcbf2_9ce4_8422_2325u64 ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for b in name.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            format!("{h:016x}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue;

    #[test]
    fn copy_list_delete() {
        let cfg = |n: &str| DiskModelConfig {
            name: n.to_owned(),
            spec: catalogue::lookup(n),
        };
        let r = Registry::new(&[cfg("a:latest"), cfg("b:latest")]);
        assert_eq!(
            r.list().iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["a:latest", "b:latest"]
        );
        assert!(r.copy("b:latest", "c:latest"));
        assert_eq!(
            r.get("c:latest").unwrap().digest,
            r.get("b:latest").unwrap().digest
        );
        assert_eq!(r.list()[0].name, "c:latest");
        assert_eq!(r.get("a:latest").unwrap().digest.len(), 64);
        assert!(!r.copy("zzz:latest", "d:latest"));
        assert!(r.remove("a:latest"));
        assert!(!r.remove("a:latest"));
    }
}
