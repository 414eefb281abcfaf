//! Ollama's scheduler (server/sched.go), simulated.
//!
//! - **Fast path.** A request whose model is loaded with the same `num_ctx` gets the runner at
//!   once and then waits, FIFO and without bound, for one of its slots ([`slots`]).
//! - **Pending queue.** Any other request takes a place in a queue of `max_queue` entries (503
//!   when full) and waits its turn for the single loader: one model loads at a time, and a
//!   request whose model was loaded while it waited takes the fast path's result.
//! - **Fitting.** The loader evicts by Ollama's rules ([`fit`]) until the model fits or the
//!   node is empty, waits for evicted runners to drain and for VRAM to be released, then loads
//!   for `load_overhead + size / disk_speed`. A client that leaves while queued is skipped; one
//!   that leaves during its load does not stop the load (the model ends up loaded and idle).
//! - **Keep-alive.** Each runner counts references; when the count drops to zero its keep-alive
//!   (the last request's, or the default) starts. Zero unloads at once, negative never expires.
//!   With `--time-scale 0` positive keep-alives never fire, since no simulated time passes.
//!
//! All bookkeeping sits in one `std::sync::Mutex` that is never held across an `.await`.

pub mod fit;
mod runner;
pub mod slots;
pub mod timing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, OwnedMutexGuard};
use tokio::time::Instant;

use self::fit::{Candidate, Victim};
pub use self::runner::Runner;
use self::slots::Slot;
use crate::catalogue::ModelSpec;
use crate::clock::Clock;
use crate::config::SchedulerConfig;
use crate::duration::KeepAlive;
use crate::stats::{self, Stats};
use crate::tokenizer::Token;

/// How far ahead "forever" puts `expires_at` (Go's MaxInt64 nanoseconds, about 292 years).
const FOREVER: Duration = Duration::from_secs(292 * 365 * 24 * 3600);
/// Simulated cost of handing an already-loaded runner to a request (Ollama's warm
/// `load_duration` is around a millisecond).
const HANDOFF: Duration = Duration::from_micros(500);

/// Why the scheduler refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// The pending queue is full (Ollama's `ErrMaxQueue`, answered with 503).
    #[error("server busy, please try again.  maximum pending requests exceeded")]
    QueueFull,
}

/// What a request needs from the scheduler.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    /// Canonical model name.
    pub model: String,
    /// The model's properties.
    pub spec: Arc<ModelSpec>,
    /// Requested context length (`options.num_ctx`), if any.
    pub num_ctx: Option<u32>,
    /// Requested keep-alive, if any; otherwise the server default applies.
    pub keep_alive: Option<KeepAlive>,
}

/// A loaded runner as `/api/ps`, `/sim/stats` and the GPU report see it.
#[derive(Debug, Clone)]
pub struct RunnerInfo {
    /// The runner.
    pub runner: Arc<Runner>,
    /// When it will expire (stale while busy, as in Ollama).
    pub expires_at: SystemTime,
    /// Requests holding it (running or waiting for a slot).
    pub refs: usize,
}

/// A point-in-time view of the scheduler.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Loaded runners, latest `expires_at` first (the `/api/ps` order).
    pub runners: Vec<RunnerInfo>,
    /// Requests in the pending queue.
    pub pending: usize,
    /// The model being loaded, if any.
    pub loading: Option<String>,
    /// VRAM in use.
    pub vram_used: u64,
}

/// The scheduler of one simulated node.
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: SchedulerConfig,
    clock: Clock,
    stats: Arc<Stats>,
    state: Mutex<State>,
    loader: Arc<tokio::sync::Mutex<()>>,
    pending: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    runners: HashMap<String, Entry>,
    vram_used: u64,
    loading: Option<String>,
}

#[derive(Debug)]
struct Entry {
    runner: Arc<Runner>,
    refs: usize,
    keep_alive: KeepAlive,
    draining: bool,
    idle_since: Instant,
    expires_at: SystemTime,
}

