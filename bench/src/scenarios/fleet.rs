//! Workloads 4 to 6, the fleet as users see it: multi-turn conversations whose model mix
//! shifts halfway, Poisson arrivals at a share of the fleet's measured capacity, more models
//! than fit in a GPU. The simulators run ten times faster than real time; times are reported
//! as they would be on real GPUs.
//!
//! * **Heterogeneous** (4): two fast nodes and a slow one, five models on every disk.
//! * **Homogeneous** (5): three like nodes with two slots each, six models on every disk.
//! * **Failures** (6): the heterogeneous fleet's conversations unstreamed at 40 % of capacity;
//!   a fast node is killed a third of the way in, and the slow one refuses work (Ollama's 503)
//!   from two thirds.
//!
//! # Capacity
//!
//! Each run starts by measuring the fleet's capacity: the oracle (models placed by hand, see
//! [`crate::oracle`]) is loaded by a closed loop of twice as many connections as the fleet has
//! slots, first with the early mix, then with the late one; the capacity is the requests
//! completed per second in the slower phase, since an open-loop rate holds through both. Load
//! points are shares of that.

use std::time::Duration;

use crate::load::{self, Arrivals, LoadResult, LoadSpec};
use crate::oracle::Placement;
use crate::peers::{self, PeerError, PeerKind, PeerSetup, RunningPeer};
use crate::report::{ms, Chart, Section, Table};

use super::fleets::realistic_node;
use super::overhead::configurations;
use super::sims::{SimError, SimFleet};
use super::workloads::{Conversations, Mixes};
use super::{failed_section, failure_note, Context, Findings, Goal};

/// Simulated seconds per real second.
const TIME_SCALE: f64 = 0.1;
/// Goodput counts answers whose first token came within this (real time).
const TTFT_TARGET: Duration = Duration::from_secs(2);
/// nginx least_conn's goodput below which the fleet counts as under pressure: the goals are
/// read at the lowest load point where nginx falls below it.
const PRESSURE_GOODPUT: f64 = 0.6;

/// Which of the workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Workload 4: the heterogeneous fleet, streamed answers.
    Steady,
    /// Workload 5: the homogeneous fleet, streamed answers.
    Homogeneous,
    /// Workload 6: a node killed and one refusing work, unstreamed answers.
    Failures,
}

/// One simulated node of a fleet.
struct NodeShape {
    name: &'static str,
    /// An RTX 4090 rather than a 3090 at half the speed.
    fast: bool,
    slots: u32,
}

