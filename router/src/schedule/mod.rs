//! Scheduling: which node serves a request, and when. One stateful [`Scheduler`], held by the
//! proxy, owns every rule of it: which instances may serve a request ([`candidates`]), how full
//! a node is (its parallel slots per model), where a request is worth sending ([`decide`]),
//! when it waits at the router instead, in which order waiting requests go, which failing
//! nodes are left out ([`outlier`]), and when a failed attempt is tried again ([`retry`]).
//!
//! # How a request is scheduled
//!
//! The proxy describes the request as an [`Ask`] (model, runner options, conversation prefix,
//! prompt size, priority, key) and calls [`Scheduler::acquire`]. The scheduler decides at once
//! (see [`decide`] for the cost model): either a node with a free slot, returned as a
//! [`Permit`], or "wait". A waiting request joins the router's queue and is bound to a node
//! only when a slot frees — to the best node at that moment, not the one that looked best on
//! arrival. Each time a permit is dropped (the request ended, however it ended), the queue is
//! walked in order and every request that can now be placed is handed its permit; the queue is
//! also walked a few times a second so that a request whose best option changed (a node came
//! back, a warm node's queue grew past a load's cost) moves on.
//!
//! Queue order is priority first (critical, standard, sheddable), then the API key with the
//! fewest requests running and waiting, then arrival: one key flooding the router cannot starve
//! the others. The queue is bounded (`--queue-max`) and so is the wait (`--queue-timeout`):
//! beyond them a request is refused with 503 and `Retry-After` (429 when its key already holds
//! more than its share of the queue); when the queue is full, a sheddable request waiting is
//! shed to make room for more important work. A caller that hangs up leaves the queue at once
//! (the proxy drops the waiting future).
//!
//! Permits are counted per (node, model) in the scheduler's [`memory`], which survives backend
//! set rebuilds, and on the node's own in-flight counter, which metrics and the ops endpoints
//! read. Dropping a permit records how the request went ([`Permit::record`]) into the learned
//! costs ([`learned`]).
//!
//! # Policies
//!
//! `--schedule` picks one, each adding one idea to the one before so the benchmark can weigh
//! them one at a time: `least-outstanding` (no queue; the router before it had a scheduler),
//! `queue` (slots capped per node and model, the rest held at the router), `residency` (+ the
//! cost model: never load a model where waiting is cheaper), `affinity` (+ conversation
//! prefixes), `learned` (+ costs learned per node and model instead of defaults; the default),
//! `preload` (+ a model loaded on a cold node ahead of need while its queue grows, see
//! [`preload`]; opt-in, as it loaded more than it saved in the benchmark's fleets).
//!
//! Fairness, slots and queues are per router replica: replicas do not share counts.

mod ask;
pub mod candidates;
mod deadline;
pub mod decide;
pub mod learned;
pub mod least_outstanding;
pub mod memory;
pub mod outlier;
mod permit;
pub mod preload;
pub mod retry;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use ask::{Ask, Priority, Residency, UnknownPriority, PRIORITY_HEADER};
pub use candidates::ScheduleError;
use decide::{decide, Decision};
pub use learned::{Costs, Outcome, Timings};
use memory::Memory;
pub use permit::Permit;
pub use preload::{Preload, Preloaded, Preloader};
pub use retry::{Retries, RetryBudget};

use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::Fleet;

/// How often the queue is walked while requests wait, besides each time a slot frees.
const REVIEW_INTERVAL: Duration = Duration::from_millis(250);
/// The least `Retry-After` given.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A scheduling policy. Each adds one idea to the one before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// Weighted least-outstanding power of two choices, warm nodes first; no queue.
    LeastOutstanding,
    /// + per (node, model) slots, the rest held at the router and bound late.
    Queue,
    /// + the expected-TTFT cost model with load costs: no reload where waiting is cheaper.
    Residency,
    /// + conversation prefixes: sticky until saturated.
    Affinity,
    /// + costs learned per node and model.
    #[default]
    Learned,
    /// + a model loaded on a cold node ahead of need while its queue grows.
    ///
    /// Opt-in: in the benchmark's fleets it loaded more than it saved.
    Preload,
}

