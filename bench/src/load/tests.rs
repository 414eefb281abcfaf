//! The load generator against scripted loopback servers with known delays: its numbers must be
//! what the server did, never less.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::channel::Channel;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::*;

/// How the scripted server answers one request.
struct Reply {
    status: u16,
    /// Before the response headers.
    head_delay: Duration,
    /// Body chunks, each at its offset from when the headers were sent.
    chunks: Vec<(Duration, &'static str)>,
}

/// A loopback HTTP/1.1 server answering every request with `reply(arrival time)`.
async fn server(reply: impl Fn(Instant) -> Reply + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // Like every server under test: no Nagle delay on the chunks after the headers.
            stream.set_nodelay(true).unwrap();
            let reply = reply.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let reply = reply(Instant::now());
                    async move {
                        tokio::time::sleep(reply.head_delay).await;
                        let (mut sender, body) = Channel::<Bytes, Infallible>::new(1);
                        let head = Instant::now();
                        tokio::spawn(async move {
                            for (offset, data) in reply.chunks {
                                tokio::time::sleep_until(head + offset).await;
                                if sender.send_data(Bytes::from(data)).await.is_err() {
                                    return;
                                }
                            }
                        });
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(reply.status)
                                .body(body)
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

fn spec(address: SocketAddr, arrivals: Arrivals, duration: Duration) -> LoadSpec {
    LoadSpec {
        base_url: format!("http://{address}"),
        arrivals,
        duration,
        ramp: Duration::ZERO,
        request_timeout: Duration::from_secs(5),
        stall_after: Duration::from_secs(1),
        max_in_flight: 1000,
        bearer: None,
    }
}

fn generate(stream: bool) -> impl FnMut(u64) -> RequestSpec + Send + 'static {
    move |seq| RequestSpec {
        method: http::Method::POST,
        path: "/api/generate".into(),
        body: Bytes::from_static(br#"{"model":"m","prompt":"hi"}"#),
        stream,
        label: format!("request {seq}"),
    }
}

/// Sends exactly one request, on one connection: the run must last less than the request.
async fn one(spec: LoadSpec) -> Outcome {
    let mut result = run(&spec, generate(true)).await;
    assert_eq!(result.outcomes.len(), 1, "{:?}", result.outcomes);
    result.outcomes.remove(0)
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// `value` is at least `known` (the server's delay) and at most `slack` more.
#[track_caller]
fn assert_near(what: &str, value: Duration, known: Duration, slack: Duration) {
    assert!(
        value >= known && value <= known + slack,
        "{what} is {value:?}, expected {known:?} (+{slack:?} at most)"
    );
}

const NDJSON_CHUNKS: [&str; 5] = [
    "{\"response\":\"a\",\"done\":false}\n",
    "{\"response\":\"b\",\"done\":false}\n",
    "{\"response\":\"c\",\"done\":false}\n",
    "{\"response\":\"d\",\"done\":false}\n",
    "{\"response\":\"\",\"done\":true}\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_headers_first_chunk_gaps_and_end_as_the_server_sent_them() {
    let address = server(|_| Reply {
        status: 200,
        head_delay: ms(20),
        chunks: (0..5)
            .map(|i| (ms(10 * i), NDJSON_CHUNKS[i as usize]))
            .collect(),
    })
    .await;
    let outcome = one(spec(address, Arrivals::Closed { connections: 1 }, ms(30))).await;

    assert!(outcome.ok(), "{outcome:?}");
    assert_eq!(outcome.status, Some(200));
    assert_eq!(outcome.chunks, 5);
    let total: usize = NDJSON_CHUNKS.iter().map(|chunk| chunk.len()).sum();
    assert_eq!(outcome.bytes, total as u64);
    assert_eq!(outcome.label, "request 0");
    assert!(outcome.scheduled_at < ms(30));
    assert_near("first_byte", outcome.first_byte.unwrap(), ms(20), ms(15));
    assert_near("latency", outcome.latency, ms(60), ms(15));
    // The gaps are 10 ms apart on the server's clock; a late first chunk can shorten one.
    assert!(
        outcome.max_gap >= ms(8) && outcome.max_gap <= ms(25),
        "max_gap {:?}",
        outcome.max_gap
    );
    assert!(!outcome.stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_over_stall_after_marks_the_stream_stalled() {
    let address = server(|_| Reply {
        status: 200,
        head_delay: Duration::ZERO,
        chunks: vec![
            (ms(0), NDJSON_CHUNKS[0]),
            (ms(10), NDJSON_CHUNKS[1]),
            (ms(210), NDJSON_CHUNKS[4]),
        ],
    })
    .await;
    let mut spec = spec(address, Arrivals::Closed { connections: 1 }, ms(100));
    spec.stall_after = ms(100);
    let outcome = one(spec).await;

    assert!(
        outcome.ok(),
        "a stalled stream that completes is still ok: {outcome:?}"
    );
    assert!(outcome.stalled);
    assert_near("max_gap", outcome.max_gap, ms(190), ms(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_line_in_a_stream_fails_the_request() {
    // The error object is split across two chunks, as a proxy may do.
    let address = server(|_| Reply {
        status: 200,
        head_delay: ms(20),
        chunks: vec![
            (ms(0), NDJSON_CHUNKS[0]),
            (ms(1), "{\"err"),
            (ms(2), "or\":\"model runner crashed\"}\n"),
        ],
    })
    .await;
    let outcome = one(spec(address, Arrivals::Closed { connections: 1 }, ms(10))).await;

    assert_eq!(outcome.status, Some(200));
    assert!(!outcome.ok());
    let error = outcome.error.unwrap();
    assert!(error.contains("model runner crashed"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_error_event_fails_the_request_and_error_in_text_does_not() {
    let address = server(|_| Reply {
        status: 200,
        head_delay: ms(20),
        chunks: vec![
            (
                ms(0),
                "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"error\\\"\"}}]}\n\n",
            ),
            (ms(1), "data: {\"error\":{\"message\":\"overloaded\"}}\n\n"),
        ],
    })
    .await;
    let outcome = one(spec(address, Arrivals::Closed { connections: 1 }, ms(10))).await;
    let error = outcome.error.unwrap();
    assert!(error.contains("overloaded"), "{error}");

    let address = server(|_| Reply {
        status: 200,
        head_delay: ms(20),
        chunks: vec![(ms(0), "{\"response\":\"\\\"error\\\"\",\"done\":true}")],
    })
    .await;
    let outcome = one(spec(address, Arrivals::Closed { connections: 1 }, ms(10))).await;
    assert!(outcome.ok(), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_2xx_status_fails_the_request() {
    let address = server(|_| Reply {
        status: 503,
        head_delay: ms(20),
        chunks: vec![(ms(0), "{\"error\":\"busy\"}")],
    })
    .await;
    let outcome = one(spec(address, Arrivals::Closed { connections: 1 }, ms(10))).await;
    assert_eq!(outcome.status, Some(503));
    assert!(!outcome.ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_counts_from_the_intended_send_time() {
    // The server answers at once, except that it freezes from 300 ms to 600 ms into the run:
    // every arrival scheduled during the freeze must be charged for the rest of it.
    let origin = Instant::now();
    let (freeze, thaw) = (origin + ms(300), origin + ms(600));
    let address = server(move |arrival| Reply {
        status: 200,
        head_delay: if arrival >= freeze && arrival < thaw {
            thaw - arrival
        } else {
            Duration::ZERO
        },
        chunks: vec![(ms(0), "{}")],
    })
    .await;
    let result = run(
        &spec(address, Arrivals::Open { per_second: 200.0 }, ms(1000)),
        generate(false),
    )
    .await;

    assert_eq!(result.dropped, 0);
    let run_offset = origin.elapsed() - result.elapsed; // the run started this much after origin
    let during: Vec<&Outcome> = result
        .outcomes
        .iter()
        .filter(|outcome| {
            let at = run_offset + outcome.scheduled_at;
            at >= ms(310) && at < ms(590)
        })
        .collect();
    assert!(
        during.len() >= 20,
        "{} arrivals during the freeze",
        during.len()
    );
    for outcome in during {
        let remaining = ms(600) - (run_offset + outcome.scheduled_at);
        assert!(outcome.ok(), "{outcome:?}");
        assert!(
            outcome.latency + ms(5) >= remaining,
            "scheduled {:?} into the run, {remaining:?} before the thaw, latency only {:?}",
            outcome.scheduled_at,
            outcome.latency
        );
    }
    // Before and well after the freeze, the server is fast: no latency left over.
    let calm: Vec<&Outcome> = result
        .outcomes
        .iter()
        .filter(|outcome| run_offset + outcome.scheduled_at < ms(250))
        .collect();
    assert!(!calm.is_empty());
    let calm_p50 = percentiles(calm.iter().map(|outcome| outcome.latency)).p50;
    assert!(calm_p50 < ms(50), "p50 before the freeze {calm_p50:?}");
    // Arrivals kept coming at the offered rate: about 200 in a second.
    let count = result.outcomes.len();
    assert!((120..=300).contains(&count), "{count} arrivals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_arrivals_over_max_in_flight_are_dropped_not_queued() {
    let address = server(|_| Reply {
        status: 200,
        head_delay: ms(300),
        chunks: vec![(ms(0), "{}")],
    })
    .await;
    let mut spec = spec(address, Arrivals::Open { per_second: 200.0 }, ms(500));
    spec.max_in_flight = 5;
    let requested = Arc::new(AtomicU64::new(0));
    let counter = requested.clone();
    let mut inner = generate(false);
    let result = run(&spec, move |seq| {
        counter.fetch_add(1, Ordering::Relaxed);
        inner(seq)
    })
    .await;

    // At most 5 at a time, each 300 ms, for 500 ms: two rounds.
    assert!(
        result.outcomes.len() <= 10,
        "{} sent",
        result.outcomes.len()
    );
    assert!(result.outcomes.iter().all(Outcome::ok));
    assert!(result.dropped >= 40, "{} dropped", result.dropped);
    assert_eq!(
        requested.load(Ordering::Relaxed),
        result.outcomes.len() as u64
    );
    assert_eq!(result.summary().dropped, result.dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_an_error_outcome() {
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let result = run(
        &spec(address, Arrivals::Closed { connections: 2 }, ms(50)),
        generate(false),
    )
    .await;

    assert!(!result.outcomes.is_empty());
    for outcome in &result.outcomes {
        assert!(!outcome.ok());
        assert_eq!(outcome.status, None);
        let error = outcome.error.as_deref().unwrap();
        assert!(error.contains("refused"), "{error}");
    }
    let summary = result.summary();
    assert_eq!(summary.ok, 0);
    assert_eq!(summary.failed, result.outcomes.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_stream_times_out_as_a_stalled_error() {
    let address = server(|_| Reply {
        status: 200,
        head_delay: Duration::ZERO,
        chunks: vec![(ms(0), NDJSON_CHUNKS[0]), (ms(3_600_000), NDJSON_CHUNKS[4])],
    })
    .await;
    let mut spec = spec(address, Arrivals::Closed { connections: 1 }, ms(100));
    spec.request_timeout = ms(200);
    spec.stall_after = ms(100);
    let started = std::time::Instant::now();
    let result = run(&spec, generate(true)).await;

    assert!(started.elapsed() < ms(1000), "{:?}", started.elapsed());
    assert_eq!(result.outcomes.len(), 1);
    let outcome = &result.outcomes[0];
    assert!(!outcome.ok());
    assert!(outcome.error.as_deref().unwrap().contains("timed out"));
    assert_eq!(outcome.status, Some(200));
    assert_eq!(outcome.chunks, 1);
    assert_near("latency", outcome.latency, ms(200), ms(50));
    assert!(outcome.stalled, "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_ramps_its_connections_and_stops_at_the_duration() {
    let address = server(|_| Reply {
        status: 200,
        head_delay: ms(10),
        chunks: vec![(ms(0), "{}")],
    })
    .await;
    let mut spec = spec(address, Arrivals::Closed { connections: 4 }, ms(300));
    spec.ramp = ms(200);
    let result = run(&spec, generate(false)).await;

    assert!(
        result.elapsed >= ms(300) && result.elapsed < ms(400),
        "{:?}",
        result.elapsed
    );
    assert!(result.outcomes.iter().all(Outcome::ok));
    // Worker i starts 50·i ms in: one worker alone at first, all four at the end.
    let between = |from: u64, to: u64| {
        let scheduled = result.outcomes.iter().map(|outcome| outcome.scheduled_at);
        scheduled
            .filter(|&at| at >= ms(from) && at < ms(to))
            .count()
    };
    assert!(
        between(0, 50) <= 6,
        "{} requests in the first 50 ms",
        between(0, 50)
    );
    assert!(
        between(200, 300) >= 20,
        "{} requests in the last 100 ms",
        between(200, 300)
    );
    assert_eq!(between(300, u64::MAX), 0);
}

#[test]
fn percentiles_of_known_values() {
    let values = (1..=1000).map(Duration::from_millis);
    let p = percentiles(values);
    assert_eq!(p.count, 1000);
    assert_eq!(p.mean, Duration::from_micros(500_500));
    assert_eq!(p.max, ms(1000));
    // Three significant digits: within 0.1%.
    for (value, expected) in [(p.p50, 500), (p.p90, 900), (p.p99, 990), (p.p999, 999)] {
        let expected = ms(expected);
        assert!(
            value >= expected && value <= expected.mul_f64(1.001),
            "{value:?} vs {expected:?}"
        );
    }
    assert_eq!(percentiles(Vec::new()), Percentiles::default());
    let one = percentiles([Duration::from_micros(1234)]);
    let exact = Duration::from_micros(1234);
    assert_eq!(
        (one.p50, one.p999, one.max, one.mean),
        (exact, exact, exact, exact)
    );
}

#[test]
fn summaries_count_successes_and_measure_only_them() {
    let outcome = |label: &str, latency: u64, status: Option<u16>, chunks: u32, gap: u64| Outcome {
        label: label.into(),
        scheduled_at: Duration::ZERO,
        latency: ms(latency),
        first_byte: status.map(|_| ms(latency / 2)),
        status,
        error: status.is_none().then(|| "refused".into()),
        chunks,
        max_gap: ms(gap),
        stalled: gap > 100,
        bytes: 10,
    };
    let result = LoadResult {
        outcomes: vec![
            outcome("a", 10, Some(200), 1, 0),
            outcome("a", 30, Some(200), 3, 150),
            outcome("b", 1000, Some(500), 1, 0),
            outcome("b", 1, None, 0, 0),
        ],
        elapsed: Duration::from_secs(2),
        dropped: 3,
    };
    let all = result.summary();
    assert_eq!((all.ok, all.failed, all.dropped, all.stalled), (2, 2, 3, 1));
    assert_eq!(all.throughput, 1.0);
    assert_eq!(all.latency.count, 2);
    assert_eq!(all.latency.max, ms(30));
    assert_eq!(all.first_byte.max, ms(15));
    assert_eq!(all.max_gap.count, 1, "only streams have gaps");
    assert_eq!(all.max_gap.max, ms(150));

    let b = result.summary_where(|outcome| outcome.label == "b");
    assert_eq!((b.ok, b.failed, b.latency.count), (0, 2, 0));

    let mut more_failures = result.clone();
    more_failures
        .outcomes
        .push(outcome("c", 1, Some(500), 1, 0));
    assert_eq!(
        more_failures.failure_reasons(),
        vec![("HTTP 500".to_owned(), 2), ("refused".to_owned(), 1)],
        "a status counts when the exchange completed; the client's error otherwise"
    );
}
