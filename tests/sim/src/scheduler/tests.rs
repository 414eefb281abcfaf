//! Scheduler rules on tokio's paused clock (time scale 1: simulated time is tokio time).

use super::*;
use crate::catalogue;
use crate::config::NodeSpec;

fn scheduler(spec: NodeSpec) -> (Scheduler, Arc<Stats>) {
    let cfg = spec.build().unwrap();
    let stats = Arc::new(Stats::default());
    (
        Scheduler::new(cfg.scheduler, Clock::new(1.0), Arc::clone(&stats)),
        stats,
    )
}

fn request(model: &str) -> ModelRequest {
    ModelRequest {
        model: model.to_owned(),
        spec: Arc::new(catalogue::lookup(model)),
        num_ctx: Some(2048),
        keep_alive: None,
    }
}

fn with_keep_alive(model: &str, secs: u64) -> ModelRequest {
    ModelRequest {
        keep_alive: Some(KeepAlive::For(Duration::from_secs(secs))),
        ..request(model)
    }
}

/// Tokio's timer rounds each sleep up to the next millisecond.
fn assert_about(actual: Duration, expected: Duration) {
    let diff = actual.abs_diff(expected);
    assert!(
        diff <= Duration::from_millis(3),
        "{actual:?} is not about {expected:?}"
    );
}

fn loaded(s: &Scheduler) -> Vec<String> {
    let mut names: Vec<String> = s
        .snapshot()
        .runners
        .iter()
        .map(|r| r.runner.model.clone())
        .collect();
    names.sort();
    names
}

