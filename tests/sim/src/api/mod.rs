//! The HTTP surface: routing with gin's 404/405 behaviour, the Host check, health checks, and
//! the arrival bookkeeping every inference request goes through (counting, fault injection).

mod body;
mod control;
mod embed;
mod error;
mod host;
mod infer;
mod models;
mod native;
mod needs;
mod openai;
mod request;
mod show;

use std::future::Future;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;

use self::body::content_type;
pub use self::body::Response;
pub use self::control::stats_json;
use self::error::{ApiError, Flavor};
pub use self::host::HostCheck;
use crate::app::App;
use crate::faults::{Arrival, HealthMode};
use crate::scheduler::SchedError;
use crate::stats::{self, InFlight};

/// What a path names, before the method is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Root,
    Version,
    Tags,
    Ps,
    Show,
    Generate,
    Chat,
    Embed,
    Embeddings,
    Pull,
    Push,
    Create,
    Copy,
    Delete,
    OpenAiChat,
    OpenAiCompletions,
    OpenAiEmbeddings,
    OpenAiModels,
    OpenAiModel,
    SimStats,
    SimFaults,
    SimExit,
    SimNvidiaSmi,
}

/// In gin's order: its `Allow` header lists methods as they were first registered.
const GET_HEAD: &[Method] = &[Method::HEAD, Method::GET];
const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];
const DELETE: &[Method] = &[Method::DELETE];
const FAULTS: &[Method] = &[Method::GET, Method::POST, Method::DELETE];

/// The route of `path` and the methods it accepts.
fn route(path: &str) -> Option<(Route, &'static [Method])> {
    let found = match path {
        "/" => (Route::Root, GET_HEAD),
        "/api/version" => (Route::Version, GET_HEAD),
        "/api/tags" => (Route::Tags, GET_HEAD),
        "/api/ps" => (Route::Ps, GET),
        "/api/show" => (Route::Show, POST),
        "/api/generate" => (Route::Generate, POST),
        "/api/chat" => (Route::Chat, POST),
        "/api/embed" => (Route::Embed, POST),
        "/api/embeddings" => (Route::Embeddings, POST),
        "/api/pull" => (Route::Pull, POST),
        "/api/push" => (Route::Push, POST),
        "/api/create" => (Route::Create, POST),
        "/api/copy" => (Route::Copy, POST),
        "/api/delete" => (Route::Delete, DELETE),
        "/v1/chat/completions" => (Route::OpenAiChat, POST),
        "/v1/completions" => (Route::OpenAiCompletions, POST),
        "/v1/embeddings" => (Route::OpenAiEmbeddings, POST),
        "/v1/models" => (Route::OpenAiModels, GET),
        "/sim/stats" => (Route::SimStats, GET),
        "/sim/faults" => (Route::SimFaults, FAULTS),
        "/sim/exit" => (Route::SimExit, POST),
        "/sim/nvidia-smi" => (Route::SimNvidiaSmi, GET),
        p if p.strip_prefix("/v1/models/").is_some_and(|m| !m.is_empty()) => {
            (Route::OpenAiModel, GET)
        }
        _ => return None,
    };
    Some(found)
}

/// Handles one request.
pub async fn handle(app: Arc<App>, host: Option<&HostCheck>, req: Request<Incoming>) -> Response {
    if host.is_some_and(|h| !h.allows(req.headers())) {
        return body::empty(StatusCode::FORBIDDEN);
    }
    let Some((route, methods)) = route(req.uri().path()) else {
        return body::full(
            StatusCode::NOT_FOUND,
            content_type::PLAIN,
            "404 page not found",
        );
    };
    if !methods.contains(req.method()) {
        let mut resp = body::full(
            StatusCode::METHOD_NOT_ALLOWED,
            content_type::PLAIN,
            "405 method not allowed",
        );
        let allow = methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(allow) = HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(header::ALLOW, allow);
        }
        return resp;
    }
    let (parts, body) = req.into_parts();
    match route {
        Route::Root => {
            health(
                &app,
                body::full(StatusCode::OK, content_type::TEXT, "Ollama is running"),
            )
            .await
        }
        Route::Version => {
            let version = serde_json::json!({ "version": app.config.ollama_version });
            health(
                &app,
                body::json(StatusCode::OK, content_type::JSON, &version),
            )
            .await
        }
        Route::Tags => models::tags(&app),
        Route::Ps => models::ps(&app),
        Route::Show => native_result(show::show(app, body).await),
        Route::Pull => native_result(models::pull(app, body).await),
        Route::Copy => native_result(models::copy(app, body).await),
        Route::Delete => native_result(models::delete(app, body).await),
        Route::Create => models::unsupported("create"),
        Route::Push => models::unsupported("push"),
        Route::Generate => inference(app, Flavor::Native, body, native::generate).await,
        Route::Chat => inference(app, Flavor::Native, body, native::chat).await,
        Route::Embed => inference(app, Flavor::Native, body, embed::api_embed).await,
        Route::Embeddings => inference(app, Flavor::Native, body, embed::api_embeddings).await,
        Route::OpenAiChat => inference(app, Flavor::OpenAi, body, openai::chat).await,
        Route::OpenAiCompletions => inference(app, Flavor::OpenAi, body, openai::completions).await,
        Route::OpenAiEmbeddings => inference(app, Flavor::OpenAi, body, embed::openai).await,
        Route::OpenAiModels => openai::models(&app),
        Route::OpenAiModel => {
            openai::model(&app, parts.uri.path().trim_start_matches("/v1/models/"))
        }
        Route::SimStats => control::stats(&app),
        Route::SimFaults => match parts.method {
            Method::POST => native_result(control::set_faults(app, body).await),
            Method::DELETE => control::clear_faults(&app),
            _ => control::faults(&app),
        },
        Route::SimExit => control::exit(app),
        Route::SimNvidiaSmi => control::nvidia_smi(&app),
    }
}

fn native_result(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| e.respond(Flavor::Native))
}

/// Health checks answer at once unless a fault makes them slow or hang.
async fn health(app: &App, resp: Response) -> Response {
    match app.faults.health() {
        HealthMode::Normal => {}
        HealthMode::Slow => tokio::time::sleep(app.faults.health_delay()).await,
        HealthMode::Hang => std::future::pending::<()>().await,
    }
    resp
}

/// The message of a request failed by `fail_next`.
const FAULT_MESSAGE: &str = "simulated failure (fault injection)";

/// Counts an inference request on arrival, applies the arrival faults, then runs `handler`,
/// which keeps the request counted in flight for as long as it holds the guard.
async fn inference<F, Fut>(app: Arc<App>, flavor: Flavor, body: Incoming, handler: F) -> Response
where
    F: FnOnce(Arc<App>, Incoming, InFlight) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let in_flight = app.stats.arrive();
    match app.faults.on_inference_arrival() {
        Arrival::Proceed(stall) => {
            if !stall.is_zero() {
                tokio::time::sleep(stall).await;
            }
        }
        Arrival::Fail | Arrival::Die => {
            stats::add(&app.stats.faulted_total, 1);
            return ApiError::internal(FAULT_MESSAGE).respond(flavor);
        }
        Arrival::Busy => {
            stats::add(&app.stats.faulted_total, 1);
            return ApiError::from(SchedError::QueueFull).respond(flavor);
        }
    }
    handler(app, body, in_flight)
        .await
        .unwrap_or_else(|e| e.respond(flavor))
}
