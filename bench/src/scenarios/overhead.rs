//! Workload 1, overhead: small non-streamed chats through each system, first as fast as 32
//! connections go (like `wrk -c32`), then open-loop at fixed rates, against three nodes that
//! answer at once. What remains is the proxy: its throughput on one core, the latency it adds
//! over going direct, and its CPU time and memory.

use std::time::Duration;

use crate::load::{self, Arrivals, LoadSpec, Summary};
use crate::peers::{self, Api, PeerError, PeerKind, PeerSetup, RunningPeer};
use crate::report::{ms, ratio, Chart, Section, Table};

use super::fleets::instant_node;
use super::sims::SimFleet;
use super::workloads::small_chat;
use super::{failed_section, Context, Findings, Goal};

const HEADING: &str = "1. Overhead: small non-streamed requests";
const MODEL: &str = "llama3.2:3b";
const CONNECTIONS: usize = 32;
/// LiteLLM answers in the hundreds of milliseconds: fewer connections and a short run keep it
/// from dominating the suite's time (perf-facts: 72 requests/s at 16 connections).
const SLOW_PEER_CONNECTIONS: usize = 16;

/// One system's results.
struct Measured {
    kind: PeerKind,
    api: Api,
    max: Summary,
    /// (offered rate, summary) of the open-loop steps.
    rates: Vec<(f64, Summary)>,
    cpu_per_request: Option<Duration>,
    rss_kib: Option<u64>,
    config: String,
}

/// Runs the workload on every peer.
pub async fn run(context: &Context) -> Findings {
    let nodes: Vec<(String, String)> = (1..=3)
        .map(|i| {
            (
                format!("instant-{i}"),
                instant_node(&format!("instant-{i}"), MODEL, 64),
            )
        })
        .collect();
    let fleet = match SimFleet::start(context, &nodes).await {
        Ok(fleet) => fleet,
        Err(error) => return failed_section(HEADING, error),
    };
    let rates: Vec<f64> = context.pick(vec![2_000.0, 5_000.0, 10_000.0, 20_000.0], vec![5_000.0]);
    let mut measured = Vec::new();
    let mut skipped = Vec::new();
    for kind in PeerKind::ALL.into_iter().filter(|k| k.is_proxy()) {
        let setup = PeerSetup {
            backends: fleet.addrs(),
            workers: 1,
            cpus: context.cores.system.clone(),
            work_dir: context.work_dir.join(format!("overhead-{kind:?}")),
            model: MODEL.to_owned(),
            router_bin: context.bins.router.clone(),
            bench_bin: context.bins.bench.clone(),
            time_scale: 1.0,
            slots: vec![64; fleet.addrs().len()],
            policy: None,
            placement: Vec::new(),
        };
        match peers::start(kind, &setup).await {
            Ok(peer) => measured.push(measure(context, peer, &rates).await),
            Err(PeerError::Unavailable(reason)) => skipped.push(format!("{kind}: {reason}")),
            Err(error) => skipped.push(format!("{kind}: failed to start: {error}")),
        }
    }
    Findings {
        goals: goals(&measured),
        section: section(&measured, &skipped, &rates),
    }
}