/// A fleet, its workload's model mix, and where the oracle places the models.
struct Shape {
    nodes: &'static [NodeShape],
    mixes: Mixes,
    /// The oracle's placement for the early and the late mix (node indices), largest model
    /// first: the order it loads them in, which decides what fits (as in Ollama, a model
    /// after the first must fit in a share of the memory left).
    placement: [&'static [(&'static str, &'static [usize])]; 2],
    description: &'static str,
}

/// Two RTX 4090s with four slots and an RTX 3090 with two. The oracle places every early model
/// everywhere (they fit together), and the late mix by hand: the 14B model (half the late
/// requests and most of the work) on a fast node and the slow one, gemma2 on the other fast
/// node (it fits beside the 14B one nowhere), the 3B model beside them everywhere.
const HETEROGENEOUS: Shape = Shape {
    nodes: &[
        NodeShape {
            name: "fast-1",
            fast: true,
            slots: 4,
        },
        NodeShape {
            name: "fast-2",
            fast: true,
            slots: 4,
        },
        NodeShape {
            name: "slow-1",
            fast: false,
            slots: 2,
        },
    ],
    mixes: Mixes::HETEROGENEOUS,
    placement: [
        &[
            ("llama3.2:3b", &[0, 1, 2]),
            ("qwen2.5:7b", &[0, 1, 2]),
            ("mistral:7b", &[0, 1, 2]),
        ],
        &[
            ("qwen2.5:14b", &[0, 2]),
            ("gemma2:9b", &[1]),
            ("llama3.2:3b", &[0, 1, 2]),
        ],
    ],
    description: "two RTX 4090 nodes (4 parallel slots) and one RTX 3090 node at half the \
                  speed (2 slots), 24 GiB each, every one with five models on disk \
                  (llama3.2:3b, qwen2.5:7b, mistral:7b, gemma2:9b, qwen2.5:14b; not all fit in \
                  memory at once)",
};

/// Three like RTX 4090s with two slots each (`OLLAMA_NUM_PARALLEL=2`) and six models on every
/// disk. The oracle places each early model on two or three nodes, three to a node; late, the
/// 14B model on two nodes and gemma2 on the third (the two fit beside each other nowhere),
/// with the small models beside them.
const HOMOGENEOUS: Shape = Shape {
    nodes: &[
        NodeShape {
            name: "gpu-1",
            fast: true,
            slots: 2,
        },
        NodeShape {
            name: "gpu-2",
            fast: true,
            slots: 2,
        },
        NodeShape {
            name: "gpu-3",
            fast: true,
            slots: 2,
        },
    ],
    mixes: Mixes::HOMOGENEOUS,
    placement: [
        &[
            ("llama3.2:3b", &[0, 1, 2]),
            ("qwen2.5:7b", &[0, 1]),
            ("mistral:7b", &[0, 2]),
            ("llama3.1:8b", &[1, 2]),
        ],
        &[
            ("qwen2.5:14b", &[0, 1]),
            ("gemma2:9b", &[2]),
            ("llama3.1:8b", &[0, 2]),
            ("llama3.2:3b", &[0, 1, 2]),
        ],
    ],
    description: "three like RTX 4090 nodes, 24 GiB and 2 parallel slots each \
                  (`OLLAMA_NUM_PARALLEL=2`), every one with six models on disk (llama3.2:3b, \
                  qwen2.5:7b, mistral:7b, llama3.1:8b, gemma2:9b, qwen2.5:14b; at most three \
                  fit in one node's memory)",
};

impl Shape {
    fn of(variant: Variant) -> &'static Shape {
        match variant {
            Variant::Steady | Variant::Failures => &HETEROGENEOUS,
            Variant::Homogeneous => &HOMOGENEOUS,
        }
    }

    /// Each node's name and simulator configuration.
    fn configs(&self) -> Vec<(String, String)> {
        let models = self.mixes.models();
        self.nodes
            .iter()
            .map(|n| {
                let config = realistic_node(n.name, n.fast, n.slots, &models, TIME_SCALE);
                (n.name.to_owned(), config)
            })
            .collect()
    }

    fn slots(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.slots).collect()
    }

    fn placement(&self) -> Vec<Placement> {
        self.placement
            .iter()
            .map(|phase| {
                phase
                    .iter()
                    .map(|(model, nodes)| ((*model).to_owned(), nodes.to_vec()))
                    .collect()
            })
            .collect()
    }
}

/// The fleet's measured capacity, in requests per second of real (simulated) time.
#[derive(Debug, Clone, Copy)]
struct Capacity {
    early: f64,
    late: f64,
}

impl Capacity {
    /// What an open-loop rate must stay within through both phases.
    fn both(self) -> f64 {
        self.early.min(self.late)
    }
}

struct Measured {
    kind: PeerKind,
    /// The system as the report names it (the peer, and its policy where it has several).
    label: String,
    /// The policy it ran, where it has several.
    policy: Option<&'static str>,
    load: f64,
    result: LoadResult,
    loads: u64,
    cache_hit_rate: f64,
}

impl Measured {
    /// Answers whose first token came within [`TTFT_TARGET`], of every request sent.
    fn goodput(&self) -> f64 {
        let good = self
            .result
            .outcomes
            .iter()
            .filter(|o| o.ok() && o.first_byte.is_some_and(|t| real(t) <= TTFT_TARGET))
            .count();
        good as f64 / self.sent() as f64
    }

    fn sent(&self) -> usize {
        self.result.outcomes.len().max(1)
    }

    fn failed(&self) -> u64 {
        let summary = self.result.summary();
        summary.failed + summary.dropped
    }
}

