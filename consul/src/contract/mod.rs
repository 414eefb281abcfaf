//! The contract between the sidecar (the only writer of a node's entry) and the
//! router (a reader): what lives in Consul, under which names, and what it means.
//!
//! Read this module to know exactly what ollama-mesh puts in Consul:
//!
//! * **Service**: every Ollama node is one instance of the service
//!   [`DEFAULT_SERVICE_NAME`] (`ollama`, configurable), tagged [`MESH_TAG`], with
//!   an instance ID built by [`InstanceId`].
//! * **Meta**: the node's GPUs, models and versions, as [`NodeMeta`] (keys in [`meta::keys`]).
//! * **KV**: operator-facing keys under [`kv::PREFIX`] (`ollama-mesh/`): API keys, drain flags
//!   and router settings. Operators type these paths into the Consul UI, so they are public.
//! * **Routing state**: how checks, weights, maintenance and drain flags combine into whether an
//!   instance takes new work, in [`state`].

pub mod kv;
pub mod meta;
pub mod state;

mod instance_id;

pub use instance_id::{InstanceId, InvalidInstanceId};
pub use meta::{MetaError, ModelList, NodeMeta};
pub use state::{routing_state, RoutingState};

/// The Consul service name Ollama nodes register under unless configured otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "ollama";

/// The tag that marks an instance registered by an ollama-mesh sidecar (as opposed to an
/// Ollama registered by hand or by another tool under the same service name).
pub const MESH_TAG: &str = "ollama-mesh";

/// The Consul service name routers register under when self-registration is on.
pub const ROUTER_SERVICE_NAME: &str = "ollama-mesh-router";
