//! Workload 2, streams: N concurrent long NDJSON streams (1 000, 5 000, 10 000) held open
//! through each system that speaks Ollama's streaming API, at a steady two tokens a second each.
//! Reported: time to first token and the longest gap between chunks (each over direct), streams
//! that stalled (a gap over five seconds) or failed, and the system's memory per stream.

use std::time::Duration;

use crate::load::{self, Arrivals, LoadSpec, Summary};
use crate::peers::{self, Api, PeerError, PeerKind, PeerSetup};
use crate::report::{ms, Chart, Section, Table};

use super::fleets::streaming_node;
use super::overhead::configurations;
use super::sims::SimFleet;
use super::workloads::long_stream;
use super::{failed_section, failure_note, Context, Findings, Goal};

const HEADING: &str = "2. Streams: concurrent long NDJSON streams";
const MODEL: &str = "llama3.2:3b";
const TOKENS_PER_SECOND: f64 = 2.0;
const STALL_AFTER: Duration = Duration::from_secs(5);

struct Measured {
    kind: PeerKind,
    streams: usize,
    summary: Summary,
    rss_idle_kib: Option<u64>,
    rss_kib: Option<u64>,
    /// Why its failed requests failed (see [`failure_note`]).
    failures: String,
}

/// Runs the workload on every peer with Ollama's native API.
pub async fn run(context: &Context) -> Findings {
    // Each proxied stream takes two sockets in the proxy, and this machine's hard limit on open
    // files is 20 000 per process: just under 10 000 streams is as far as any proxy can go.
    let most = peers::max_client_connections().min(10_000);
    let counts: Vec<usize> = context.pick(vec![1_000, 5_000, most], vec![1_000]);
    let slots = counts.iter().max().copied().unwrap_or(1);
    let nodes: Vec<(String, String)> = (1..=3)
        .map(|i| {
            let name = format!("stream-{i}");
            let config = streaming_node(&name, MODEL, TOKENS_PER_SECOND, slots);
            (name, config)
        })
        .collect();
    let fleet = match SimFleet::start(context, &nodes).await {
        Ok(fleet) => fleet,
        Err(error) => return failed_section(HEADING, error),
    };
    if let Err(error) = load::raise_open_files_limit() {
        return failed_section(
            HEADING,
            format!("cannot raise the open-files limit: {error}"),
        );
    }
    let ramp = context.period(5, 3);
    let hold = context.period(10, 5);
    // Each stream lasts the ramp and the hold, then ends on its own.
    let tokens = ((ramp + hold).as_secs_f64() * TOKENS_PER_SECOND).ceil() as u32 + 2;
    let mut measured = Vec::new();
    let mut skipped = Vec::new();
    let mut configs = Vec::new();
    for kind in PeerKind::ALL
        .into_iter()
        .filter(|k| k.is_proxy() && k.api() == Api::Native)
    {
        for &streams in &counts {
            let setup = PeerSetup {
                backends: fleet.addrs(),
                workers: 1,
                cpus: context.cores.system.clone(),
                work_dir: context.work_dir.join(format!("streams-{kind:?}-{streams}")),
                model: MODEL.to_owned(),
                router_bin: context.bins.router.clone(),
                bench_bin: context.bins.bench.clone(),
                time_scale: 1.0,
                slots: vec![u32::try_from(slots).unwrap_or(u32::MAX); fleet.addrs().len()],
                policy: None,
                placement: Vec::new(),
            };
            let peer = match peers::start(kind, &setup).await {
                Ok(peer) => peer,
                Err(PeerError::Unavailable(reason)) => {
                    skipped.push(format!("{kind}: {reason}"));
                    break;
                }
                Err(error) => {
                    skipped.push(format!("{kind} at {streams} streams: {error}"));
                    continue;
                }
            };
            if streams == counts[0] {
                configs.push((kind.to_string(), peer.config.clone()));
            }
            let rss_idle_kib = peer.rss_kib();
            let spec = LoadSpec {
                base_url: peer.url.clone(),
                arrivals: Arrivals::Closed {
                    connections: streams,
                },
                duration: ramp + hold,
                ramp,
                request_timeout: ramp + hold + Duration::from_secs(30),
                stall_after: STALL_AFTER,
                max_in_flight: streams,
                bearer: None,
            };
            // Memory is read at the plateau: every stream open, none finished.
            let sample_at = ramp + hold / 2;
            let (result, rss_kib) = tokio::join!(
                load::run(&spec, move |_| long_stream(MODEL, tokens)),
                async {
                    tokio::time::sleep(sample_at).await;
                    peer.rss_kib()
                }
            );
            // Only the streams of the plateau count: a closed loop starts new ones as the
            // first end, and those are cut short by the end of the run.
            let summary = result.summary_where(|o| o.scheduled_at <= ramp);
            measured.push(Measured {
                kind,
                streams,
                summary,
                rss_idle_kib,
                rss_kib,
                failures: failure_note(&format!("{kind}, {streams} streams"), &result),
            });
            peer.stop().await;
        }
    }
    Findings {
        goals: goals(&measured),
        section: section(&measured, &skipped, &configs, &counts),
    }
}

