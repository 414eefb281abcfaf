//! Workloads 4 and 5, the fleet as users see it: two fast nodes and a slow one, five models
//! that do not all fit in one GPU, multi-turn conversations whose model mix shifts halfway,
//! Poisson arrivals at a share of the fleet's capacity. The simulators run ten times faster
//! than real time; times are reported as they would be on real GPUs.
//!
//! The failure variant sends the same conversations unstreamed at 40 % of capacity, kills a
//! fast node a third of the way in and makes the slow one refuse work (Ollama's 503) from two
//! thirds.

use std::time::Duration;

use crate::load::{self, Arrivals, LoadResult, LoadSpec};
use crate::peers::{self, PeerError, PeerKind, PeerSetup};
use crate::report::{ms, Chart, Section, Table};

use super::fleets::realistic_node;
use super::overhead::configurations;
use super::sims::SimFleet;
use super::workloads::Conversations;
use super::{failed_section, failure_note, Context, Findings, Goal};

/// Simulated seconds per real second.
const TIME_SCALE: f64 = 0.1;
/// What the fleet serves at steady state, in requests per real second: about 2.5 on each fast
/// node (four slots sharing the decoder, about 1.5 s per answer of ~100 tokens) and 0.5 on the
/// slow one, less what model loads take when the mix shifts.
const CAPACITY: f64 = 5.0;
/// Goodput counts answers whose first token came within this (real time).
const TTFT_TARGET: Duration = Duration::from_secs(2);

/// Which of the two workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Workload 4: steady fleet, streamed answers.
    Steady,
    /// Workload 5: a node killed and one refusing work, unstreamed answers.
    Failures,
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

/// Runs the workload on every peer (each against a fresh fleet).
pub async fn run(context: &Context, variant: Variant) -> Findings {
    let heading = match variant {
        Variant::Steady => "4. Fleet realism: a heterogeneous fleet under shifting conversations",
        Variant::Failures => "5. Failures under load: a node killed, another refusing work",
    };
    let loads: Vec<f64> = match variant {
        // Below, near and beyond capacity: overload must degrade gracefully.
        Variant::Steady => context.pick(vec![0.5, 0.8, 1.2], vec![0.8]),
        // Low enough that the fleet left after both failures (one fast node) still keeps up:
        // what is measured is the failures, not an overload.
        Variant::Failures => vec![0.4],
    };
    let duration = context.period(25, 10);
    let models = Conversations::models();
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
            let nodes: Vec<(String, String)> =
                [("fast-1", true), ("fast-2", true), ("slow-1", false)]
                    .iter()
                    .map(|(name, fast)| {
                        (
                            name.to_string(),
                            realistic_node(name, *fast, &models, TIME_SCALE),
                        )
                    })
                    .collect();
            let mut fleet = match SimFleet::start(context, &nodes).await {
                Ok(fleet) => fleet,
                Err(error) => return failed_section(heading, error),
            };
            let setup = PeerSetup {
                backends: fleet.addrs(),
                workers: 1,
                cpus: context.cores.system.clone(),
                work_dir: context.work_dir.join(format!(
                    "fleet-{variant:?}-{kind:?}-{}-{share}",
                    policy.unwrap_or("default")
                )),
                // LiteLLM gets a group for this one and a wildcard group for the others.
                model: models[0].to_owned(),
                router_bin: context.bins.router.clone(),
                time_scale: TIME_SCALE,
                slots: nodes.iter().map(|(name, _)| node_slots(name)).collect(),
                policy,
            };
            let peer = match peers::start(kind, &setup).await {
                Ok(peer) => peer,
                Err(PeerError::Unavailable(reason)) => {
                    skipped.push(format!("{label}: {reason}"));
                    break;
                }
                Err(error) => {
                    skipped.push(format!("{label}: {error}"));
                    break;
                }
            };
            if share == loads[0] {
                configs.push((label.clone(), peer.config.clone()));
            }
            let rate = share * CAPACITY / TIME_SCALE;
            let expected = (rate * duration.as_secs_f64()) as u64;
            let stream = variant == Variant::Steady;
            let mut conversations = Conversations::new(42, expected / 2, stream);
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
                loads: fleet.total("loads").await,
                result,
            });
            peer.stop().await;
        }
    }
    Findings {
        goals: goals(variant, &measured),
        section: section(heading, variant, &measured, &skipped, &configs, duration),
    }
}