impl Policy {
    /// Every policy, simplest first.
    pub const ALL: [Policy; 6] = [
        Self::LeastOutstanding,
        Self::Queue,
        Self::Residency,
        Self::Affinity,
        Self::Learned,
        Self::Preload,
    ];

    /// The name `--schedule` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::LeastOutstanding => "least-outstanding",
            Self::Queue => "queue",
            Self::Residency => "residency",
            Self::Affinity => "affinity",
            Self::Learned => "learned",
            Self::Preload => "preload",
        }
    }

    /// Whether requests beyond the slots wait at the router.
    pub fn holds(self) -> bool {
        self >= Self::Queue
    }

    /// Whether conversation prefixes count.
    pub fn uses_affinity(self) -> bool {
        self >= Self::Affinity
    }

    /// Whether costs are learned rather than defaults.
    pub fn learns(self) -> bool {
        self >= Self::Learned
    }

    /// Whether models are loaded ahead of need.
    pub fn preloads(self) -> bool {
        self >= Self::Preload
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A policy name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a policy; use one of least-outstanding, queue, residency, affinity, learned, preload"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s.trim())
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// How the scheduler is set up.
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    /// The policy.
    pub policy: Policy,
    /// Most requests waiting at the router at once.
    pub queue_max: usize,
    /// Longest a request waits at the router for a slot.
    pub queue_timeout: Duration,
    /// Other nodes a request may be tried on when one fails before answering.
    pub retries: usize,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            queue_max: 1_000,
            queue_timeout: Duration::from_secs(60),
            retries: 2,
        }
    }
}

/// One request waiting at the router.
struct Waiter {
    id: u64,
    ask: Arc<Ask>,
    exclude: Vec<Arc<str>>,
    since: Instant,
    /// Where its permit (or the reason it gets none) is sent.
    handoff: oneshot::Sender<Result<Permit, ScheduleError>>,
}

/// What the scheduler keeps under its lock.
struct State {
    memory: Memory,
    queue: Vec<Waiter>,
    /// Requests running and waiting per API key, for fair order.
    keys: HashMap<Arc<str>, usize>,
    next_id: u64,
    last_review: Instant,
    rng: fastrand::Rng,
}

/// A permit decided under the lock, made into a [`Permit`] once the lock is released.
struct Grant {
    id: u64,
    backend: Arc<Backend>,
    model: Option<String>,
    key: Option<Arc<str>>,
    since: Instant,
}

/// The answer to a waiter, sent once the lock is released.
type Handoff = (
    oneshot::Sender<Result<Permit, ScheduleError>>,
    Result<Grant, ScheduleError>,
);

/// Decides where each request goes and when. Shared by every request through an `Arc`.
pub struct Scheduler {
    fleet: Arc<dyn Fleet>,
    settings: ScheduleSettings,
    retries: RetryBudget,
    metrics: Metrics,
    state: Mutex<State>,
    /// Carries out loads ahead of need; none in tests that do not ask for them.
    preloader: OnceLock<Arc<dyn Preloader>>,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler for `fleet`.
    pub fn new(fleet: Arc<dyn Fleet>, settings: ScheduleSettings) -> Arc<Self> {
        Self::seeded(fleet, settings, fastrand::u64(..))
    }