/// Throughput at least nginx's; p99 at most 1 ms over direct.
fn goals(measured: &[Measured]) -> Vec<Goal> {
    let find = |kind| measured.iter().find(|m| m.kind == kind);
    let (Some(router), Some(direct)) = (find(PeerKind::Router), find(PeerKind::Direct)) else {
        return Vec::new();
    };
    let mut goals = Vec::new();
    if let Some(nginx) = find(PeerKind::Nginx) {
        let times = router.max.throughput / nginx.max.throughput.max(1.0);
        goals.push(Goal {
            goal: "small requests: router throughput ≥ 1.0× nginx least_conn".into(),
            measured: format!(
                "{times:.2}× ({:.0} vs {:.0} requests/s)",
                router.max.throughput, nginx.max.throughput
            ),
            met: times >= 1.0,
        });
        // On two cores the load generator can saturate before either proxy does, and then the
        // throughput ratio says little: requests per CPU-second is what one core would carry.
        if let (Some(router_cpu), Some(nginx_cpu)) = (router.cpu_per_request, nginx.cpu_per_request)
        {
            let per_core = nginx_cpu.as_secs_f64() / router_cpu.as_secs_f64().max(1e-9);
            goals.push(Goal {
                goal: "small requests: router requests per CPU-second ≥ 1.0× nginx least_conn"
                    .into(),
                measured: format!(
                    "{per_core:.2}× ({:.1} vs {:.1} µs of CPU per request)",
                    router_cpu.as_secs_f64() * 1e6,
                    nginx_cpu.as_secs_f64() * 1e6
                ),
                met: per_core >= 1.0,
            });
        }
    }
    // Added latency means something below saturation: at the open-loop rates both ran.
    let added = router
        .rates
        .iter()
        .filter_map(|(rate, summary)| {
            let (_, direct) = direct.rates.iter().find(|(r, _)| r == rate)?;
            Some((
                *rate,
                summary.latency.p99.saturating_sub(direct.latency.p99),
            ))
        })
        .max_by_key(|(_, added)| *added);
    if let Some((rate, added)) = added {
        goals.push(Goal {
            goal: "small requests: p99 added over direct ≤ 1 ms".into(),
            measured: format!("at most {} (at {rate:.0} requests/s)", ms(added)),
            met: added <= Duration::from_millis(1),
        });
    }
    goals
}

async fn measure(context: &Context, peer: RunningPeer, rates: &[f64]) -> Measured {
    let kind = peer.kind;
    let api = kind.api();
    let slow = kind == PeerKind::Litellm;
    let spec = |arrivals, duration| LoadSpec {
        base_url: peer.url.clone(),
        arrivals,
        duration,
        ramp: Duration::ZERO,
        request_timeout: Duration::from_secs(10),
        stall_after: Duration::from_secs(5),
        max_in_flight: 4_096,
        bearer: peer.bearer.clone(),
    };
    let request = move |_| small_chat(api, MODEL);
    // Warm-up: connections, caches, the nodes' model load.
    load::run(
        &spec(Arrivals::Closed { connections: 4 }, Duration::from_secs(1)),
        request,
    )
    .await;

    let connections = if slow {
        SLOW_PEER_CONNECTIONS
    } else {
        CONNECTIONS
    };
    let cpu_before = peer.cpu_seconds();
    let max = load::run(
        &spec(
            Arrivals::Closed { connections },
            context.period(if slow { 3 } else { 5 }, 2),
        ),
        request,
    )
    .await
    .summary();
    let cpu_per_request = match (cpu_before, peer.cpu_seconds()) {
        (Some(before), Some(after)) if max.ok > 0 => {
            Some(Duration::from_secs_f64((after - before) / max.ok as f64))
        }
        _ => None,
    };
    let rss_kib = peer.rss_kib();

    let mut steps = Vec::new();
    for &rate in rates {
        // An open-loop rate far above what the system does only measures its queue.
        if slow || rate > max.throughput * 1.5 {
            continue;
        }
        let summary = load::run(
            &spec(Arrivals::Open { per_second: rate }, context.period(4, 2)),
            request,
        )
        .await
        .summary();
        steps.push((rate, summary));
    }
    let config = peer.config.clone();
    peer.stop().await;
    Measured {
        kind,
        api,
        max,
        rates: steps,
        cpu_per_request,
        rss_kib,
        config,
    }
}