/// Runs the workload on every peer (each against a fresh fleet).
pub async fn run(context: &Context, variant: Variant) -> Findings {
    let heading = match variant {
        Variant::Steady => "4. Fleet realism: a heterogeneous fleet under shifting conversations",
        Variant::Homogeneous => "5. Fleet realism: a homogeneous fleet, more models than fit",
        Variant::Failures => "6. Failures under load: a node killed, another refusing work",
    };
    let shape = Shape::of(variant);
    let loads: Vec<f64> = match variant {
        // Below, near and beyond capacity: overload must degrade gracefully.
        Variant::Steady | Variant::Homogeneous => context.pick(vec![0.5, 0.8, 1.2], vec![0.8]),
        // Low enough that the fleet left after both failures (one fast node) still keeps up:
        // what is measured is the failures, not an overload.
        Variant::Failures => vec![0.4],
    };
    let duration = context.period(25, 10);
    let capacity = match calibrate(context, shape, duration).await {
        Ok(capacity) => capacity,
        Err(error) => return failed_section(heading, error),
    };
    let mut measured = Vec::new();
    let mut skipped = Vec::new();
    let mut configs = Vec::new();
    for (kind, policy) in systems(variant) {
        let label = match policy {
            Some(policy) if kind == PeerKind::Router => format!("{kind} ({policy})"),
            Some(policy) => format!("{} {policy}", kind.slug().to_uppercase()),
            None => kind.to_string(),
        };
        for &share in &loads {
            let mut fleet = match SimFleet::start(context, &shape.configs()).await {
                Ok(fleet) => fleet,
                Err(error) => return failed_section(heading, error),
            };
            let work_dir = format!(
                "fleet-{variant:?}-{kind:?}-{}-{share}",
                policy.unwrap_or("default")
            );
            let peer = match start_peer(context, shape, &fleet, kind, policy, &work_dir).await {
                Ok(peer) => peer,
                Err(reason) => {
                    skipped.push(format!("{label}: {reason}"));
                    break;
                }
            };
            if share == loads[0] {
                configs.push((label.clone(), peer.config.clone()));
            }
            // Loads the oracle made before the run are not the run's.
            let loads_before = fleet.total("loads").await;
            let rate = share * capacity.both() / TIME_SCALE;
            let expected = (rate * duration.as_secs_f64()) as u64;
            let stream = variant != Variant::Failures;
            let mut conversations = Conversations::new(42, shape.mixes, expected / 2, stream);
            let spec = LoadSpec {
                base_url: peer.url.clone(),
                arrivals: Arrivals::Open { per_second: rate },
                duration,
                ramp: Duration::ZERO,
                // 200 s of real time: far beyond any answer a working fleet gives.
                request_timeout: Duration::from_secs(20),
                stall_after: Duration::from_secs(5),
                max_in_flight: 2_048,
                bearer: peer.bearer.clone(),
            };
            let traffic = load::run(&spec, move |n| conversations.next(n));
            let result = if variant == Variant::Failures {
                let (result, ()) = tokio::join!(traffic, inject_failures(&mut fleet, duration));
                result
            } else {
                traffic.await
            };
            let prompt = fleet.total("prompt_tokens").await.max(1);
            measured.push(Measured {
                kind,
                label: label.clone(),
                policy,
                load: share,
                cache_hit_rate: fleet.total("cached_prompt_tokens").await as f64 / prompt as f64,
                loads: fleet.total("loads").await.saturating_sub(loads_before),
                result,
            });
            peer.stop().await;
        }
    }
    Findings {
        goals: goals(variant, &measured),
        section: section(
            heading, variant, shape, capacity, &measured, &skipped, &configs, duration,
        ),
    }
}

/// Starts `kind` in front of `fleet`, or says why it could not be.
async fn start_peer(
    context: &Context,
    shape: &Shape,
    fleet: &SimFleet,
    kind: PeerKind,
    policy: Option<&'static str>,
    work_dir: &str,
) -> Result<RunningPeer, String> {
    let models = shape.mixes.models();
    let setup = PeerSetup {
        backends: fleet.addrs(),
        workers: 1,
        cpus: context.cores.system.clone(),
        work_dir: context.work_dir.join(work_dir),
        // LiteLLM gets a group for this one and a wildcard group for the others.
        model: models[0].to_owned(),
        router_bin: context.bins.router.clone(),
        bench_bin: context.bins.bench.clone(),
        time_scale: TIME_SCALE,
        slots: shape.slots(),
        policy,
        placement: shape.placement(),
    };
    match peers::start(kind, &setup).await {
        Ok(peer) => Ok(peer),
        Err(PeerError::Unavailable(reason)) => Err(reason),
        Err(error) => Err(error.to_string()),
    }
}