/// The systems compared: the balancers users would otherwise pick, SMG with its default and its
/// cache-aware policy, and the router with each scheduling policy switched on one at a time
/// (the failure workload runs the router's default only).
fn systems(variant: Variant) -> Vec<(PeerKind, Option<&'static str>)> {
    let mut systems = vec![
        (PeerKind::Nginx, None),
        (PeerKind::Haproxy, None),
        (PeerKind::Smg, Some("power_of_two")),
        (PeerKind::Smg, Some("cache_aware")),
        (PeerKind::Litellm, None),
    ];
    match variant {
        Variant::Steady => systems.extend(
            ROUTER_POLICIES
                .iter()
                .map(|policy| (PeerKind::Router, Some(*policy))),
        ),
        Variant::Failures => systems.push((PeerKind::Router, None)),
    }
    systems
}

/// The router's `--schedule` policies, simplest first; the last is its default.
const ROUTER_POLICIES: [&str; 5] = [
    "least-outstanding",
    "queue",
    "residency",
    "affinity",
    "learned",
];

/// Parallel slots of a node of this fleet, by name (see [`realistic_node`]).
fn node_slots(name: &str) -> u32 {
    if name.starts_with("fast") {
        4
    } else {
        2
    }
}

/// A node killed under load: no non-streamed request fails through the router.
fn goals(variant: Variant, measured: &[Measured]) -> Vec<Goal> {
    let router = measured
        .iter()
        .find(|m| m.kind == PeerKind::Router && m.policy.is_none_or(|p| p == "learned"));
    match (variant, router) {
        (Variant::Failures, Some(router)) => {
            let summary = router.result.summary();
            let failed = summary.failed + summary.dropped;
            vec![Goal {
                goal: "node killed under load: 0 failed non-streamed requests",
                measured: format!("{failed} failed of {}", router.result.outcomes.len()),
                met: failed == 0,
            }]
        }
        _ => Vec::new(),
    }
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

fn section(
    heading: &str,
    variant: Variant,
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
        let sent = m.result.outcomes.len().max(1);
        let good = m
            .result
            .outcomes
            .iter()
            .filter(|o| o.ok() && o.first_byte.is_some_and(|t| real(t) <= TTFT_TARGET))
            .count();
        let goodput = good as f64 / sent as f64;
        goodput_bars.push((
            format!("{} @{:.0}%", m.label, m.load * 100.0),
            goodput * 100.0,
        ));
        table.rows.push(vec![
            m.label.clone(),
            format!("{:.0} %", m.load * 100.0),
            sent.to_string(),
            (summary.failed + summary.dropped).to_string(),
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
    let mut text = format!(
        "Simulated fleet: two RTX 4090 nodes (4 parallel slots) and one RTX 3090 node at half \
         the speed (2 slots), 24 GiB each, every one with five models on disk (llama3.2:3b, \
         qwen2.5:7b, mistral:7b, gemma2:9b, qwen2.5:14b; not all fit in memory at once), \
         realistic decode/prefill speeds and NVMe load times. 64 open multi-turn conversations \
         (4 turns, each resending its history, 32–160 answer tokens) as \
         `/v1/chat/completions`{}, the model mix shifting halfway from small to larger models. \
         Poisson arrivals at the given share of about {CAPACITY} requests/s of capacity, for \
         {} of simulated time ({} real, the simulators running {}× faster); all times below \
         are real-time equivalents. Load balancers that do not know models (nginx, HAProxy, \
         LiteLLM's least-busy) spread each model over every node, which shows in cold loads \
         and cache hits. SMG runs with its default `power_of_two` and its `cache_aware` policy; \
         the router runs once per scheduling policy (`--schedule`, each adding one idea to the \
         one before: `least-outstanding`, `queue`, `residency`, `affinity`, `learned`, the \
         default), told each node's slots (`--slots 4,4,2`). Goodput counts refused and \
         timed-out requests as misses.\n",
        if variant == Variant::Steady {
            ", streamed (SSE)"
        } else {
            ", not streamed"
        },
        humantime::format_duration(real(duration)),
        humantime::format_duration(duration),
        1.0 / TIME_SCALE
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
