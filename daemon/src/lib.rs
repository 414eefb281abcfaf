//! What the ollama-mesh daemons (router and sidecar) share with the system that runs them.
//!
//! # Layout
//!
//! * [`notify`]: systemd's `sd_notify` protocol ([`Notifier`]: READY, STOPPING, WATCHDOG).
//! * [`logging`]: the log formats operators choose between ([`LogFormat`]) and their setup.

pub mod logging;
pub mod notify;

pub use logging::{init_logging, LogFormat};
pub use notify::Notifier;
