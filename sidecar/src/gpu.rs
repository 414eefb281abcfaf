//! GPU facts from `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::config::GpuProbe;

/// What the node's GPUs are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuInfo {
    /// GPU model names, distinct, in order of first appearance (mixed nodes list several).
    pub name: Option<String>,
    /// Number of GPUs.
    pub count: u32,
    /// Total VRAM in MiB.
    pub vram_total_mib: u64,
}

/// Why the GPU probe failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuProbeError {
    /// The executable could not be started.
    #[error("cannot run {path}: {source}")]
    Spawn {
        /// The executable.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran longer than allowed (a hung driver).
    #[error("{path} did not finish within {timeout:?}")]
    Timeout {
        /// The executable.
        path: String,
        /// The limit.
        timeout: Duration,
    },
    /// It exited with an error (no driver, no GPU).
    #[error("{path} failed ({status}): {stderr}")]
    Failed {
        /// The executable.
        path: String,
        /// Exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Its output is not the CSV asked for.
    #[error("unexpected nvidia-smi output line {line:?}: {reason}")]
    Unparsable {
        /// The offending line.
        line: String,
        /// Why.
        reason: &'static str,
    },
}

/// Runs the configured probe.
pub async fn probe(probe: &GpuProbe) -> Result<GpuInfo, GpuProbeError> {
    let (path, timeout) = match probe {
        GpuProbe::None => return Ok(GpuInfo::default()),
        GpuProbe::NvidiaSmi { path, timeout } => (path, *timeout),
    };
    let display = path.display().to_string();
    let child = Command::new(path)
        .args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| GpuProbeError::Spawn {
            path: display.clone(),
            source,
        })?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| GpuProbeError::Timeout {
            path: display.clone(),
            timeout,
        })?
        .map_err(|source| GpuProbeError::Spawn {
            path: display.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(GpuProbeError::Failed {
            path: display,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    parse(&String::from_utf8_lossy(&output.stdout))
}

/// Parses one `name, memory.total[, …]` line per GPU; extra columns are ignored so richer
/// queries (and fakes that print them) still parse.
pub fn parse(output: &str) -> Result<GpuInfo, GpuProbeError> {
    let mut names: Vec<String> = Vec::new();
    let mut info = GpuInfo::default();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let unparsable = |reason| GpuProbeError::Unparsable {
            line: line.to_owned(),
            reason,
        };
        let mut fields = line.split(',').map(str::trim);
        let name = fields
            .next()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| unparsable("no GPU name"))?;
        let vram: u64 = fields
            .next()
            .ok_or_else(|| unparsable("no memory.total column"))?
            .parse()
            .map_err(|_| unparsable("memory.total is not a whole number of MiB"))?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        info.count += 1;
        info.vram_total_mib += vram;
    }
    if info.count == 0 {
        return Err(GpuProbeError::Unparsable {
            line: String::new(),
            reason: "no GPU listed",
        });
    }
    info.name = Some(names.join(" + "));
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_line_per_gpu() {
        let info =
            parse("NVIDIA GeForce RTX 4090, 24564\nNVIDIA GeForce RTX 4090, 24564\n").unwrap();
        assert_eq!(
            info,
            GpuInfo {
                name: Some("NVIDIA GeForce RTX 4090".into()),
                count: 2,
                vram_total_mib: 49_128,
            }
        );
    }

    #[test]
    fn extra_columns_and_mixed_models() {
        let info = parse("NVIDIA A100-SXM4-80GB, 81920, 1200, 3\nNVIDIA L4, 23034, 0, 0").unwrap();
        assert_eq!(
            info.name.as_deref(),
            Some("NVIDIA A100-SXM4-80GB + NVIDIA L4")
        );
        assert_eq!((info.count, info.vram_total_mib), (2, 104_954));
    }

    #[test]
    fn junk_is_an_error_naming_the_line() {
        for junk in [
            "",
            "garbage",
            "RTX 4090, lots",
            ", 100",
            "No devices were found",
        ] {
            let err = parse(junk).unwrap_err();
            assert!(
                matches!(err, GpuProbeError::Unparsable { .. }),
                "{junk:?}: {err}"
            );
        }
    }
}
