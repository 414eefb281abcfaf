//! `ollama-mesh-sidecar`: registers the local Ollama in Consul through the local agent, keeps
//! its entry true, and drains it cleanly. It is the only writer of its node's entry.
//!
//! # Layout
//!
//! * [`config`]: flags and environment ([`config::Args`]) validated into [`config::SidecarConfig`].
//! * [`ollama`]: reading Ollama's version, models on disk and loaded models.
//! * [`gpu`]: GPU facts from `nvidia-smi`.
//! * [`registration`]: the service definition, Meta, weights, checks and the heartbeat summary.
//! * [`sidecar`]: the main loop: observe, sync with Consul, follow drains, drain on shutdown.
//! * `http_get`: the bounded GET used for Ollama and the preemption notice.

pub mod config;
pub mod gpu;
pub mod ollama;
pub mod registration;
pub mod sidecar;

mod http_get;

pub use sidecar::Sidecar;

/// Why the sidecar cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The Consul client could not be set up.
    #[error(transparent)]
    Consul(#[from] ollama_mesh_consul::Error),
}
