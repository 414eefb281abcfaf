//! Model management: `/api/tags`, `/api/ps`, `/api/pull`, `/api/copy`, `/api/delete`, and the
//! refused `/api/create` and `/api/push` (`/api/show` is in `show`).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, content_type, Response};
use super::error::{ApiError, Flavor};
use super::infer;
use super::request;
use crate::app::App;
use crate::catalogue::{self, ModelSpec};
use crate::names;
use crate::registry::DiskModel;
use crate::timefmt;

/// `details`, as `/api/tags`, `/api/ps` and `/api/show` report it.
pub(super) fn details(spec: &ModelSpec) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": spec.family,
        "families": [spec.family],
        "parameter_size": spec.parameter_size,
        "quantization_level": spec.quantization,
    })
}

/// `GET /api/tags`: models on disk, newest first.
pub fn tags(app: &App) -> Response {
    let models: Vec<Value> = app
        .registry
        .list()
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "model": m.name,
                "modified_at": timefmt::rfc3339(m.modified_at),
                "size": m.spec.size_bytes,
                "digest": m.digest,
                "details": details(&m.spec),
            })
        })
        .collect();
    body::json(
        StatusCode::OK,
        content_type::JSON,
        &json!({ "models": models }),
    )
}

/// `GET /api/ps`: loaded models, latest expiry first; models still loading are not listed.
pub fn ps(app: &App) -> Response {
    let models: Vec<Value> = app
        .scheduler
        .snapshot()
        .runners
        .iter()
        .map(|info| {
            let r = &info.runner;
            let digest = app
                .registry
                .get(&r.model)
                .map(|m| m.digest.clone())
                .unwrap_or_default();
            json!({
                "name": r.model,
                "model": r.model,
                "size": r.size,
                "digest": digest,
                "details": details(&r.spec),
                "expires_at": timefmt::rfc3339(info.expires_at),
                "size_vram": r.size_vram,
                "context_length": r.num_ctx,
            })
        })
        .collect();
    body::json(
        StatusCode::OK,
        content_type::JSON,
        &json!({ "models": models }),
    )
}

/// The `model` field, or the deprecated `name`.
#[derive(Debug, Deserialize)]
pub(super) struct NamedRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    name: String,
    stream: Option<bool>,
}

impl NamedRequest {
    /// `model`, or the deprecated `name`.
    fn requested(&self) -> &str {
        if self.model.is_empty() {
            &self.name
        } else {
            &self.model
        }
    }

    /// The model named, with Ollama's 400 and 404.
    pub(super) fn find(&self, app: &App) -> Result<Arc<DiskModel>, ApiError> {
        let requested = self.requested();
        if requested.trim().is_empty() {
            return Err(ApiError::bad_request("model is required"));
        }
        names::canonical(requested)
            .and_then(|n| app.registry.get(&n))
            .ok_or_else(|| ApiError::not_found(format!("model '{requested}' not found")))
    }
}

/// `POST /api/pull`: simulated download progress at the configured speed; the model is then
/// on disk (catalogue values, or estimated from the tag).
pub async fn pull(app: Arc<App>, body: Incoming) -> Result<Response, ApiError> {
    let req: NamedRequest = request::json(body, Flavor::Native).await?;
    let name = names::canonical(req.requested())
        .ok_or_else(|| ApiError::bad_request("invalid model name"))?;
    let spec = app
        .registry
        .get(&name)
        .map_or_else(|| catalogue::lookup(&name), |m| (*m.spec).clone());
    let total = spec.size_bytes;
    let download = Duration::from_secs_f64(total as f64 / app.config.pull_bytes_per_sec as f64);
    if !req.stream.unwrap_or(true) {
        app.clock.sleep(download).await;
        app.registry.add(&name, spec);
        return Ok(body::json(
            StatusCode::OK,
            content_type::JSON,
            &json!({ "status": "success" }),
        ));
    }
    let (resp, tx) = body::stream(content_type::NDJSON);
    tokio::spawn(async move {
        const STEPS: u64 = 10;
        let digest = format!(
            "sha256:{}",
            app.registry
                .get(&name)
                .map_or_else(|| "0".repeat(64), |m| m.digest.clone())
        );
        let mut lines = vec![json!({ "status": "pulling manifest" })];
        for step in 0..=STEPS {
            lines.push(json!({ "status": format!("pulling {}", &digest[7..19]), "digest": digest, "total": total, "completed": total * step / STEPS }));
        }
        for (i, line) in lines.iter().enumerate() {
            if i > 1 {
                app.clock.sleep(download / STEPS as u32).await;
            }
            let mut out = Vec::new();
            infer::ndjson_line(&mut out, line);
            if tx.send(out.into()).await.is_err() {
                return;
            }
        }
        app.registry.add(&name, spec);
        for status in ["verifying sha256 digest", "writing manifest", "success"] {
            let mut out = Vec::new();
            infer::ndjson_line(&mut out, &json!({ "status": status }));
            if tx.send(out.into()).await.is_err() {
                return;
            }
        }
    });
    Ok(resp)
}

#[derive(Debug, Deserialize)]
struct CopyRequest {
    #[serde(default)]
    source: String,
    #[serde(default)]
    destination: String,
}

/// `POST /api/copy`: 200 with an empty body.
pub async fn copy(app: Arc<App>, body: Incoming) -> Result<Response, ApiError> {
    let req: CopyRequest = request::json(body, Flavor::Native).await?;
    let valid = |name: &str, field: &str| {
        names::canonical(name)
            .ok_or_else(|| ApiError::bad_request(format!("{field} {name:?} is invalid")))
    };
    let source = valid(&req.source, "source")?;
    let destination = valid(&req.destination, "destination")?;
    if !app.registry.copy(&source, &destination) {
        return Err(ApiError::not_found(format!(
            "model {:?} not found",
            req.source
        )));
    }
    Ok(body::empty(StatusCode::OK))
}

/// `DELETE /api/delete`: 200 with an empty body. A loaded runner stays until it expires, as
/// in Ollama. Unlike the other handlers it validates the name first (`name "" is invalid`).
pub async fn delete(app: Arc<App>, body: Incoming) -> Result<Response, ApiError> {
    let req: NamedRequest = request::json(body, Flavor::Native).await?;
    let requested = req.requested();
    let name = names::canonical(requested)
        .ok_or_else(|| ApiError::bad_request(format!("name {requested:?} is invalid")))?;
    if !app.registry.remove(&name) {
        return Err(ApiError::not_found(format!(
            "model '{requested}' not found"
        )));
    }
    Ok(body::empty(StatusCode::OK))
}

/// `POST /api/create` and `/api/push`: the simulator has no model files to build or upload.
pub fn unsupported(what: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!("{what} is not supported by the simulator"),
    )
    .respond(Flavor::Native)
}
