//! Facts about the host a daemon runs on.

use std::path::Path;

/// The host name, as the kernel has it; `localhost` if it cannot be read. Instance IDs and
/// default node names start from it.
pub fn host_name() -> String {
    host_name_from(Path::new("/proc/sys/kernel/hostname"))
}

fn host_name_from(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_name_or_falls_back_to_localhost() {
        let dir = std::env::temp_dir().join(format!("ollama-mesh-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hostname");
        std::fs::write(&file, "gpu-node-7\n").unwrap();
        assert_eq!(host_name_from(&file), "gpu-node-7");
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(host_name_from(&file), "localhost");
        assert_eq!(host_name_from(&dir.join("missing")), "localhost");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
