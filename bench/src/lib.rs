//! ollama-mesh's benchmark suite: the router and the proxies users would otherwise pick, run
//! side by side on one machine against the same simulated fleet with the same load generator,
//! reported as ratios measured in one run (absolute numbers on a shared 2-core machine are
//! noise; ratios within a run are not).
//!
//! # Layout
//!
//! * [`load`]: the load generator: closed-loop connections or open-loop Poisson arrivals,
//!   non-streamed and streamed (NDJSON/SSE) requests, one [`load::Outcome`] per request.
//! * [`oracle`]: the limit a scheduler is compared with: models placed by hand, each request
//!   sent to a warm node with a free slot.
//! * [`report`]: percentiles, the Markdown report and its PNG charts.
//! * [`peers`]: the systems under test (direct, nginx, HAProxy, SMG, LiteLLM, the router),
//!   installed by `bench/setup`, configured alike and pinned to their share of the cores.
//! * [`scenarios`]: the workloads of the report, one module each.
//! * [`procs`]: child processes pinned to CPUs, their memory and CPU time, readiness probes.
//! * [`suite`]: a whole run: the machine, the scenarios, the goals and the report.

pub mod load;
pub mod oracle;
pub mod peers;
pub mod procs;
pub mod report;
pub mod scenarios;
pub mod suite;
