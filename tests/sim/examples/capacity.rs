//! Capacity benchmark: how much load one simulator process sustains at time scale 0.
//!
//! Two closed-loop phases against one node, each bounded in time:
//! 1. `--streams` connections each streaming `/api/generate` responses of `--stream-tokens`
//!    tokens back to back; `/sim/stats` is sampled meanwhile to show how many streams were in
//!    flight at once.
//! 2. `--connections` keep-alive connections each sending small non-streamed `/api/generate`
//!    requests back to back; reports requests/s and latency percentiles.
//!
//! ```text
//! cargo build --release -p ollama-mesh-sim --examples --bins
//! target/release/ollama-sim --listen 127.0.0.1:18000 --models tiny --time-scale 0 --num-parallel 8192 &
//! target/release/examples/capacity --url http://127.0.0.1:18000
//! ```
//!
//! Without `--url` the simulator runs in-process on the same runtime (simpler, but client and
//! server then share one scheduler, which understates both). The hyper client here costs about
//! as much CPU as the server; `wrk` (`apt-get install wrk`) with `bench/wrk-generate.lua`
//! measures the server's non-streamed rate with less client overhead:
//!
//! ```text
//! wrk -t1 -c64 -d5s --latency -s tests/sim/bench/wrk-generate.lua http://127.0.0.1:18000/api/generate
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use ollama_mesh_sim::{NodeSpec, Simulator};

#[derive(Debug, Parser)]
struct Args {
    /// Simulator to load (`http://HOST:PORT`); default: start one in-process.
    #[arg(long)]
    url: Option<String>,
    /// Model to request.
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Concurrent streaming connections in phase 1.
    #[arg(long, default_value_t = 5000)]
    streams: usize,
    /// Tokens per streamed response.
    #[arg(long, default_value_t = 50)]
    stream_tokens: u32,
    /// Connections in phase 2.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Tokens per non-streamed response.
    #[arg(long, default_value_t = 4)]
    request_tokens: u32,
    /// Duration of each phase, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

fn post(addr: SocketAddr, body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("/api/generate")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .expect("valid request")
}

/// Sends `req` and reads the whole response; returns the body's newline count.
async fn exchange(sender: &mut Sender, req: Request<Full<Bytes>>) -> Option<usize> {
    sender.ready().await.ok()?;
    let resp = sender.send_request(req).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut body = resp.into_body();
    let mut lines = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            lines += data.iter().filter(|b| **b == b'\n').count();
        }
    }
    Some(lines)
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    tokens: AtomicU64,
}

async fn in_flight(addr: SocketAddr) -> Option<u64> {
    let mut sender = connect(addr).await;
    let req = Request::get("/sim/stats")
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice::<serde_json::Value>(&body).ok()?["requests_in_flight"].as_u64()
}

async fn streams_phase(addr: SocketAddr, args: &Args) {
    let body = Bytes::from(format!(
        r#"{{"model":"{}","prompt":"tell me a story","options":{{"num_predict":{}}}}}"#,
        args.model, args.stream_tokens
    ));
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.streams {
        let (body, counters) = (body.clone(), Arc::clone(&counters));
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            while Instant::now() < deadline {
                match exchange(&mut sender, post(addr, &body)).await {
                    Some(lines) => {
                        counters.ok.fetch_add(1, Ordering::Relaxed);
                        counters
                            .tokens
                            .fetch_add(lines.saturating_sub(1) as u64, Ordering::Relaxed);
                    }
                    None => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        sender = connect(addr).await;
                    }
                }
            }
        }));
    }
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(n) = in_flight(addr).await {
            samples.push(n);
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let steady = &samples[samples.len().min(2)..];
    let mean = steady.iter().sum::<u64>() as f64 / steady.len().max(1) as f64;
    println!(
        "streams: {} connections, {} streams of {} tokens completed ({} failed) in {secs:.1} s: {:.0} streams/s, {:.0} tokens/s; in flight: mean {mean:.0}, max {}",
        args.streams,
        counters.ok.load(Ordering::Relaxed),
        args.stream_tokens,
        counters.failed.load(Ordering::Relaxed),
        counters.ok.load(Ordering::Relaxed) as f64 / secs,
        counters.tokens.load(Ordering::Relaxed) as f64 / secs,
        samples.iter().max().copied().unwrap_or(0),
    );
}

async fn requests_phase(addr: SocketAddr, args: &Args) {
    let body = Bytes::from(format!(
        r#"{{"model":"{}","prompt":"hi","stream":false,"options":{{"num_predict":{}}}}}"#,
        args.model, args.request_tokens
    ));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            let (mut latencies, mut failed) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let sent = Instant::now();
                match exchange(&mut sender, post(addr, &body)).await {
                    Some(_) => latencies.push(sent.elapsed().as_micros() as u32),
                    None => {
                        failed += 1;
                        sender = connect(addr).await;
                    }
                }
            }
            (latencies, failed)
        }));
    }
    let (mut all, mut failed) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((l, f)) = t.await {
            all.extend(l);
            failed += f;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "requests: {} connections, {} non-streamed requests ({failed} failed) in {secs:.1} s: {:.0} requests/s; latency p50 {} µs, p99 {} µs",
        args.connections,
        all.len(),
        all.len() as f64 / secs,
        pct(0.5),
        pct(0.99),
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let addr: SocketAddr = match &args.url {
        Some(url) => url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("--url http://IP:PORT"),
        None => {
            let spec = NodeSpec::default()
                .models([args.model.as_str()])
                .time_scale(0.0)
                .num_parallel(args.streams.max(1));
            let sim = Simulator::new(spec.build().expect("valid config"));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("bound");
            tokio::spawn(async move { sim.serve(listener, std::future::pending()).await });
            addr
        }
    };
    // Load the model first so both phases measure steady state.
    let mut sender = connect(addr).await;
    let preload = Bytes::from(format!(r#"{{"model":"{}"}}"#, args.model));
    exchange(&mut sender, post(addr, &preload))
        .await
        .expect("preload");
    streams_phase(addr, &args).await;
    requests_phase(addr, &args).await;
}
