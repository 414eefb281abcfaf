//! The simulator's own endpoints under `/sim/`: ground-truth stats, fault control, an abrupt
//! exit, and the fake nvidia-smi report.
//!
//! - `GET /sim/stats` — see [`stats`].
//! - `GET /sim/faults` — the current faults (every field).
//! - `POST /sim/faults` — change the named faults (a [`FaultSpec`] with optional fields); answers
//!   the resulting faults.
//! - `DELETE /sim/faults` — turn every fault off; answers the resulting faults.
//! - `POST /sim/exit` — answer 200, then die abruptly (the binary exits with status 137).
//! - `GET /sim/nvidia-smi` — the `nvidia-smi` CSV report (text/plain).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::body::{self, content_type, Response};
use super::error::{ApiError, Flavor};
use super::request;
use crate::app::App;
use crate::faults::FaultSpec;
use crate::gpu;

/// The JSON of `GET /sim/stats`.
pub fn stats_json(app: &App) -> Value {
    let totals = app.stats.totals();
    let snapshot = app.scheduler.snapshot();
    let mut models: Map<String, Value> = app
        .stats
        .models()
        .into_iter()
        .map(|(name, counters)| {
            let mut entry = json!(counters);
            entry["loaded"] = json!(false);
            (name, entry)
        })
        .collect();
    let (mut busy, mut total, mut waiting) = (0, 0, 0);
    for info in &snapshot.runners {
        let r = &info.runner;
        let entry = models.entry(r.model.clone()).or_insert_with(|| json!({}));
        entry["loaded"] = json!(true);
        entry["slots_busy"] = json!(r.slots.busy());
        entry["slots_total"] = json!(r.slots.capacity());
        entry["slot_waiters"] = json!(r.slots.waiting());
        entry["num_ctx"] = json!(r.num_ctx);
        entry["active_requests"] = json!(info.refs);
        entry["size_vram"] = json!(r.size_vram);
        busy += r.slots.busy();
        total += r.slots.capacity();
        waiting += r.slots.waiting();
    }
    let m = totals.models;
    json!({
        "node_name": app.config.node_name,
        "time_scale": app.config.time_scale,
        "requests_total": totals.requests_total,
        "requests_in_flight": totals.requests_in_flight,
        "rejected_total": totals.rejected_total,
        "faulted_total": totals.faulted_total,
        "prompt_tokens": m.prompt_tokens,
        "cached_prompt_tokens": m.cached_prompt_tokens,
        "generated_tokens": m.generated_tokens,
        "cache_hits": m.cache_hits,
        "loads": m.loads,
        "unloads": m.unloads,
        "evictions": m.evictions,
        "reloads": m.reloads,
        "queue_depth": snapshot.pending,
        "loading": snapshot.loading,
        "slots_busy": busy,
        "slots_total": total,
        "slot_waiters": waiting,
        "vram_total_bytes": app.config.scheduler.vram_total,
        "vram_used_bytes": snapshot.vram_used,
        "models": models,
    })
}

/// `GET /sim/stats`.
pub fn stats(app: &App) -> Response {
    body::json(StatusCode::OK, content_type::JSON, &stats_json(app))
}

/// `GET /sim/faults`.
pub fn faults(app: &App) -> Response {
    body::json(StatusCode::OK, content_type::JSON, &app.faults.snapshot())
}

/// `POST /sim/faults`.
pub async fn set_faults(app: Arc<App>, body: Incoming) -> Result<Response, ApiError> {
    let spec: FaultSpec = request::json(body, Flavor::Native).await?;
    app.faults.apply(&spec);
    Ok(faults(&app))
}

/// `DELETE /sim/faults`.
pub fn clear_faults(app: &App) -> Response {
    app.faults.clear();
    faults(app)
}

/// `POST /sim/exit`: the answer goes out first, then the node dies.
pub fn exit(app: Arc<App>) -> Response {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        app.faults.kill();
    });
    body::json(
        StatusCode::OK,
        content_type::JSON,
        &json!({ "status": "exiting" }),
    )
}

/// `GET /sim/nvidia-smi`.
pub fn nvidia_smi(app: &App) -> Response {
    let snapshot = app.scheduler.snapshot();
    let busy = snapshot.runners.iter().map(|i| i.runner.slots.busy()).sum();
    let slots = snapshot
        .runners
        .iter()
        .map(|i| i.runner.slots.capacity())
        .sum();
    let report = gpu::nvidia_smi(&app.config.gpus, snapshot.vram_used, busy, slots);
    body::full(StatusCode::OK, content_type::TEXT, report)
}
