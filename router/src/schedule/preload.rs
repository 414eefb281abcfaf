//! Loading a model ahead of need.
//!
//! When requests for a model wait at the router and the wait at its warm nodes has grown to
//! two fifths of what loading it on another node would cost, the scheduler asks that node to
//! load it
//! now (Ollama loads a model for a request with no prompt). By the time scaling out pays, the
//! load is done or under way, instead of the first request sent there paying all of it; and
//! if the queue drains first, the cost was one load on a node that had room.
//!
//! The rules: one load ahead per model at a time; only where the load evicts nothing busy (a
//! load that waits for a running model would hold nothing but memory); only for the default
//! runner options, since loading the runner a request with `num_ctx` or other options needs
//! would take those options, which the router does not keep. While the load runs, the node
//! counts as resident with the load's remaining time as its cost; the answer's
//! `load_duration` is learned as the node's load time.
//!
//! The scheduler decides; a [`Preloader`] (the proxy's, which sends the request) acts and
//! reports back through [`Scheduler::preloaded`](super::Scheduler::preloaded).

use std::sync::Arc;
use std::time::Duration;

use super::Scheduler;
use crate::backend::Backend;

/// A warm node's expected wait, as a share of a cold node's cost, at which the cold node is
/// asked to load the model.
pub const PRELOAD_SHARE: f64 = 0.4;

/// An order to load `model` on `backend` now.
#[derive(Debug, Clone)]
pub struct Preload {
    /// Where.
    pub backend: Arc<Backend>,
    /// The canonical model name.
    pub model: String,
}

/// Carries out preload orders.
pub trait Preloader: Send + Sync {
    /// Asks the node to load the model, then tells `scheduler` how it went with
    /// [`Scheduler::preloaded`]: `Some(load_duration)` once loaded, `None` if it failed.
    fn preload(&self, scheduler: Arc<Scheduler>, order: Preload);
}

/// How a preload ended.
pub type Preloaded = Option<Duration>;