    /// A scheduler whose random draws come from `seed` (tests).
    pub fn seeded(fleet: Arc<dyn Fleet>, settings: ScheduleSettings, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            retries: RetryBudget::new(settings.retries),
            fleet,
            settings,
            metrics: Metrics::new(),
            state: Mutex::new(State {
                memory: Memory::default(),
                queue: Vec::new(),
                keys: HashMap::new(),
                next_id: 0,
                last_review: Instant::now(),
                rng: fastrand::Rng::with_seed(seed),
            }),
            preloader: OnceLock::new(),
        })
    }

    /// Who carries out this scheduler's loads ahead of need (the proxy); set once.
    pub fn set_preloader(&self, preloader: Arc<dyn Preloader>) {
        // A second preloader would send the same orders twice: the first one stays.
        let _ = self.preloader.set(preloader);
    }

    /// Learns how a load asked ahead of need ended (see [`preload`]), and hands the node's
    /// slots to waiting requests if the queue now has a better place.
    pub fn preloaded(self: &Arc<Self>, node: &Arc<str>, model: &str, load: Preloaded) {
        let now = Instant::now();
        let mut state = self.lock();
        state.memory.preloaded(node, model, load, now);
        self.metrics
            .preload(model, if load.is_some() { "loaded" } else { "failed" });
        let (handoffs, preloads) = self.dispatch(&mut state, now);
        drop(state);
        self.hand_off(handoffs, preloads);
    }

    /// The settings.
    pub fn settings(&self) -> &ScheduleSettings {
        &self.settings
    }

    /// The retry budget every request draws on.
    pub fn retries(&self) -> &RetryBudget {
        &self.retries
    }

    /// A permit for `ask` on a node that has room for it, skipping the nodes in `exclude`:
    /// at once, or after waiting at the router for a slot. Dropping the future leaves the queue.
    pub async fn acquire(
        self: &Arc<Self>,
        ask: Ask,
        exclude: &[Arc<str>],
    ) -> Result<Permit, ScheduleError> {
        let ask = Arc::new(ask);
        let now = Instant::now();
        let (receiver, id) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let set = self.fleet.backends();
            state.memory.prune(&set);
            let ahead = waiting_for(&state.queue, ask.canonical_model());
            let decision = decide(
                self.settings.policy,
                &set,
                &state.memory,
                &ask,
                exclude,
                ahead,
                now,
                &mut state.rng,
            )?;
            let preload = match decision {
                Decision::Dispatch(backend) => {
                    let grant = grant(state, backend, &ask, now);
                    drop(guard);
                    return Ok(self.permit(grant));
                }
                Decision::Wait { preload } => preload,
            };
            let shed = self.make_room(state, &ask)?;
            let preloads: Vec<Preload> = preload
                .and_then(|backend| self.order_preload(state, backend, &ask, now))
                .into_iter()
                .collect();
            let (sender, receiver) = oneshot::channel();
            let id = next_id(state);
            if let Some(key) = &ask.key {
                *state.keys.entry(key.clone()).or_default() += 1;
            }
            self.metrics
                .queue_changed(ask.canonical_model(), ask.priority, 1);
            state.queue.push(Waiter {
                id,
                ask: ask.clone(),
                exclude: exclude.to_vec(),
                since: now,
                handoff: sender,
            });
            drop(guard);
            self.hand_off(shed.into_iter().collect(), preloads);
            (receiver, id)
        };
        let mut leave = LeaveQueue {
            scheduler: self,
            id,
            armed: true,
        };
        let deadline = now + self.settings.queue_timeout;
        let mut receiver = receiver;
        loop {
            let review = (Instant::now() + REVIEW_INTERVAL).min(deadline);
            tokio::select! {
                answer = &mut receiver => {
                    // Whoever answered took the waiter out of the queue.
                    leave.armed = false;
                    return answer.unwrap_or(Err(ScheduleError::NoneAvailable));
                }
                () = tokio::time::sleep_until(review) => {
                    if Instant::now() >= deadline {
                        // Taken out by `leave`, unless a permit raced in.
                        drop(leave);
                        if let Ok(answer) = receiver.try_recv() {
                            return answer;
                        }
                        let model = ask.model.clone().unwrap_or_default();
                        self.metrics.queue_shed(ask.canonical_model(), ask.priority, "timeout");
                        return Err(ScheduleError::QueueTimeout {
                            model,
                            waited: self.settings.queue_timeout,
                            retry_after: self.retry_after(),
                        });
                    }
                    self.review();
                }
            }
        }
    }

    /// A permit on `backend` chosen by other means (model management aimed at one instance, a
    /// node found by asking the fleet): counted on the node, outside any model's slots.
    pub fn direct(self: &Arc<Self>, backend: Arc<Backend>) -> Permit {
        let mut state = self.lock();
        let grant = Grant {
            id: next_id(&mut state),
            backend,
            model: None,
            key: None,
            since: Instant::now(),
        };
        drop(state);
        self.permit(grant)
    }

    /// Requests waiting at the router.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// What the scheduler knows of each model on each node of `backends`, for `/v1/mesh/nodes`.
    pub fn report(&self, backend: &Backend) -> Vec<ModelReport> {
        let state = self.lock();
        let now = Instant::now();
        let memory = &state.memory;
        let names = memory.models_on(backend);
        names
            .into_iter()
            .map(|model| {
                let known = memory.model(backend.id(), &model);
                let residency = Residency {
                    runner: known.and_then(|m| m.runner).unwrap_or(0),
                    model: model.clone(),
                };
                let learned = known.map(|m| m.learned);
                ModelReport {
                    in_flight: known.map_or(0, |m| m.running.len()),
                    slots: backend.slots(),
                    resident: memory.is_resident(backend, &residency, now),
                    waiting: state
                        .queue
                        .iter()
                        .filter(|w| w.ask.canonical_model() == Some(model.as_str()))
                        .count(),
                    learned: LearnedReport {
                        prefill_tokens_per_second: learned.and_then(|l| l.prefill_tps.get()),
                        decode_tokens_per_second: learned.and_then(|l| l.decode_tps.get()),
                        load_seconds: learned.and_then(|l| l.load_seconds.get()),
                        service_seconds: learned.and_then(|l| l.service_seconds.get()),
                    },
                    model,
                }
            })
            .collect()
    }

    /// Ends a permit: frees its slot, learns from its outcome, and hands freed slots to
    /// waiting requests.
    fn release(self: &Arc<Self>, grant: &Grant, outcome: &Outcome) {
        let now = Instant::now();
        let mut state = self.lock();
        let change = state.memory.finish(
            grant.backend.id(),
            grant.model.as_deref(),
            grant.id,
            grant.since,
            outcome,
            now,
        );
        if let Some(change) = change {
            self.ejection_changed(grant.backend.id(), change);
        }
        if let Some(model) = &grant.model {
            if let Some(learned) = state.memory.model(grant.backend.id(), model) {
                self.metrics
                    .learned(grant.backend.id(), model, &learned.learned);
            }
        }
        if let Some(key) = &grant.key {
            release_key(&mut state.keys, key);
        }
        if state.queue.is_empty() {
            return;
        }
        let (handoffs, preloads) = self.dispatch(&mut state, now);
        drop(state);
        self.hand_off(handoffs, preloads);
    }

    /// Walks the queue unless someone has in the last [`REVIEW_INTERVAL`].
    fn review(self: &Arc<Self>) {
        let now = Instant::now();
        let mut state = self.lock();
        if now.saturating_duration_since(state.last_review) < REVIEW_INTERVAL {
            return;
        }
        let (handoffs, preloads) = self.dispatch(&mut state, now);
        drop(state);
        self.hand_off(handoffs, preloads);
    }

    /// Places every waiting request that can be placed now, in queue order, and orders the
    /// loads ahead of need that the ones still waiting call for.
    fn dispatch(&self, state: &mut State, now: Instant) -> (Vec<Handoff>, Vec<Preload>) {
        state.last_review = now;
        let set = self.fleet.backends();
        state.memory.prune(&set);
        let mut order: Vec<usize> = (0..state.queue.len()).collect();
        {
            let keys = &state.keys;
            let queue = &state.queue;
            order.sort_by_key(|&i| {
                let waiter = &queue[i];
                let key_load = waiter
                    .ask
                    .key
                    .as_ref()
                    .map_or(0, |k| keys.get(k).copied().unwrap_or(0));
                (waiter.ask.priority, key_load, waiter.id)
            });
        }
        let mut ahead: HashMap<Option<String>, usize> = HashMap::new();
        let mut placed: Vec<(usize, Result<Arc<Backend>, ScheduleError>)> = Vec::new();
        let mut preloads = Vec::new();
        for index in order {
            let waiter = &state.queue[index];
            let model = waiter.ask.canonical_model().map(str::to_owned);
            let before = ahead.get(&model).copied().unwrap_or(0);
            match decide(
                self.settings.policy,
                &set,
                &state.memory,
                &waiter.ask,
                &waiter.exclude,
                before,
                now,
                &mut state.rng,
            ) {
                Ok(Decision::Dispatch(backend)) => {
                    // Reserve at once, so the next waiter sees the slot taken.
                    if let Some(residency) = &waiter.ask.residency {
                        state.memory.dispatch(
                            &backend,
                            residency,
                            waiter.ask.affinity,
                            waiter.id,
                            now,
                        );
                    }
                    placed.push((index, Ok(backend)));
                }
                Ok(Decision::Wait { preload }) => {
                    *ahead.entry(model).or_default() += 1;
                    if let Some(backend) = preload {
                        let ask = waiter.ask.clone();
                        preloads.extend(self.order_preload(state, backend, &ask, now));
                    }
                }
                // A node may come back while the request can still wait.
                Err(ScheduleError::NoneAvailable) => {}
                Err(error) => placed.push((index, Err(error))),
            }
        }
        // Remove from the back so the indices stay valid.
        placed.sort_by_key(|(index, _)| std::cmp::Reverse(*index));
        let mut handoffs = Vec::with_capacity(placed.len());
        for (index, result) in placed {
            let waiter = state.queue.swap_remove(index);
            self.metrics
                .queue_changed(waiter.ask.canonical_model(), waiter.ask.priority, -1);
            self.metrics.queue_wait(
                waiter.ask.canonical_model(),
                waiter.ask.priority,
                now.saturating_duration_since(waiter.since),
            );
            let grant = result.map(|backend| Grant {
                id: waiter.id,
                backend,
                model: waiter.ask.canonical_model().map(str::to_owned),
                key: waiter.ask.key.clone(),
                since: now,
            });
            if grant.is_err() {
                if let Some(key) = &waiter.ask.key {
                    release_key(&mut state.keys, key);
                }
            }
            handoffs.push((waiter.handoff, grant));
        }
        // `swap_remove` broke arrival order; waiters are ordered by ID anyway.
        state.queue.sort_by_key(|w| w.id);
        (handoffs, preloads)
    }

    /// Records a load of `ask`'s model on `backend` ahead of need and returns the order for
    /// the preloader; `None` without a preloader (nothing would carry it out).
    fn order_preload(
        &self,
        state: &mut State,
        backend: Arc<Backend>,
        ask: &Ask,
        now: Instant,
    ) -> Option<Preload> {
        self.preloader.get()?;
        let residency = ask.residency.as_ref()?;
        let costs = state.memory.costs(backend.id(), &residency.model);
        let until = now + Duration::from_secs_f64(costs.load_seconds.max(0.0));
        state.memory.preload(&backend, residency, until, now);
        self.metrics.preload(&residency.model, "ordered");
        Some(Preload {
            backend,
            model: residency.model.clone(),
        })
    }

    /// Makes room in the queue for `ask`: nothing to do below `--queue-max`; else sheds the
    /// newest waiter of the least important priority below `ask`'s, or refuses `ask`.
    fn make_room(&self, state: &mut State, ask: &Ask) -> Result<Option<Handoff>, ScheduleError> {
        if state.queue.len() < self.settings.queue_max {
            return Ok(None);
        }
        let victim = state
            .queue
            .iter()
            .enumerate()
            .filter(|(_, w)| w.ask.priority > ask.priority)
            .max_by_key(|(_, w)| (w.ask.priority, w.id))
            .map(|(index, _)| index);
        let retry_after = self.retry_after();
        if let Some(index) = victim {
            let waiter = state.queue.remove(index);
            if let Some(key) = &waiter.ask.key {
                release_key(&mut state.keys, key);
            }
            self.metrics
                .queue_changed(waiter.ask.canonical_model(), waiter.ask.priority, -1);
            self.metrics.queue_shed(
                waiter.ask.canonical_model(),
                waiter.ask.priority,
                "priority",
            );
            return Ok(Some((
                waiter.handoff,
                Err(ScheduleError::Shed { retry_after }),
            )));
        }
        self.metrics
            .queue_shed(ask.canonical_model(), ask.priority, "full");
        if let Some(key) = &ask.key {
            let queued = state
                .queue
                .iter()
                .filter(|w| w.ask.key.as_ref() == Some(key))
                .count();
            let keys = state
                .queue
                .iter()
                .filter_map(|w| w.ask.key.as_ref())
                .collect::<std::collections::HashSet<_>>()
                .len()
                .max(1);
            if queued > state.queue.len() / keys {
                return Err(ScheduleError::OverShare {
                    key: key.to_string(),
                    queued,
                    retry_after,
                });
            }
        }
        Err(ScheduleError::QueueFull {
            model: ask.model.clone().unwrap_or_default(),
            queued: state.queue.len(),
            retry_after,
        })
    }

    /// Sends each waiter its answer, and the preloader its orders (both outside the lock). A
    /// waiter that has gone drops its permit, which frees the slot for the next one.
    fn hand_off(self: &Arc<Self>, handoffs: Vec<Handoff>, preloads: Vec<Preload>) {
        for (sender, result) in handoffs {
            let answer = result.map(|grant| self.permit(grant));
            drop(sender.send(answer));
        }
        if let Some(preloader) = self.preloader.get() {
            for order in preloads {
                preloader.preload(self.clone(), order);
            }
        }
    }

    /// Takes waiter `id` out of the queue, if it is still there.
    fn leave(&self, id: u64) {
        let mut state = self.lock();
        if let Some(index) = state.queue.iter().position(|w| w.id == id) {
            let waiter = state.queue.remove(index);
            if let Some(key) = &waiter.ask.key {
                release_key(&mut state.keys, key);
            }
            self.metrics
                .queue_changed(waiter.ask.canonical_model(), waiter.ask.priority, -1);
        }
    }

    /// When a refused request may come back: about when the next slot is expected to free.
    fn retry_after(&self) -> Duration {
        MIN_RETRY_AFTER.max(self.settings.queue_timeout / 10)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Takes the waiter out of the queue when its request stops waiting for any reason (the
/// caller hung up, the wait timed out), unless an answer already took it out.
struct LeaveQueue<'a> {
    scheduler: &'a Arc<Scheduler>,
    id: u64,
    armed: bool,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.scheduler.leave(self.id);
        }
    }
}

