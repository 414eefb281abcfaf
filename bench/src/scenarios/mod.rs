//! The workloads of the report, one module each, and what they share: the binaries under test,
//! the split of the machine's cores, and the simulated fleets.
//!
//! * [`overhead`]: small non-streamed requests, at full speed and at fixed rates.
//! * [`streams`]: thousands of concurrent long NDJSON streams.
//! * [`discovery`]: instances registered, failed and drained in Consul under load.
//! * [`fleet`]: a heterogeneous and a homogeneous fleet under a realistic, shifting
//!   conversation mix, measured against an oracle placement, and the heterogeneous one with a
//!   node killed and another refusing work.
//! * [`mesh`]: the router's overhead through Consul Connect mTLS against plain HTTP.

pub mod discovery;
pub mod fleet;
pub mod fleets;
pub mod mesh;
pub mod overhead;
pub mod sims;
pub mod streams;
pub mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use crate::report::Section;

/// One workload of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Small non-streamed requests: throughput and added latency.
    Overhead,
    /// Concurrent long NDJSON streams: time to first token, gaps, memory.
    Streams,
    /// Consul changes under load: time until routing follows.
    Discovery,
    /// A realistic heterogeneous fleet under shifting conversations.
    Fleet,
    /// A homogeneous fleet, more models than fit, under shifting conversations.
    FleetHomogeneous,
    /// The realistic fleet with a node killed and one refusing work.
    Failure,
    /// Router overhead through the service mesh.
    Mesh,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 7] = [
        Scenario::Overhead,
        Scenario::Streams,
        Scenario::Discovery,
        Scenario::Fleet,
        Scenario::FleetHomogeneous,
        Scenario::Failure,
        Scenario::Mesh,
    ];
}

/// Where the programs under test are.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `ollama-mesh-router` (release).
    pub router: PathBuf,
    /// `ollama-mesh-sidecar` (release).
    pub sidecar: PathBuf,
    /// `ollama-sim` (release).
    pub sim: PathBuf,
    /// `consul`.
    pub consul: PathBuf,
    /// This bench (the oracle runs as its `oracle` subcommand).
    pub bench: PathBuf,
}

/// Which cores do what: the system under test gets one to itself; the load generator and the
/// simulated nodes share the other.
#[derive(Debug, Clone)]
pub struct Cores {
    /// `taskset` list for the proxy under test.
    pub system: String,
    /// `taskset` list for the load generator and the simulators.
    pub load: String,
}

/// What every scenario runs with.
#[derive(Debug, Clone)]
pub struct Context {
    /// Shorter runs and fewer steps (the whole suite in about 3 minutes).
    pub quick: bool,
    /// The programs under test.
    pub bins: Bins,
    /// The core split.
    pub cores: Cores,
    /// Scratch space for configurations and logs.
    pub work_dir: PathBuf,
}

impl Context {
    /// `full` normally, `quick` with `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// A measurement period: `full` normally, `quick` with `--quick`.
    pub fn period(&self, full_secs: u64, quick_secs: u64) -> Duration {
        Duration::from_secs(self.pick(full_secs, quick_secs))
    }
}

/// One of the goals the report is read against, and how this run did.
#[derive(Debug, Clone)]
pub struct Goal {
    /// The goal, as the issue states it.
    pub goal: String,
    /// What this run measured.
    pub measured: String,
    /// Whether it was met.
    pub met: bool,
}

/// A scenario's part of the report and the goals it checked.
pub struct Findings {
    /// Its section.
    pub section: Section,
    /// Goals it measured (none for most).
    pub goals: Vec<Goal>,
}

impl From<Section> for Findings {
    fn from(section: Section) -> Self {
        Self {
            section,
            goals: Vec::new(),
        }
    }
}

/// Runs one scenario and returns its part of the report.
pub async fn run(scenario: Scenario, context: &Context) -> Findings {
    let started = std::time::Instant::now();
    let findings = match scenario {
        Scenario::Overhead => overhead::run(context).await,
        Scenario::Streams => streams::run(context).await,
        Scenario::Discovery => discovery::run(context).await,
        Scenario::Fleet => fleet::run(context, fleet::Variant::Steady).await,
        Scenario::FleetHomogeneous => fleet::run(context, fleet::Variant::Homogeneous).await,
        Scenario::Failure => fleet::run(context, fleet::Variant::Failures).await,
        Scenario::Mesh => mesh::run(context).await,
    };
    tracing::info!(?scenario, took = ?started.elapsed(), "scenario done");
    findings
}

/// The findings of a scenario that could not run, saying why.
pub(crate) fn failed_section(heading: &str, error: impl std::fmt::Display) -> Findings {
    Section {
        heading: heading.to_owned(),
        text: format!("**Not run:** {error}"),
        tables: Vec::new(),
        charts: Vec::new(),
    }
    .into()
}

/// A list item saying why `who`'s requests failed, the most common reasons first; empty when
/// none failed. A failure count without its cause sends readers guessing.
pub(crate) fn failure_note(who: &str, result: &crate::load::LoadResult) -> String {
    const SHOWN: usize = 3;
    let reasons = result.failure_reasons();
    if reasons.is_empty() {
        return String::new();
    }
    let mut listed: Vec<String> = reasons
        .iter()
        .take(SHOWN)
        .map(|(reason, count)| format!("{count}× `{reason}`"))
        .collect();
    if reasons.len() > SHOWN {
        let others: u64 = reasons[SHOWN..].iter().map(|(_, count)| count).sum();
        listed.push(format!("{others}× other reasons"));
    }
    format!("\n- **Why requests failed**, {who}: {}", listed.join("; "))
}

/// A table row of `label`, the sample count, p50, p99 and max.
pub(crate) fn percentiles_row(label: &str, values: &crate::load::Percentiles) -> Vec<String> {
    use crate::report::ms;
    vec![
        label.to_owned(),
        values.count.to_string(),
        ms(values.p50),
        ms(values.p99),
        ms(values.max),
    ]
}
