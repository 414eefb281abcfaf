//! `ollama-mesh-sidecar`: registers the local Ollama in Consul through the local agent, keeps
//! its entry true, and drains it cleanly. It is the only writer of its node's entry.
//!
//! # Layout
//!
//! * [`config`]: flags and environment ([`config::Args`]) validated into [`config::SidecarConfig`].
//! * [`gpu`]: GPU facts from `nvidia-smi`.
//! * [`registration`]: the service definition, Meta, weights, checks and the heartbeat summary.
//! * [`sidecar`]: the main loop: observe, sync with Consul, follow drains, drain on shutdown.
//! * `mesh`: mesh mode, Ollama behind Consul Connect mTLS and the intentions.
//! * `metrics_endpoint`: `GET /metrics` for Prometheus.
//! * `listener`: the servers beside the main loop, bound at start and stopped with it.
//!
//! Ollama is read with `ollama-mesh-ollama-client` (version, models on disk, models loaded).

pub mod config;
pub mod gpu;
pub mod registration;
pub mod sidecar;

mod listener;
mod mesh;
mod metrics_endpoint;

pub use sidecar::Sidecar;

/// Why the sidecar cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The Consul client could not be set up.
    #[error(transparent)]
    Consul(#[from] ollama_mesh_consul::Error),
    /// A listener could not bind the address its flag names (taken, or not this host's).
    #[error("--{flag}: cannot listen on {addr}: {source}")]
    Listen {
        /// The flag that set the address.
        flag: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
}