/// What `/v1/mesh/nodes` shows of one model on one node.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// Canonical model name.
    pub model: String,
    /// Requests this router has running for it there.
    pub in_flight: usize,
    /// Requests it serves there at once.
    pub slots: usize,
    /// Whether it is loaded there, as far as the router can tell.
    pub resident: bool,
    /// Requests waiting at this router for the model (fleet-wide, not only for this node).
    pub waiting: usize,
    /// What the router has learned of it there.
    pub learned: LearnedReport,
}

/// Learned figures, `null` until learned.
#[derive(Debug, Clone, Serialize)]
pub struct LearnedReport {
    /// Prompt tokens read per second.
    pub prefill_tokens_per_second: Option<f64>,
    /// Tokens generated per second.
    pub decode_tokens_per_second: Option<f64>,
    /// Seconds to load the model.
    pub load_seconds: Option<f64>,
    /// Seconds a request holds a slot.
    pub service_seconds: Option<f64>,
}

fn next_id(state: &mut State) -> u64 {
    state.next_id += 1;
    state.next_id
}

/// Requests waiting for `model`.
fn waiting_for(queue: &[Waiter], model: Option<&str>) -> usize {
    queue
        .iter()
        .filter(|w| w.ask.canonical_model() == model)
        .count()
}

/// Reserves a slot on `backend` for `ask` and describes the permit.
fn grant(state: &mut State, backend: Arc<Backend>, ask: &Ask, now: Instant) -> Grant {
    let id = next_id(state);
    if let Some(residency) = &ask.residency {
        state
            .memory
            .dispatch(&backend, residency, ask.affinity, id, now);
    }
    if let Some(key) = &ask.key {
        *state.keys.entry(key.clone()).or_default() += 1;
    }
    Grant {
        id,
        backend,
        model: ask.canonical_model().map(str::to_owned),
        key: ask.key.clone(),
        since: now,
    }
}

fn release_key(keys: &mut HashMap<Arc<str>, usize>, key: &Arc<str>) {
    if let Some(count) = keys.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests;
