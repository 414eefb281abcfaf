//! The state one simulated node shares between its connections.

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::SimConfig;
use crate::faults::Faults;
use crate::registry::Registry;
use crate::scheduler::Scheduler;
use crate::stats::Stats;

/// Everything a request handler may touch.
#[derive(Debug)]
pub struct App {
    /// The validated configuration.
    pub config: SimConfig,
    /// Simulated time.
    pub clock: Clock,
    /// The scheduler.
    pub scheduler: Scheduler,
    /// Models on disk.
    pub registry: Registry,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Fault state.
    pub faults: Faults,
    /// The decode slowdown curve, shared by every generation.
    pub curve: Arc<[f64]>,
}

impl App {
    /// A fresh node.
    pub fn new(config: SimConfig) -> Self {
        let clock = Clock::new(config.time_scale);
        let stats = Arc::new(Stats::default());
        Self {
            clock,
            scheduler: Scheduler::new(config.scheduler.clone(), clock, Arc::clone(&stats)),
            registry: Registry::new(&config.models),
            stats,
            faults: Faults::new(&config.faults),
            curve: config.scheduler.decode_slowdown.clone().into(),
            config,
        }
    }
}