#[tokio::test(start_paused = true)]
async fn load_takes_size_over_disk_speed_and_warm_requests_are_instant() {
    let (s, stats) = scheduler(NodeSpec::default());
    let start = Instant::now();
    let lease = s.acquire(request("llama3.1:8b")).await.unwrap();
    // 800 ms start-up + 4.92 GB at 2 GB/s.
    assert_about(start.elapsed(), Duration::from_millis(800 + 2460));
    assert_about(lease.load_duration(), Duration::from_millis(3260));
    drop(lease);
    let start = Instant::now();
    let warm = s.acquire(request("llama3.1:8b")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(warm.load_duration() < Duration::from_millis(2));
    assert_eq!(stats.model("llama3.1:8b").loads.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn full_pending_queue_answers_503_but_loaded_models_never_do() {
    let (s, stats) = scheduler(NodeSpec::default().max_queue(2));
    let warm = s.acquire(request("llama3.2:1b")).await.unwrap();
    let loading = tokio::spawn({
        let s = s.clone();
        async move { s.acquire(request("qwen2.5:7b")).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut queued = Vec::new();
    for model in ["mistral:7b", "gemma2:9b"] {
        let s = s.clone();
        queued.push(tokio::spawn(async move {
            s.acquire(request(model)).await.map(drop)
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.snapshot().pending, 2);
    assert_eq!(
        s.acquire(request("llama3.2:3b")).await.unwrap_err(),
        SchedError::QueueFull
    );
    assert_eq!(stats.rejected_total.load(Ordering::Relaxed), 1);
    // A loaded model takes the fast path even while the queue is full.
    let more: Vec<Lease> = acquire_n(&s, "llama3.2:1b", 10).await;
    assert_eq!(more.len(), 10);
    drop((warm, more));
    loading.await.unwrap().unwrap();
    for q in queued {
        q.await.unwrap().unwrap();
    }
    assert_eq!(s.snapshot().pending, 0);
}

async fn acquire_n(s: &Scheduler, model: &str, n: usize) -> Vec<Lease> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(s.acquire(request(model)).await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn models_load_one_at_a_time() {
    let (s, _) = scheduler(NodeSpec::default());
    let start = Instant::now();
    let (a, b) = tokio::join!(
        s.acquire(request("llama3.2:1b")),
        s.acquire(request("llama3.2:3b"))
    );
    let one = timing::load_time(
        catalogue::lookup("llama3.2:1b").size_bytes,
        2_000_000_000,
        Duration::from_millis(800),
    );
    let two = timing::load_time(
        catalogue::lookup("llama3.2:3b").size_bytes,
        2_000_000_000,
        Duration::from_millis(800),
    );
    assert_about(start.elapsed(), one + two);
    assert!(a.unwrap().load_duration() < b.unwrap().load_duration());
}

#[tokio::test(start_paused = true)]
async fn eviction_takes_the_idle_runner_with_the_shortest_keep_alive_not_the_lru() {
    let (s, stats) = scheduler(NodeSpec::default().max_loaded_models(2));
    drop(
        s.acquire(with_keep_alive("llama3.2:1b", 600))
            .await
            .unwrap(),
    );
    drop(s.acquire(with_keep_alive("llama3.2:3b", 60)).await.unwrap());
    // Make llama3.2:1b the least recently used: the rule must still pick llama3.2:3b.
    drop(s.acquire(with_keep_alive("llama3.2:3b", 60)).await.unwrap());
    drop(s.acquire(request("qwen2.5:7b")).await.unwrap());
    assert_eq!(loaded(&s), ["llama3.2:1b", "qwen2.5:7b"]);
    assert_eq!(
        stats.model("llama3.2:3b").evictions.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_victim_is_drained_before_the_new_model_loads() {
    let (s, _) = scheduler(NodeSpec::default().max_loaded_models(1));
    let busy = s.acquire(request("llama3.2:1b")).await.unwrap();
    let next = tokio::spawn({
        let s = s.clone();
        async move { s.acquire(request("llama3.2:3b")).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!next.is_finished(), "waits for the in-flight request");
    assert_eq!(loaded(&s), ["llama3.2:1b"]);
    // A draining runner takes no new requests: they queue behind the load.
    drop(busy);
    let lease = next.await.unwrap();
    assert_eq!(lease.runner().model, "llama3.2:3b");
    assert_eq!(loaded(&s), ["llama3.2:3b"]);
}

#[tokio::test(start_paused = true)]
async fn models_that_do_not_fit_evict_even_below_max_loaded() {
    let (s, stats) = scheduler(NodeSpec::default());
    // 14b at 32k context takes ~15 GiB of 24 GiB; a second 14b does not fit in 80% of the rest.
    let big = |m: &str| ModelRequest {
        num_ctx: Some(32_768),
        ..request(m)
    };
    drop(s.acquire(big("qwen2.5:14b")).await.unwrap());
    drop(s.acquire(big("deepseek-r1:14b")).await.unwrap());
    assert_eq!(loaded(&s), ["deepseek-r1:14b"]);
    assert_eq!(
        stats.model("qwen2.5:14b").evictions.load(Ordering::Relaxed),
        1
    );
    let snapshot = s.snapshot();
    assert_eq!(snapshot.vram_used, snapshot.runners[0].runner.size_vram);
}

#[tokio::test(start_paused = true)]
async fn the_first_model_may_be_split_between_gpu_and_cpu() {
    let (s, _) = scheduler(NodeSpec::default());
    let lease = s.acquire(request("llama3.3:70b")).await.unwrap();
    let r = lease.runner();
    assert!(r.size_vram < r.size);
    assert!(r.speed.decode_tps < r.spec.decode_tps / 2.0);
}

#[tokio::test(start_paused = true)]
async fn keep_alive_expires_after_idle_time() {
    let (s, _) = scheduler(NodeSpec::default());
    drop(s.acquire(with_keep_alive("llama3.2:1b", 30)).await.unwrap());
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(loaded(&s), ["llama3.2:1b"]);
    // A request in between restarts the timer when it finishes.
    drop(s.acquire(with_keep_alive("llama3.2:1b", 30)).await.unwrap());
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(loaded(&s), ["llama3.2:1b"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(loaded(&s).is_empty());
}

#[tokio::test(start_paused = true)]
async fn default_keep_alive_is_five_minutes_and_negative_is_forever() {
    let (s, _) = scheduler(NodeSpec::default());
    drop(s.acquire(request("llama3.2:1b")).await.unwrap());
    let forever = ModelRequest {
        keep_alive: Some(KeepAlive::Forever),
        ..request("llama3.2:3b")
    };
    drop(s.acquire(forever).await.unwrap());
    // llama3.2:1b went idle when llama3.2:3b started loading (about 1.8 s ago).
    tokio::time::sleep(Duration::from_secs(297)).await;
    assert_eq!(loaded(&s), ["llama3.2:1b", "llama3.2:3b"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(loaded(&s), ["llama3.2:3b"]);
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    assert_eq!(loaded(&s), ["llama3.2:3b"]);
    let ps = s.snapshot();
    assert!(ps.runners[0].expires_at > SystemTime::now() + Duration::from_secs(200 * 365 * 86_400));
}

#[tokio::test(start_paused = true)]
async fn keep_alive_zero_unloads_when_the_last_request_finishes() {
    let (s, _) = scheduler(NodeSpec::default());
    let a = s.acquire(request("llama3.2:1b")).await.unwrap();
    // The last request handed the runner sets its keep-alive: 0 here.
    let b = s.acquire(with_keep_alive("llama3.2:1b", 0)).await.unwrap();
    drop(b);
    assert_eq!(loaded(&s), ["llama3.2:1b"], "still in use");
    drop(a);
    assert!(loaded(&s).is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_unload_request_expires_an_idle_model_at_once_and_a_busy_one_when_done() {
    let (s, _) = scheduler(NodeSpec::default());
    drop(s.acquire(request("llama3.2:1b")).await.unwrap());
    s.expire("llama3.2:1b");
    assert!(loaded(&s).is_empty());
    let busy = s.acquire(request("llama3.2:1b")).await.unwrap();
    s.expire("llama3.2:1b");
    assert_eq!(loaded(&s), ["llama3.2:1b"]);
    drop(busy);
    assert!(loaded(&s).is_empty());
}

#[tokio::test(start_paused = true)]
async fn changed_num_ctx_forces_a_reload() {
    let (s, stats) = scheduler(NodeSpec::default());
    drop(s.acquire(request("llama3.2:1b")).await.unwrap());
    let bigger = ModelRequest {
        num_ctx: Some(8192),
        ..request("llama3.2:1b")
    };
    let start = Instant::now();
    let lease = s.acquire(bigger).await.unwrap();
    assert_eq!(lease.runner().num_ctx, 8192);
    assert!(
        start.elapsed() > Duration::from_secs(1),
        "a full load, not a handoff"
    );
    let counters = stats.model("llama3.2:1b");
    assert_eq!(counters.reloads.load(Ordering::Relaxed), 1);
    assert_eq!(counters.loads.load(Ordering::Relaxed), 2);
    assert_eq!(loaded(&s), ["llama3.2:1b"]);
}

#[tokio::test(start_paused = true)]
async fn a_client_leaving_during_its_load_still_leaves_the_model_loaded() {
    let (s, _) = scheduler(NodeSpec::default());
    let gone = tokio::time::timeout(
        Duration::from_millis(100),
        s.acquire(request("llama3.2:1b")),
    )
    .await;
    assert!(gone.is_err());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(loaded(&s), ["llama3.2:1b"]);
    assert_eq!(s.snapshot().runners[0].refs, 0);
}

#[tokio::test(start_paused = true)]
async fn embedding_models_get_one_slot() {
    let (s, _) = scheduler(NodeSpec::default().num_parallel(4));
    let embed = s.acquire(request("nomic-embed-text:latest")).await.unwrap();
    let chat = s.acquire(request("llama3.2:1b")).await.unwrap();
    assert_eq!(embed.runner().slots.capacity(), 1);
    assert_eq!(chat.runner().slots.capacity(), 4);
}
