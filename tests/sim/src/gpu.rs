//! The fake `nvidia-smi` report, so GPU probing (the sidecar's) can be tested end to end.
//!
//! It answers exactly what
//! `nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu --format=csv,noheader,nounits`
//! prints: one line per GPU, `name, total MiB, used MiB, utilization %`. Loaded runners fill
//! the GPUs in order; utilization is the share of loaded slots that are busy.

use std::fmt::Write;

use crate::config::Gpu;

const MIB: u64 = 1024 * 1024;

/// The report for `gpus` with `vram_used` bytes in use and `busy` of `slots` slots working.
pub fn nvidia_smi(gpus: &[Gpu], vram_used: u64, busy: usize, slots: usize) -> String {
    let utilization = if slots == 0 {
        0
    } else {
        (busy * 100).div_ceil(slots).min(100)
    };
    let mut remaining = vram_used;
    let mut out = String::new();
    for gpu in gpus {
        let used = remaining.min(gpu.vram_bytes);
        remaining -= used;
        let util = if used > 0 { utilization } else { 0 };
        let _ = writeln!(
            out,
            "{}, {}, {}, {util}",
            gpu.name,
            gpu.vram_bytes / MIB,
            used / MIB
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_gpus_in_order() {
        let gpu = Gpu {
            name: "NVIDIA GeForce RTX 4090".to_owned(),
            vram_bytes: 24_564 * MIB,
        };
        let report = nvidia_smi(&[gpu.clone(), gpu], 30_000 * MIB, 1, 4);
        assert_eq!(
            report,
            "NVIDIA GeForce RTX 4090, 24564, 24564, 25\nNVIDIA GeForce RTX 4090, 24564, 5436, 25\n"
        );
        let idle = nvidia_smi(
            &[Gpu {
                name: "X".to_owned(),
                vram_bytes: 1024 * MIB,
            }],
            0,
            0,
            0,
        );
        assert_eq!(idle, "X, 1024, 0, 0\n");
    }
}
