//! A loaded model ("runner" in Ollama): its placement, speeds and slots.

use std::sync::Arc;

use tokio::sync::{watch, Notify};

use super::slots::SlotPool;
use super::timing::Speed;
use crate::catalogue::ModelSpec;

/// One loaded model. Its scheduling bookkeeping (references, keep-alive) lives in the
/// scheduler's state so that every decision about it is made under one lock.
#[derive(Debug)]
pub struct Runner {
    /// Canonical model name.
    pub model: String,
    /// The model's properties.
    pub spec: Arc<ModelSpec>,
    /// Context length it was loaded with; a request wanting another forces a reload.
    pub num_ctx: u32,
    /// Total memory: weights plus KV cache.
    pub size: u64,
    /// The part of `size` in VRAM; less than `size` when the model is split with the CPU.
    pub size_vram: u64,
    /// Effective speeds given the placement.
    pub speed: Speed,
    /// Its parallel slots.
    pub slots: Arc<SlotPool>,
    pub(super) unloaded: watch::Sender<bool>,
    pub(super) idle_changed: Notify,
}

impl Runner {
    pub(super) fn new(
        model: String,
        spec: Arc<ModelSpec>,
        num_ctx: u32,
        size: u64,
        size_vram: u64,
        slots: usize,
    ) -> Self {
        let speed = Speed::placed(&spec, size_vram as f64 / size.max(1) as f64);
        Self {
            model,
            spec,
            num_ctx,
            size,
            size_vram,
            speed,
            slots: Arc::new(SlotPool::new(slots)),
            unloaded: watch::Sender::new(false),
            idle_changed: Notify::new(),
        }
    }
}