fn section(measured: &[Measured], skipped: &[String], rates: &[f64]) -> Section {
    let find = |kind| measured.iter().find(|m| m.kind == kind);
    let nginx = find(PeerKind::Nginx).map_or(0.0, |m| m.max.throughput);
    let direct = find(PeerKind::Direct);
    let mut table = Table {
        columns: [
            "system",
            "API",
            "requests/s (32 conn.)",
            "× nginx",
            "× direct",
            "p50",
            "p99",
            "p99 added over direct",
            "failed",
            "CPU per request",
            "RSS",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    for m in measured {
        let added = direct.map_or("—".to_owned(), |d| {
            ms(m.max.latency.p99.saturating_sub(d.max.latency.p99))
        });
        table.rows.push(vec![
            m.kind.to_string(),
            api_name(m.api).to_owned(),
            format!("{:.0}", m.max.throughput),
            ratio(m.max.throughput, nginx),
            ratio(m.max.throughput, direct.map_or(0.0, |d| d.max.throughput)),
            ms(m.max.latency.p50),
            ms(m.max.latency.p99),
            added,
            (m.max.failed + m.max.dropped).to_string(),
            m.cpu_per_request.map_or("—".to_owned(), |d| {
                format!("{:.1} µs", d.as_secs_f64() * 1e6)
            }),
            m.rss_kib
                .map_or("—".to_owned(), |k| format!("{:.1} MB", k as f64 / 1024.0)),
        ]);
    }
    let mut rate_table = Table {
        columns: std::iter::once("system".to_owned())
            .chain(rates.iter().map(|r| format!("p50 / p99 at {r:.0}/s")))
            .collect(),
        rows: Vec::new(),
    };
    for m in measured.iter().filter(|m| !m.rates.is_empty()) {
        let mut row = vec![m.kind.to_string()];
        for rate in rates {
            row.push(
                m.rates
                    .iter()
                    .find(|(r, _)| r == rate)
                    .map_or("—".to_owned(), |(_, s)| {
                        format!("{} / {}", ms(s.latency.p50), ms(s.latency.p99))
                    }),
            );
        }
        rate_table.rows.push(row);
    }
    let charts = vec![
        Chart::Bars {
            title: "Small requests per second, one worker each (32 connections)".into(),
            file_stem: "overhead-throughput".into(),
            y_label: "requests/s".into(),
            bars: measured
                .iter()
                .map(|m| (m.kind.to_string(), m.max.throughput))
                .collect(),
        },
        Chart::Lines {
            title: "p99 latency at fixed open-loop rates".into(),
            file_stem: "overhead-p99-vs-rate".into(),
            x_label: "offered requests/s".into(),
            y_label: "p99 latency (ms)".into(),
            series: measured
                .iter()
                .filter(|m| !m.rates.is_empty())
                .map(|m| {
                    let points = m
                        .rates
                        .iter()
                        .map(|(r, s)| (*r, s.latency.p99.as_secs_f64() * 1e3))
                        .collect();
                    (m.kind.to_string(), points)
                })
                .collect(),
        },
    ];
    let mut text = String::from(
        "Three simulated nodes that answer at once; a one-token `/api/chat` (or \
         `/v1/chat/completions` for systems without Ollama's native API) per request. \
         Each system runs one worker on its own core; latency is measured by the load \
         generator on the other core, from the intended send time.\n",
    );
    for s in skipped {
        text.push_str(&format!("\n- **Skipped** {s}"));
    }
    text.push_str(&configurations(
        measured
            .iter()
            .map(|m| (m.kind.to_string(), m.config.as_str())),
    ));
    Section {
        heading: HEADING.to_owned(),
        text,
        tables: vec![table, rate_table],
        charts,
    }
}

/// Each system's exact configuration, folded.
pub(super) fn configurations<'a>(configs: impl Iterator<Item = (String, &'a str)>) -> String {
    let mut text = String::from("\n\nConfigurations used:\n");
    for (name, config) in configs {
        text.push_str(&format!(
            "\n<details><summary>{name}</summary>\n\n```\n{}\n```\n</details>\n",
            config.trim_end()
        ));
    }
    text
}

/// How the API column names a peer's path.
pub(super) fn api_name(api: Api) -> &'static str {
    match api {
        Api::Native => "/api/chat",
        Api::OpenAiOnly => "/v1/chat/completions",
    }
}
