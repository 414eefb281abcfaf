//! What the router knows about one request while it runs.

use std::sync::Arc;
use std::time::Instant;

use ollama_mesh_consul::contract::meta::canonical_model_name;

use super::auth::Caller;
use super::completion::CompletionScanner;
use super::connections::ConnectionPermit;
use super::limits::Slot;
use super::route::Route;
use super::watchdog::{AttemptGuard, Cut};
use crate::active::ActiveRequest;
use crate::schedule::{Ask, Permit, Retries};

/// What the router knows about one request.
pub struct RequestContext {
    pub(super) route: Route,
    pub(super) caller: Caller,
    /// The caller's concurrency slot, held while the request runs.
    pub(super) _slot: Option<Slot>,
    /// The model as the client named it.
    pub(super) model: Option<String>,
    /// What the scheduler is asked for; set once the body was read.
    pub(super) ask: Option<Ask>,
    pub(super) request_id: String,
    /// A node chosen before `upstream_peer` (so a missing model is answered early).
    pub(super) chosen: Option<Permit>,
    /// The node of the current attempt; dropping it frees its slot.
    pub(super) current: Option<Permit>,
    /// The watch on the current attempt's connection (its deadlines, its node's state).
    pub(super) attempt: Option<AttemptGuard>,
    /// Nodes already tried for this request.
    pub(super) tried: Vec<Arc<str>>,
    /// Retries this request has left, within the router's budget.
    pub(super) retries: Retries,
    pub(super) started: Instant,
    pub(super) completion: Option<CompletionScanner>,
    /// The body went to a subrequest, which proxies and accounts for it.
    pub(super) forwarded_to_subrequest: bool,
    pub(super) _active: ActiveRequest,
    /// This connection's place under the connection cap, carried across kept-alive requests.
    pub(super) connection: Option<ConnectionPermit>,
}

impl RequestContext {
    /// A context for a new request.
    pub(super) fn new(retries: Retries, active: ActiveRequest) -> Self {
        Self {
            route: Route::Other,
            caller: Caller::default(),
            _slot: None,
            model: None,
            ask: None,
            request_id: String::new(),
            chosen: None,
            current: None,
            attempt: None,
            tried: Vec::new(),
            retries,
            started: Instant::now(),
            completion: None,
            forwarded_to_subrequest: false,
            _active: active,
            connection: None,
        }
    }

    /// Why the router ended the current attempt, if it did.
    pub(super) fn cut(&self) -> Option<Cut> {
        self.attempt.as_ref().and_then(|a| a.attempt().cut())
    }

    /// The model as a metric label: only names a backend was chosen for (so label values stay
    /// bounded by the fleet's models), `none` when the request names no model, else `unknown`.
    pub(super) fn model_label(&self) -> String {
        match (&self.model, self.current.is_some() || self.chosen.is_some()) {
            (None, _) => "none".to_owned(),
            (Some(model), true) => canonical_model_name(model),
            (Some(_), false) => "unknown".to_owned(),
        }
    }
}
