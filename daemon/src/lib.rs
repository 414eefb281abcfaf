//! What the ollama-mesh daemons (router and sidecar) share with the system that runs them, and
//! the small runtime pieces every ollama-mesh crate uses. It depends on no other ollama-mesh
//! crate, so each of them can depend on it.
//!
//! # Layout
//!
//! * [`notify`]: systemd's `sd_notify` protocol ([`Notifier`]: READY, STOPPING, WATCHDOG).
//! * [`logging`]: the log formats operators choose between ([`LogFormat`]) and their setup.
//! * [`task`]: a background task owned by a value ([`AbortOnDrop`]).
//! * [`host`]: the host's name ([`host_name`]).

pub mod host;
pub mod logging;
pub mod notify;
pub mod task;

pub use host::host_name;
pub use logging::{init_logging, LogFormat};
pub use notify::Notifier;
pub use task::AbortOnDrop;
