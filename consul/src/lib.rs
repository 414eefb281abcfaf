//! The Consul side of ollama-mesh: the contract the sidecar and router share, and a small typed
//! client for the parts of Consul's HTTP API they use.
//!
//! This crate knows nothing of HTTP proxies; the router and the sidecar depend on it, never on
//! each other.
//!
//! # Layout
//!
//! * [`contract`]: service name, tags, instance IDs, Meta keys ([`contract::NodeMeta`]), the KV
//!   layout under `ollama-mesh/`, and the routing-state rules. Start here.
//! * [`config`]: Consul's environment conventions (`CONSUL_HTTP_ADDR`, …) parsed and validated.
//! * [`Client`]: the HTTP client (`client`, over TCP, TLS or a Unix socket via `transport`),
//!   with one module per API area: [`agent`] (register, deregister, maintenance, TTL updates),
//!   [`health`] (instances with checks), [`catalog`] (services and tags), [`kv`] and
//!   [`connect`] (the service mesh: CA roots, leaf certificates, authorization, intentions).
//! * [`watch`]: blocking-query watches that publish snapshots, by Consul's rules.

pub mod agent;
pub mod catalog;
pub mod config;
pub mod connect;
pub mod contract;
pub mod health;
pub mod kv;
pub mod watch;

mod client;
mod error;
mod transport;

pub use client::{Client, Consistency, QueryOptions, QueryResponse};
pub use config::{ClientConfig, ConfigError, ConsulSettings};
pub use error::Error;
