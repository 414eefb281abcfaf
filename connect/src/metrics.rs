//! Metrics of the mesh, shared by the sidecar and the router (each exports the default
//! registry): handshakes by side and result, connections refused by intentions by source
//! service, and seconds until the current leaf certificate expires.
//!
//! `source` is a service name proven by a certificate of the mesh, so its values are bounded
//! by the services an operator registers.

use std::sync::LazyLock;
use std::time::SystemTime;

use prometheus::{
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, IntCounterVec, IntGauge,
    IntGaugeVec,
};

struct Families {
    handshakes: IntCounterVec,
    denied: IntCounterVec,
    expiry: IntGaugeVec,
    open: IntGauge,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| Families {
    handshakes: register_int_counter_vec!(
        "ollama_mesh_connect_handshakes_total",
        "Connect mTLS handshakes, by side (server: the sidecar's listener, client: the router's \
         connections to nodes) and result (ok, failed).",
        &["side", "result"]
    )
    .expect("metric registers once"),
    denied: register_int_counter_vec!(
        "ollama_mesh_connect_denied_total",
        "Connections refused, or closed after an intention change, because the intentions deny \
         their source service.",
        &["source"]
    )
    .expect("metric registers once"),
    expiry: register_int_gauge_vec!(
        "ollama_mesh_connect_certificate_expiry_seconds",
        "Seconds until this service's Connect leaf certificate expires (the agent renews it \
         well before; a value that keeps falling means renewal is failing).",
        &["service"]
    )
    .expect("metric registers once"),
    open: register_int_gauge!(
        "ollama_mesh_connect_open_connections",
        "Authorized mesh connections open now."
    )
    .expect("metric registers once"),
});

/// Which end of the handshake this process was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Accepted a connection (the sidecar).
    Server,
    /// Opened a connection (the router).
    Client,
}

/// Counts one handshake.
pub fn handshake(side: Side, ok: bool) {
    let side = match side {
        Side::Server => "server",
        Side::Client => "client",
    };
    FAMILIES
        .handshakes
        .with_label_values(&[side, if ok { "ok" } else { "failed" }])
        .inc();
}

/// Counts a connection refused or closed because `source` is not allowed.
pub fn denied(source: &str) {
    FAMILIES.denied.with_label_values(&[source]).inc();
}

/// Records when `service`'s leaf expires, as seconds from now.
pub fn certificate_expiry(service: &str, expires_at: SystemTime) {
    let seconds = match expires_at.duration_since(SystemTime::now()) {
        Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
    };
    FAMILIES.expiry.with_label_values(&[service]).set(seconds);
}

/// Counts an authorized connection for as long as the guard lives.
pub struct OpenConnection(());

impl OpenConnection {
    /// Counts one more open connection until dropped.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        FAMILIES.open.inc();
        Self(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        FAMILIES.open.dec();
    }
}