enum Plan {
    Ready(Lease),
    Load,
    Evicted,
    WaitFor(watch::Receiver<bool>),
}

impl Scheduler {
    /// A scheduler with nothing loaded.
    pub fn new(cfg: SchedulerConfig, clock: Clock, stats: Arc<Stats>) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                clock,
                stats,
                state: Mutex::new(State::default()),
                loader: Arc::new(tokio::sync::Mutex::new(())),
                pending: AtomicUsize::new(0),
            }),
        }
    }

    /// Gets a runner for `req`, loading (and evicting) as needed.
    pub async fn acquire(&self, req: ModelRequest) -> Result<Lease, SchedError> {
        let inner = &self.inner;
        let start = Instant::now();
        let num_ctx = req.num_ctx.unwrap_or_else(|| {
            inner
                .cfg
                .default_context_length
                .min(req.spec.context_length)
        });
        let keep_alive = req.keep_alive.unwrap_or(inner.cfg.keep_alive);
        if let Some(lease) = inner.try_hand_out(&req.model, num_ctx, keep_alive) {
            return Ok(lease);
        }
        let queued = Queued::enter(&inner.pending);
        if queued.ahead >= inner.cfg.max_queue {
            stats::add(&inner.stats.rejected_total, 1);
            return Err(SchedError::QueueFull);
        }
        let loader = Arc::clone(&inner.loader).lock_owned().await;
        drop(queued);
        let task = tokio::spawn(Arc::clone(inner).load(loader, req, num_ctx, keep_alive));
        let mut lease = match task.await {
            Ok(lease) => lease,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        lease.load_duration = lease.load_duration.max(inner.clock.sim_elapsed(start));
        Ok(lease)
    }

    /// Ollama's unload request (empty prompt with `keep_alive: 0`): the model's keep-alive
    /// becomes zero, so it unloads now if idle or when its last request finishes.
    pub fn expire(&self, model: &str) {
        let mut st = self.inner.lock();
        if let Some(e) = st.runners.get_mut(model) {
            e.keep_alive = KeepAlive::For(Duration::ZERO);
            if e.refs == 0 {
                self.inner.unload(&mut st, model);
            }
        }
    }

    /// The current state.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.inner.lock();
        let mut runners: Vec<RunnerInfo> = st
            .runners
            .values()
            .map(|e| RunnerInfo {
                runner: Arc::clone(&e.runner),
                expires_at: e.expires_at,
                refs: e.refs,
            })
            .collect();
        runners.sort_by(|a, b| {
            b.expires_at
                .cmp(&a.expires_at)
                .then(a.runner.model.cmp(&b.runner.model))
        });
        Snapshot {
            runners,
            pending: self.inner.pending.load(Ordering::Relaxed),
            loading: st.loading.clone(),
            vram_used: st.vram_used,
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_hand_out(
        self: &Arc<Self>,
        model: &str,
        num_ctx: u32,
        keep_alive: KeepAlive,
    ) -> Option<Lease> {
        let mut st = self.lock();
        let e = st.runners.get_mut(model)?;
        (!e.draining && e.runner.num_ctx == num_ctx).then(|| self.hand_out(e, keep_alive, HANDOFF))
    }

    /// Gives a request a reference to a runner; the last request's keep-alive wins.
    fn hand_out(
        self: &Arc<Self>,
        e: &mut Entry,
        keep_alive: KeepAlive,
        load_duration: Duration,
    ) -> Lease {
        e.refs += 1;
        e.keep_alive = keep_alive;
        if e.refs == 1 {
            e.runner.idle_changed.notify_one();
        }
        Lease {
            inner: Arc::clone(self),
            runner: Arc::clone(&e.runner),
            load_duration,
        }
    }

    /// The loader: runs with the load lock held, to completion even if the client has gone.
    async fn load(
        self: Arc<Self>,
        _loader: OwnedMutexGuard<()>,
        req: ModelRequest,
        num_ctx: u32,
        keep_alive: KeepAlive,
    ) -> Lease {
        let slots = if req.spec.is_embedding() {
            1
        } else {
            self.cfg.num_parallel
        };
        let need = timing::runner_size(&req.spec, num_ctx, slots);
        let mut spent = Duration::ZERO;
        loop {
            let plan = self.plan(&req.model, num_ctx, keep_alive, need, spent);
            match plan {
                Plan::Ready(lease) => return lease,
                Plan::Load => break,
                Plan::Evicted => {}
                Plan::WaitFor(mut unloaded) => {
                    // The sender lives in the runner, which this receiver keeps alive.
                    let _ = unloaded.wait_for(|gone| *gone).await;
                }
            }
            self.clock.sleep(self.cfg.vram_release).await;
            spent += self.cfg.vram_release;
        }
        let size_vram = {
            let mut st = self.lock();
            st.loading = Some(req.model.clone());
            need.min(self.cfg.vram_total.saturating_sub(st.vram_used))
        };
        let load_time = timing::load_time(
            req.spec.size_bytes,
            self.cfg.disk_bytes_per_sec,
            self.cfg.load_overhead,
        );
        self.clock.sleep(load_time).await;
        spent += load_time;
        let runner = Arc::new(Runner::new(
            req.model.clone(),
            req.spec,
            num_ctx,
            need,
            size_vram,
            slots,
        ));
        let mut st = self.lock();
        st.loading = None;
        st.vram_used += size_vram;
        stats::add(&self.stats.model(&req.model).loads, 1);
        let entry = st
            .runners
            .entry(req.model)
            .insert_entry(Entry {
                runner: Arc::clone(&runner),
                refs: 0,
                keep_alive,
                draining: false,
                idle_since: Instant::now(),
                expires_at: expiry_time(keep_alive),
            })
            .into_mut();
        let lease = self.hand_out(entry, keep_alive, spent);
        tokio::spawn(expire_when_idle(Arc::downgrade(&self), runner));
        lease
    }

    /// One step of the loader's decision, under the lock.
    fn plan(
        self: &Arc<Self>,
        model: &str,
        num_ctx: u32,
        keep_alive: KeepAlive,
        need: u64,
        spent: Duration,
    ) -> Plan {
        let mut st = self.lock();
        if let Some(e) = st.runners.get_mut(model) {
            if !e.draining && e.runner.num_ctx == num_ctx {
                return Plan::Ready(self.hand_out(e, keep_alive, spent.max(HANDOFF)));
            }
            if !e.draining {
                e.draining = true;
                stats::add(&self.stats.model(model).reloads, 1);
            }
            if e.refs > 0 {
                return Plan::WaitFor(e.runner.unloaded.subscribe());
            }
            self.unload(&mut st, model);
            return Plan::Evicted;
        }
        let free = self.cfg.vram_total.saturating_sub(st.vram_used);
        if fit::fits(need, free, st.runners.len(), self.cfg.max_loaded_models) {
            return Plan::Load;
        }
        let candidates = st.runners.iter().map(|(name, e)| Candidate {
            name,
            keep_alive: e.keep_alive,
            idle: e.refs == 0,
        });
        let victim = match fit::pick_victim(candidates) {
            Some(Victim::Idle(name)) => Ok(name.to_owned()),
            Some(Victim::Busy(name)) => Err(name.to_owned()),
            None => return Plan::Load,
        };
        match victim {
            Ok(name) => {
                stats::add(&self.stats.model(&name).evictions, 1);
                self.unload(&mut st, &name);
                Plan::Evicted
            }
            Err(name) => {
                let e = st.runners.get_mut(&name).expect("victim is loaded");
                if !e.draining {
                    e.draining = true;
                    stats::add(&self.stats.model(&name).evictions, 1);
                }
                e.keep_alive = KeepAlive::For(Duration::ZERO);
                Plan::WaitFor(e.runner.unloaded.subscribe())
            }
        }
    }

    /// A request let go of `runner`.
    fn release(&self, runner: &Arc<Runner>) {
        let mut st = self.lock();
        let Some(e) = st
            .runners
            .get_mut(&runner.model)
            .filter(|e| Arc::ptr_eq(&e.runner, runner))
        else {
            return;
        };
        e.refs -= 1;
        if e.refs > 0 {
            return;
        }
        if e.draining || e.keep_alive.is_zero() {
            self.unload(&mut st, &runner.model);
            return;
        }
        e.idle_since = Instant::now();
        e.expires_at = expiry_time(e.keep_alive);
        e.runner.idle_changed.notify_one();
    }

    fn unload(&self, st: &mut State, model: &str) {
        if let Some(e) = st.runners.remove(model) {
            st.vram_used -= e.runner.size_vram;
            e.runner.unloaded.send_replace(true);
            e.runner.idle_changed.notify_one();
            stats::add(&self.stats.model(model).unloads, 1);
        }
    }

    /// When an idle runner's keep-alive runs out, in real time; `None` while it is busy or
    /// never expires.
    fn deadline(&self, runner: &Arc<Runner>) -> Option<Option<Instant>> {
        let st = self.lock();
        let e = st
            .runners
            .get(&runner.model)
            .filter(|e| Arc::ptr_eq(&e.runner, runner))?;
        Some(match e.keep_alive {
            _ if e.refs > 0 => None,
            KeepAlive::Forever => None,
            KeepAlive::For(d) => self.clock.real(d).map(|real| e.idle_since + real),
        })
    }

    fn unload_if_expired(&self, runner: &Arc<Runner>) {
        if self
            .deadline(runner)
            .flatten()
            .is_some_and(|d| d <= Instant::now())
        {
            let mut st = self.lock();
            self.unload(&mut st, &runner.model);
        }
    }
}

/// The keep-alive timer of one runner; ends when the runner is unloaded.
async fn expire_when_idle(inner: Weak<Inner>, runner: Arc<Runner>) {
    loop {
        let Some(deadline) = inner.upgrade().and_then(|i| i.deadline(&runner)) else {
            return;
        };
        match deadline {
            None => runner.idle_changed.notified().await,
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {
                        if let Some(inner) = inner.upgrade() {
                            inner.unload_if_expired(&runner);
                        }
                    }
                    () = runner.idle_changed.notified() => {}
                }
            }
        }
    }
}

