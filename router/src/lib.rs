//! `ollama-mesh-router`: one Ollama endpoint for the whole fleet. It learns the fleet from
//! Consul alone and sends each request to an instance that has the model, preferring one that
//! has it loaded and is least busy.
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
//! * [`select`]: the choice of a backend for one request, and the guard that counts the
//!   request on it ([`select::choose`], [`InFlightGuard`]). Pure, so it is tested without a
//!   network.

pub mod backend;
pub mod backend_set;
pub mod discovery;
pub mod fleet;
pub mod select;

#[cfg(test)]
mod testing;

pub use backend::Backend;
pub use backend_set::BackendSet;
pub use discovery::Discovery;
pub use fleet::Fleet;
pub use select::{InFlightGuard, SelectError};