/// 10 000 streams through one router: none stalled, RSS at most 256 MB.
fn goals(measured: &[Measured]) -> Vec<Goal> {
    let Some(router) = measured
        .iter()
        .filter(|m| m.kind == PeerKind::Router)
        .max_by_key(|m| m.streams)
    else {
        return Vec::new();
    };
    let rss_mb = router.rss_kib.map_or(f64::NAN, |k| k as f64 / 1024.0);
    let broken = router.summary.stalled + router.summary.failed + router.summary.dropped;
    vec![Goal {
        goal: "10 000 concurrent NDJSON streams through one router: none stalled, RSS ≤ 256 MB"
            .into(),
        measured: format!(
            "{} streams (the most this machine's open-files limit allows): {} stalled, {} \
             failed, RSS {rss_mb:.0} MB",
            router.streams,
            router.summary.stalled,
            router.summary.failed + router.summary.dropped
        ),
        met: router.streams >= peers::max_client_connections().min(10_000)
            && broken == 0
            && rss_mb <= 256.0,
    }]
}

fn section(
    measured: &[Measured],
    skipped: &[String],
    configs: &[(String, String)],
    counts: &[usize],
) -> Section {
    let direct = |streams| {
        measured
            .iter()
            .find(|m| m.kind == PeerKind::Direct && m.streams == streams)
    };
    let mut table = Table {
        columns: [
            "system",
            "streams",
            "completed",
            "failed",
            "stalled (gap > 5 s)",
            "TTFT p50 / p99",
            "TTFT p99 added",
            "longest gap p99",
            "gap p99 added",
            "RSS at plateau",
            "RSS per stream",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    for m in measured {
        let base = direct(m.streams);
        let added = |pick: fn(&Summary) -> Duration| {
            base.map_or("—".to_owned(), |d| {
                ms(pick(&m.summary).saturating_sub(pick(&d.summary)))
            })
        };
        let per_stream = match (m.rss_kib, m.rss_idle_kib) {
            (Some(at), Some(idle)) => format!(
                "{:.1} KB",
                at.saturating_sub(idle) as f64 / m.streams as f64
            ),
            _ => "—".to_owned(),
        };
        table.rows.push(vec![
            m.kind.to_string(),
            m.streams.to_string(),
            m.summary.ok.to_string(),
            (m.summary.failed + m.summary.dropped).to_string(),
            m.summary.stalled.to_string(),
            format!(
                "{} / {}",
                ms(m.summary.first_byte.p50),
                ms(m.summary.first_byte.p99)
            ),
            added(|s| s.first_byte.p99),
            ms(m.summary.max_gap.p99),
            added(|s| s.max_gap.p99),
            m.rss_kib
                .map_or("—".to_owned(), |k| format!("{:.1} MB", k as f64 / 1024.0)),
            per_stream,
        ]);
    }
    let largest = counts.iter().max().copied().unwrap_or(0);
    let charts = vec![Chart::Bars {
        title: format!("System memory with {largest} open streams"),
        file_stem: "streams-rss".into(),
        y_label: "RSS (MB)".into(),
        bars: measured
            .iter()
            .filter(|m| m.streams == largest && m.kind != PeerKind::Direct)
            .filter_map(|m| Some((m.kind.to_string(), m.rss_kib? as f64 / 1024.0)))
            .collect(),
    }];
    let mut text = format!(
        "Three simulated nodes stream {TOKENS_PER_SECOND} tokens a second to every stream \
         (`/api/generate`, NDJSON); the load generator opens the streams evenly over the ramp \
         and holds them. Systems without Ollama's native streaming API (SMG, LiteLLM) are not \
         in this workload. `Direct` is one node alone.\n"
    );
    for s in skipped {
        text.push_str(&format!("\n- **Skipped** {s}"));
    }
    for m in measured {
        text.push_str(&m.failures);
    }
    text.push_str(&configurations(
        configs
            .iter()
            .map(|(name, config)| (name.clone(), config.as_str())),
    ));
    Section {
        heading: HEADING.to_owned(),
        text,
        tables: vec![table],
        charts,
    }
}