/// The wall-clock `expires_at` of a runner going idle now (simulated keep-alive).
fn expiry_time(keep_alive: KeepAlive) -> SystemTime {
    SystemTime::now()
        + match keep_alive {
            KeepAlive::Forever => FOREVER,
            KeepAlive::For(d) => d,
        }
}

/// A place in the pending queue, given back when dropped (including when the client leaves).
struct Queued<'a> {
    pending: &'a AtomicUsize,
    ahead: usize,
}

impl<'a> Queued<'a> {
    fn enter(pending: &'a AtomicUsize) -> Self {
        Self {
            pending,
            ahead: pending.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's hold on a runner; releasing it may start the keep-alive or unload the model.
#[derive(Debug)]
pub struct Lease {
    inner: Arc<Inner>,
    runner: Arc<Runner>,
    load_duration: Duration,
}

impl Lease {
    /// The runner.
    pub fn runner(&self) -> &Arc<Runner> {
        &self.runner
    }

    /// Simulated time from arrival until the runner was handed over (Ollama's
    /// `load_duration`, which includes queueing in the scheduler).
    pub fn load_duration(&self) -> Duration {
        self.load_duration
    }

    /// Waits for a slot (FIFO) and claims the best-matching one for `prompt`.
    pub async fn slot(&self, prompt: &[Token]) -> Slot {
        self.runner.slots.claim(prompt).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.inner.release(&self.runner);
    }
}

#[cfg(test)]
mod tests;