/// Measures what the fleet serves with its models placed by hand (see the module doc).
async fn calibrate(
    context: &Context,
    shape: &Shape,
    duration: Duration,
) -> Result<Capacity, String> {
    let fleet = SimFleet::start(context, &shape.configs())
        .await
        .map_err(|e: SimError| e.to_string())?;
    let peer = start_peer(
        context,
        shape,
        &fleet,
        PeerKind::Oracle,
        None,
        "fleet-capacity",
    )
    .await
    .map_err(|reason| format!("the capacity could not be measured: {reason}"))?;
    let connections = 2 * shape.slots().iter().sum::<u32>() as usize;
    let phase = duration / 2;
    let measure = |shift_after: u64| {
        let mut conversations = Conversations::new(7, shape.mixes, shift_after, true);
        let spec = LoadSpec {
            base_url: peer.url.clone(),
            arrivals: Arrivals::Closed { connections },
            duration: phase,
            ramp: Duration::ZERO,
            request_timeout: Duration::from_secs(20),
            stall_after: Duration::from_secs(5),
            max_in_flight: connections,
            bearer: None,
        };
        async move {
            let result = load::run(&spec, move |n| conversations.next(n)).await;
            let done = result
                .outcomes
                .iter()
                .filter(|o| o.ok() && o.scheduled_at + o.latency <= phase)
                .count();
            // Requests per second of real (simulated) time.
            done as f64 / phase.as_secs_f64() * TIME_SCALE
        }
    };
    let early = measure(u64::MAX).await;
    let late = measure(0).await;
    peer.stop().await;
    drop(fleet);
    if early <= 0.0 || late <= 0.0 {
        return Err(format!(
            "the oracle completed no requests (early {early:.2}/s, late {late:.2}/s)"
        ));
    }
    Ok(Capacity { early, late })
}

/// The systems compared: the balancers users would otherwise pick, SMG with its default and its
/// cache-aware policy, the router with each scheduling policy switched on one at a time, and
/// the oracle. The homogeneous fleet runs the main ones only, the failure workload the router's
/// default only.
fn systems(variant: Variant) -> Vec<(PeerKind, Option<&'static str>)> {
    let router = |policy: &'static str| (PeerKind::Router, Some(policy));
    match variant {
        Variant::Steady => {
            let mut systems = vec![
                (PeerKind::Nginx, None),
                (PeerKind::Haproxy, None),
                (PeerKind::Smg, Some("power_of_two")),
                (PeerKind::Smg, Some("cache_aware")),
                (PeerKind::Litellm, None),
            ];
            systems.extend(ROUTER_POLICIES.into_iter().map(router));
            systems.push((PeerKind::Oracle, None));
            systems
        }
        Variant::Homogeneous => vec![
            (PeerKind::Nginx, None),
            (PeerKind::Haproxy, None),
            (PeerKind::Smg, Some("cache_aware")),
            router("least-outstanding"),
            router("learned"),
            router("preload"),
            (PeerKind::Oracle, None),
        ],
        Variant::Failures => vec![
            (PeerKind::Nginx, None),
            (PeerKind::Haproxy, None),
            (PeerKind::Smg, Some("power_of_two")),
            (PeerKind::Smg, Some("cache_aware")),
            (PeerKind::Litellm, None),
            (PeerKind::Router, None),
        ],
    }
}

/// The router's default `--schedule` policy.
const DEFAULT_POLICY: &str = "learned";

/// The router's `--schedule` policies, simplest first.
const ROUTER_POLICIES: [&str; 6] = [
    "least-outstanding",
    "queue",
    "residency",
    "affinity",
    "learned",
    "preload",
];

/// The router with its default policy.
fn is_default_router(m: &Measured) -> bool {
    m.kind == PeerKind::Router && m.policy.is_none_or(|p| p == DEFAULT_POLICY)
}

