//! Telling that a file changed on disk without a file-system notification API: its modification
//! time and size, compared between polls. Used by the files the router follows while running
//! (the keys file, the TLS certificate and key).

use std::path::Path;
use std::time::SystemTime;

/// What changes when a file is rewritten; `None` while it cannot be read.
pub type FileStamp = Option<(SystemTime, u64)>;

/// The current stamp of `path`.
pub fn file_stamp(path: &Path) -> FileStamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}
