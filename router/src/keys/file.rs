//! Keys read from a file, for fleets without KV access: one JSON object whose members are the
//! entries by name, in the same shape as in KV:
//!
//! ```json
//! {"ci-bot": {"sha256": "…", "models": ["llama3*"]}, "ops": {"sha256": "…", "scope": "admin"}}
//! ```
//!
//! The file is checked at start (an unreadable file stops the router with its path) and then
//! re-read whenever its modification time or size changes. A file that became unreadable or
//! invalid while running keeps the last good keys in force, with an error logged, so a
//! half-written edit never locks every client out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ollama_mesh_daemon::AbortOnDrop;
use serde_json::{Map, Value};

use super::{checked_keys, ApiKey, EntryError, KeyEntry, KeyStore};
use crate::file_stamp::file_stamp;

/// How often the file is checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// Why the keys file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileKeysError {
    /// The file cannot be read.
    #[error("--keys-file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not a JSON object of entries.
    #[error("--keys-file {}: not a JSON object of key entries by name: {error}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        error: serde_json::Error,
    },
}

/// The task keeping a [`KeyStore`] equal to the file. Dropping it stops the polling.
pub struct FileKeys {
    _task: AbortOnDrop<()>,
}

impl FileKeys {
    /// Loads `path` into `store` and starts following it.
    pub fn start(path: PathBuf, store: KeyStore) -> Result<Self, FileKeysError> {
        let mut stamp = file_stamp(&path);
        store.replace(load(&path)?);
        tracing::info!(keys = store.len(), path = %path.display(), "API keys loaded from file");
        let task = AbortOnDrop::spawn(async move {
            let mut ticks = tokio::time::interval(POLL);
            loop {
                ticks.tick().await;
                let now = file_stamp(&path);
                if now == stamp {
                    continue;
                }
                stamp = now;
                match load(&path) {
                    Ok(keys) => {
                        tracing::info!(keys = keys.len(), path = %path.display(), "API keys reloaded from file");
                        store.replace(keys);
                    }
                    Err(error) => {
                        tracing::error!(%error, "keys file not reloaded; the last keys stay in force")
                    }
                }
            }
        });
        Ok(Self { _task: task })
    }
}

fn load(path: &Path) -> Result<Vec<ApiKey>, FileKeysError> {
    let text = std::fs::read_to_string(path).map_err(|error| FileKeysError::Read {
        path: path.to_owned(),
        error,
    })?;
    let entries: Map<String, Value> =
        serde_json::from_str(&text).map_err(|error| FileKeysError::Json {
            path: path.to_owned(),
            error,
        })?;
    Ok(checked_keys(
        "file",
        entries.into_iter().map(|(name, value)| {
            let entry = serde_json::from_value::<KeyEntry>(value).map_err(EntryError::Json);
            (name, entry)
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{hex, sha256};
    use std::time::SystemTime;

    fn write(path: &Path, secrets: &[(&str, &str)]) {
        let entries: Map<String, Value> = secrets
            .iter()
            .map(|(name, secret)| {
                let entry = serde_json::json!({ "sha256": hex(&sha256(secret.as_bytes())) });
                ((*name).to_owned(), entry)
            })
            .collect();
        std::fs::write(path, Value::Object(entries).to_string()).unwrap();
    }

    #[tokio::test]
    async fn the_file_is_followed_and_a_broken_edit_keeps_the_last_keys() {
        let dir = std::env::temp_dir().join(format!("om-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        write(&path, &[("a", "secret-a")]);
        let store = KeyStore::default();
        let _following = FileKeys::start(path.clone(), store.clone()).unwrap();
        let now = SystemTime::now();
        assert!(store.authenticate("secret-a", now).is_ok());

        write(&path, &[("b", "secret-b"), ("b2", "secret-b2")]);
        let reloaded = async {
            while store.authenticate("secret-b", SystemTime::now()).is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), reloaded)
            .await
            .expect("the new file is loaded");
        assert!(
            store.authenticate("secret-a", now).is_err(),
            "a was removed"
        );

        std::fs::write(&path, "{ half").unwrap();
        tokio::time::sleep(POLL * 2).await;
        assert_eq!(store.len(), 2, "the broken file changed nothing");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unusable_file_is_an_error_naming_it() {
        let error = load(Path::new("/nonexistent/keys.json")).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("--keys-file /nonexistent/keys.json: "));
    }
}