/// The failure workload: no non-streamed request fails through the router. The fleet
/// workloads: the scheduling goals, read at the lowest load where nginx least_conn's goodput
/// is below [`PRESSURE_GOODPUT`] (the highest load if it never is).
fn goals(variant: Variant, measured: &[Measured]) -> Vec<Goal> {
    if variant == Variant::Failures {
        return measured
            .iter()
            .find(|m| is_default_router(m))
            .map(|router| Goal {
                goal: "node killed under load: 0 failed non-streamed requests".into(),
                measured: format!(
                    "{} failed of {}",
                    router.failed(),
                    router.result.outcomes.len()
                ),
                met: router.failed() == 0,
            })
            .into_iter()
            .collect();
    }
    let at = |kind: PeerKind, policy: Option<&str>, load: f64| {
        measured
            .iter()
            .find(|m| m.kind == kind && m.load == load && (policy.is_none() || m.policy == policy))
    };
    let mut nginx_loads: Vec<&Measured> = measured
        .iter()
        .filter(|m| m.kind == PeerKind::Nginx)
        .collect();
    nginx_loads.sort_by(|a, b| a.load.total_cmp(&b.load));
    let Some(pressure) = nginx_loads
        .iter()
        .find(|m| m.goodput() < PRESSURE_GOODPUT)
        .or(nginx_loads.last())
        .map(|m| m.load)
    else {
        return Vec::new();
    };
    let (Some(nginx), Some(router)) = (
        at(PeerKind::Nginx, None, pressure),
        measured
            .iter()
            .find(|m| is_default_router(m) && m.load == pressure),
    ) else {
        return Vec::new();
    };
    let smg = at(PeerKind::Smg, Some("cache_aware"), pressure);
    let oracle = at(PeerKind::Oracle, None, pressure);
    let fleet = match variant {
        Variant::Homogeneous => "homogeneous",
        _ => "heterogeneous",
    };
    fn ttft(m: &Measured) -> f64 {
        m.result.summary().first_byte.mean.as_secs_f64()
    }
    fn e2e(m: &Measured) -> f64 {
        m.result.summary().latency.p99.as_secs_f64()
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    let percent = pressure * 100.0;
    // A ratio to nginx least_conn that must stay within `limit`.
    let against_nginx = |what: &str, figure: fn(&Measured) -> f64, limit: f64| {
        let value = ratio(figure(router), figure(nginx));
        Goal {
            goal: goal_text(fleet, &format!("{what} ≤ {limit}× nginx least_conn")),
            measured: format!("{value:.3}× at {percent:.0} % load"),
            met: value <= limit,
        }
    };
    let mut goals = vec![
        against_nginx("mean TTFT", ttft, 0.2),
        against_nginx("p99 end-to-end", e2e, 0.3),
        Goal {
            goal: goal_text(
                fleet,
                "goodput ≥ 95 % (refused and timed out count as misses)",
            ),
            measured: format!("{:.1} % at {percent:.0} % load", router.goodput() * 100.0),
            met: router.goodput() >= 0.95,
        },
        Goal {
            goal: goal_text(fleet, "model loads ≤ 0.2× nginx least_conn"),
            measured: format!(
                "{} vs {} ({:.2}×)",
                router.loads,
                nginx.loads,
                ratio(router.loads as f64, nginx.loads as f64)
            ),
            met: ratio(router.loads as f64, nginx.loads as f64) <= 0.2,
        },
    ];
    if let Some(smg) = smg {
        let better = ttft(router) < ttft(smg)
            && e2e(router) < e2e(smg)
            && router.goodput() > smg.goodput()
            && router.loads < smg.loads;
        goals.push(Goal {
            goal: goal_text(fleet, "better than SMG cache_aware on each of these"),
            measured: format!(
                "TTFT {} vs {}, p99 e2e {} vs {}, goodput {:.1} vs {:.1} %, loads {} vs {}",
                ms(real(router.result.summary().first_byte.mean)),
                ms(real(smg.result.summary().first_byte.mean)),
                ms(real(router.result.summary().latency.p99)),
                ms(real(smg.result.summary().latency.p99)),
                router.goodput() * 100.0,
                smg.goodput() * 100.0,
                router.loads,
                smg.loads
            ),
            met: better,
        });
    }
    if let Some(oracle) = oracle {
        goals.push(Goal {
            goal: goal_text(fleet, "mean TTFT within 1.5× of the oracle's"),
            measured: format!(
                "{} vs {} ({:.2}×)",
                ms(real(router.result.summary().first_byte.mean)),
                ms(real(oracle.result.summary().first_byte.mean)),
                ratio(ttft(router), ttft(oracle))
            ),
            met: ratio(ttft(router), ttft(oracle)) <= 1.5,
        });
    }
    goals
}

/// A goal's text for one fleet.
fn goal_text(fleet: &str, goal: &str) -> String {
    format!("{fleet} fleet under pressure: {goal}")
}

/// Kills `fast-2` a third of the way in and makes `slow-1` answer 503 from two thirds.
async fn inject_failures(fleet: &mut SimFleet, duration: Duration) {
    tokio::time::sleep(duration / 3).await;
    fleet.nodes_mut()[1].kill().await;
    tokio::time::sleep(duration / 3).await;
    if let Err(error) = fleet.nodes()[2]
        .set_faults(serde_json::json!({"busy": true}))
        .await
    {
        tracing::warn!(%error, "could not make slow-1 refuse work");
    }
}

/// Real-time equivalent of a simulated duration.
fn real(d: Duration) -> Duration {
    d.div_f64(TIME_SCALE)
}

#[allow(clippy::too_many_arguments)]
fn section(
    heading: &str,
    variant: Variant,
    shape: &Shape,
    capacity: Capacity,
    measured: &[Measured],
    skipped: &[String],
    configs: &[(String, String)],
    duration: Duration,
) -> Section {
    let mut table = Table {
        columns: [
            "system",
            "load",
            "requests",
            "failed",
            "latency mean / p99",
            "TTFT mean / p99",
            "goodput (TTFT ≤ 2 s)",
            "cold loads",
            "prompt cache hits",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    let mut goodput_bars = Vec::new();
    for m in measured {
        let summary = m.result.summary();
        let sent = m.sent();
        let goodput = m.goodput();
        goodput_bars.push((
            format!("{} @{:.0}%", m.label, m.load * 100.0),
            goodput * 100.0,
        ));
        table.rows.push(vec![
            m.label.clone(),
            format!("{:.0} %", m.load * 100.0),
            sent.to_string(),
            m.failed().to_string(),
            format!(
                "{} / {}",
                ms(real(summary.latency.mean)),
                ms(real(summary.latency.p99))
            ),
            format!(
                "{} / {}",
                ms(real(summary.first_byte.mean)),
                ms(real(summary.first_byte.p99))
            ),
            format!("{:.1} %", goodput * 100.0),
            m.loads.to_string(),
            format!("{:.1} %", m.cache_hit_rate * 100.0),
        ]);
    }
    // One pair of charts per load point: a dozen series a chart stay readable, thirty do not.
    let mut shares: Vec<f64> = measured.iter().map(|m| m.load).collect();
    shares.sort_by(f64::total_cmp);
    shares.dedup();
    let mut charts = Vec::new();
    for share in shares {
        let percent = format!("{:.0}", share * 100.0);
        let at_share = || measured.iter().filter(move |m| m.load == share);
        charts.push(Chart::LatencyCdf {
            title: format!("Time to first token at {percent} % load (real-time equivalent)"),
            file_stem: format!("fleet-{variant:?}-ttft-{percent}").to_lowercase(),
            series: at_share()
                .map(|m| {
                    let ttft = m
                        .result
                        .outcomes
                        .iter()
                        .filter_map(|o| o.first_byte.filter(|_| o.ok()).map(real))
                        .collect();
                    (m.label.clone(), ttft)
                })
                .collect(),
        });
        charts.push(Chart::Bars {
            title: format!("Goodput at {percent} % load: first token within 2 s"),
            file_stem: format!("fleet-{variant:?}-goodput-{percent}").to_lowercase(),
            y_label: "% of requests".into(),
            bars: goodput_bars
                .iter()
                .filter(|(label, _)| label.ends_with(&format!("@{percent}%")))
                .map(|(label, value)| {
                    (
                        label.trim_end_matches(&format!(" @{percent}%")).to_owned(),
                        *value,
                    )
                })
                .collect(),
        });
    }
    let placement: Vec<String> = shape
        .placement
        .iter()
        .zip(["early", "late"])
        .map(|(phase, name)| {
            let placed: Vec<String> = phase
                .iter()
                .map(|(model, nodes)| {
                    let on: Vec<&str> = nodes.iter().map(|&n| shape.nodes[n].name).collect();
                    format!("{model} on {}", on.join(", "))
                })
                .collect();
            format!("{name}: {}", placed.join("; "))
        })
        .collect();
    let slots: Vec<String> = shape.slots().iter().map(u32::to_string).collect();
    let mut text = format!(
        "Simulated fleet: {}, realistic decode/prefill speeds and NVMe load times. 64 open \
         multi-turn conversations (4 turns, each resending its history, 32–160 answer tokens) \
         as `/v1/chat/completions`{}, the model mix shifting halfway. Poisson arrivals at the \
         given share of the fleet's capacity, for {} of simulated time ({} real, the \
         simulators running {}× faster); all times below are real-time equivalents.\n\n\
         **Capacity, measured:** {:.2} requests/s with the early mix and {:.2} with the late \
         one; 100 % load is {:.2} requests/s, the slower phase's (an open-loop rate holds \
         through both). It is what the oracle completes under a closed loop of twice as many \
         connections as the fleet has slots, for half the run with each mix.\n\n\
         **The oracle** is the limit to compare with: models placed by hand before the run \
         ({}), each request sent to a node where its model is placed and a slot is free, held \
         at the oracle while none is; at the shift it loads the late placement once. It never \
         loads on demand and never queues inside a node.\n\n\
         Load balancers that do not know models (nginx, HAProxy, LiteLLM's least-busy) spread \
         each model over every node, which shows in cold loads and cache hits. SMG runs with \
         its default `power_of_two` and its `cache_aware` policy; the router runs with its \
         scheduling policies (`--schedule`, each adding one idea to the one before: \
         `least-outstanding`, `queue`, `residency`, `affinity`, `learned` (the default), \
         `preload`), told \
         each node's slots (`--slots {}`). Goodput counts refused and timed-out requests as \
         misses; cold loads count the loads during the run (not the oracle's placement).\n",
        shape.description,
        if variant == Variant::Failures {
            ", not streamed"
        } else {
            ", streamed (SSE)"
        },
        humantime::format_duration(real(duration)),
        humantime::format_duration(duration),
        1.0 / TIME_SCALE,
        capacity.early,
        capacity.late,
        capacity.both(),
        placement.join("; "),
        slots.join(","),
    );
    if variant == Variant::Failures {
        text.push_str(
            "\nA third of the way in, `fast-2` is killed (SIGKILL, as a preempted machine \
             vanishes); two thirds of the way in, `slow-1` starts answering every request with \
             Ollama's 503 \"server busy\" (its health endpoint still answers). The load is low \
             enough for `fast-1` alone. Failed = requests the client saw fail.\n",
        );
    }
    for s in skipped {
        text.push_str(&format!("\n- **Skipped** {s}"));
    }
    for m in measured {
        let who = format!("{} at {:.0} %", m.label, m.load * 100.0);
        text.push_str(&failure_note(&who, &m.result));
    }
    text.push_str(&configurations(
        configs
            .iter()
            .map(|(name, config)| (name.clone(), config.as_str())),
    ));
    Section {
        heading: heading.to_owned(),
        text,
        tables: vec![table],
        charts,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;

    use ollama_mesh_test_support::{http, SimNode};

    use super::*;
    use crate::oracle::{self, OracleConfig, OracleNode};

    /// The models each node has loaded, by `/api/ps`.
    async fn loaded(addr: SocketAddr) -> BTreeSet<String> {
        let (_, ps) = http::get(addr, "/api/ps").await.expect("the node answers");
        let ps: serde_json::Value = serde_json::from_str(&ps).unwrap();
        ps["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// What `phase` places on node `node`.
    fn placed(shape: &Shape, phase: usize, node: usize) -> BTreeSet<String> {
        shape.placement[phase]
            .iter()
            .filter(|(_, nodes)| nodes.contains(&node))
            .map(|(model, _)| (*model).to_owned())
            .collect()
    }

    /// Each fleet's hand placement fits: after the oracle loads a phase, every node holds
    /// exactly what that phase places on it, early and late (Ollama's own fit and eviction
    /// rules, as the simulator has them, decide).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_placement_fits_its_fleet() {
        for shape in [&HETEROGENEOUS, &HOMOGENEOUS] {
            let mut nodes = Vec::new();
            for (_, config) in shape.configs() {
                let spec = ollama_mesh_sim::NodeSpec::from_toml(&config).unwrap();
                nodes.push(SimNode::start(spec).await);
            }
            let config = OracleConfig {
                nodes: nodes
                    .iter()
                    .zip(shape.slots())
                    .map(|(node, slots)| OracleNode {
                        addr: node.addr(),
                        slots: slots as usize,
                    })
                    .collect(),
                phases: shape.placement(),
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let oracle = tokio::spawn(oracle::serve(listener, config));
            // The oracle accepts once the first placement is loaded.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while http::get(addr, "/api/version").await.is_none() {
                assert!(
                    !oracle.is_finished(),
                    "the oracle stopped: {:?}",
                    oracle.await
                );
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no placement within 30 s"
                );
            }
            for (index, node) in nodes.iter().enumerate() {
                assert_eq!(
                    loaded(node.addr()).await,
                    placed(shape, 0, index),
                    "early, node {index}"
                );
            }
            // A model only the late mix has starts the late phase.
            let late_only = shape.placement[1]
                .iter()
                .map(|(model, _)| *model)
                .find(|m| shape.placement[0].iter().all(|(early, _)| early != m))
                .unwrap();
            let body = serde_json::json!({"model": late_only, "prompt": "hi", "stream": false,
                                          "options": {"num_predict": 1}});
            let (status, answer) = http::post(addr, "/api/generate", &body.to_string())
                .await
                .expect("the oracle answers");
            assert_eq!(status, 200, "{answer}");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            for (index, node) in nodes.iter().enumerate() {
                let want = placed(shape, 1, index);
                while loaded(node.addr()).await != want {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "late, node {index}: {:?} loaded, {want:?} placed",
                        loaded(node.addr()).await
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            oracle.abort();
        }
    }

    /// The oracle never gives a node more of a model's requests than its slots, holds the
    /// rest, and sends each to a node where its model is placed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_oracle_holds_requests_beyond_the_slots_of_the_placed_nodes() {
        let spec = |name: &str| {
            ollama_mesh_sim::NodeSpec::from_toml(&format!(
                "node_name = \"{name}\"\n[[models]]\nname = \"m\"\n\
                 [[models]]\nname = \"other\"\n[scheduler]\nnum_parallel = 1\n"
            ))
            .unwrap()
        };
        let nodes = [
            SimNode::start(spec("a")).await,
            SimNode::start(spec("b")).await,
        ];
        let config = OracleConfig {
            nodes: nodes
                .iter()
                .map(|n| OracleNode {
                    addr: n.addr(),
                    slots: 1,
                })
                .collect(),
            phases: vec![[("m".to_owned(), vec![1])].into_iter().collect()],
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let oracle = tokio::spawn(oracle::serve(listener, config));
        let body = serde_json::json!({"model": "m", "prompt": "hi", "stream": false,
                                      "options": {"num_predict": 20}})
        .to_string();
        let requests = (0..4).map(|_| http::post(addr, "/api/generate", &body));
        let requests = futures_util::future::join_all(requests);
        tokio::pin!(requests);
        // b's requests in flight, sampled while the four run.
        let mut most = 0;
        let answers = loop {
            tokio::select! {
                answers = &mut requests => break answers,
                () = tokio::time::sleep(Duration::from_millis(5)) => {
                    let stats = nodes[1].sim().stats();
                    most = most.max(stats["requests_in_flight"].as_u64().unwrap_or(0));
                }
            }
        };
        for answer in answers {
            assert_eq!(answer.expect("the oracle answers").0, 200);
        }
        assert_eq!(
            nodes[0].sim().stats()["requests_total"],
            0,
            "m is placed on b only"
        );
        assert_eq!(
            nodes[1].sim().stats()["requests_total"],
            5,
            "the load and four requests"
        );
        assert_eq!(most, 1, "requests beyond b's one slot waited at the oracle");
        oracle.abort();
    }
}
