//! `ollama-mesh-router`: one Ollama endpoint for the whole fleet. It learns the fleet from
//! Consul alone and schedules each request onto the node where it will start soonest: one with
//! the model loaded and a free slot, holding the request at the router while waiting for such a
//! node is cheaper than loading the model elsewhere.
//!
//! # Layout
//!
//! * [`backend`]: one instance as the router sees it ([`Backend`]): address, routing state,
//!   Meta, and its in-flight counter.
//! * [`backend_set`]: the immutable fleet at one moment ([`BackendSet`]), rebuilt from a
//!   health snapshot and the drain keys, carrying in-flight counters across rebuilds.
//! * [`discovery`]: the background task that follows Consul and publishes each new set
//!   lock-free ([`Discovery`]).
//! * [`fleet`]: the [`Fleet`] trait over backend sources (Consul discovery, static URLs).
//! * [`proxy`]: the Pingora proxy ([`proxy::MeshProxy`]): routing, streaming, retries, fleet views.
//! * [`router`]: the router the binary runs, built from its configuration ([`Router::build`],
//!   [`Router::run`]); the integration tests start it the same way.
//! * [`server`]: running the proxy on Pingora with a draining shutdown ([`server::serve`]).
//! * [`active`]: the requests in flight ([`active::ActiveRequests`]), counted by the proxy and
//!   waited for by the server's drain.
//! * [`schedule`]: which node serves each request and when ([`schedule::Scheduler`]): candidates,
//!   slots per node and model, the queue at the router, residency, conversation affinity,
//!   learned costs, priorities and the retry budget. Its decisions are pure functions of the
//!   set and its memory, so every rule is tested without a network, on a virtual clock.
//! * [`config`]: flags, `OLLAMA_MESH_*` variables and the `--config` file, validated into one
//!   [`config::RouterConfig`].
//! * [`static_fleet`]: the [`Fleet`] of `--backend URL`s, polled by the router itself
//!   ([`static_fleet::StaticFleet`]).
//! * [`keys`]: API keys: the accepted set ([`keys::KeyStore`]), their stored JSON, and their
//!   sources (Consul KV, a file).
//! * [`keygen`]: the `keygen` subcommand, which makes a key and its entry.
//! * [`mesh`]: the router in the Consul Connect service mesh: its identity, and mTLS to
//!   Connect-native nodes checked by SPIFFE ID ([`mesh::MeshClient`]).
//! * [`tls`]: TLS termination on the main listener, with certificates reloaded from disk
//!   ([`tls::ServerTls`]).
//! * [`metrics`]: the Prometheus metrics ([`metrics::Metrics`]).
//! * [`ops`]: the ops listener: `/metrics`, `/healthz`, `/readyz`, `/v1/mesh/nodes`
//!   ([`ops::serve`]).
//! * [`registration`]: optional self-registration in Consul as `ollama-mesh-router`
//!   ([`registration::SelfRegistration`]).

pub mod active;
pub mod backend;
pub mod backend_set;
pub mod backend_tls;
pub mod config;
pub mod discovery;
mod file_stamp;
pub mod fleet;
pub mod keygen;
pub mod keys;
pub mod mesh;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod registration;
pub mod router;
pub mod schedule;
pub mod server;
pub mod static_fleet;
pub mod tls;

#[cfg(test)]
mod testing;

pub use backend::Backend;
pub use backend::InFlightGuard;
pub use backend_set::BackendSet;
pub use discovery::Discovery;
pub use fleet::Fleet;
pub use router::{Router, RouterError};
pub use schedule::{ScheduleError, Scheduler};
