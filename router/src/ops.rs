//! The ops listener, separate from client traffic (loopback by default): Prometheus metrics,
//! liveness, readiness, and the fleet as this router sees it.
//!
//! * `GET /metrics`: Prometheus text; the fleet and watch gauges are refreshed at each scrape.
//! * `GET /healthz`: 200 while the process serves.
//! * `GET /readyz`: 503 until the first backend set is published, then 200. While a Consul
//!   watch is disconnected it stays 200 (routing on the last good set is intended: restarting
//!   or removing routers would not bring Consul back) and the body says `"consul":
//!   "unreachable"` with how stale the set may be.
//! * `GET /v1/mesh/nodes`: every instance with its state, weight, load, models, GPUs and the
//!   time this router last saw it change.
//! * `GET /`: the fleet page, the same data as a live table for a browser.
//!
//! Anything else is a 404 (or 405 for a known path with another method), in JSON.
//!
//! Bound beyond loopback with API keys required, `/metrics`, `/v1/mesh/nodes` and the fleet page
//! need an admin key (they describe the whole fleet); `/healthz` and `/readyz` stay open to the health checks
//! of Consul and load balancers, which send no credentials and learn nothing from them.

mod nodes;
mod page;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::schedule::Scheduler;
use crate::Fleet;
use nodes::ChangeLog;

/// How often the change log looks for a new backend set between requests, so `last_change`
/// is accurate to this much even when nobody asks.
const CHANGE_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How long open ops connections get to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Prometheus' text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the ops endpoints read.
struct Ops {
    fleet: Arc<dyn Fleet>,
    scheduler: Arc<Scheduler>,
    metrics: Metrics,
    changes: ChangeLog,
    /// Keys for the fleet-describing endpoints; `None` leaves them open.
    keys: Option<KeyStore>,
}

/// Serves the ops endpoints on `listener` until `shutdown` resolves, then lets open
/// connections finish (a few seconds at most) and returns. With `keys`, `/metrics`,
/// `/v1/mesh/nodes` and the fleet page (`/`) need an admin key.
///
/// Errors accepting one connection are logged and do not stop the server.
pub async fn serve(
    listener: TcpListener,
    fleet: Arc<dyn Fleet>,
    scheduler: Arc<Scheduler>,
    metrics: Metrics,
    keys: Option<KeyStore>,
    shutdown: impl Future<Output = ()>,
) {
    let ops = Arc::new(Ops {
        fleet,
        scheduler,
        metrics,
        changes: ChangeLog::default(),
        keys,
    });
    let follower = tokio::spawn(follow_changes(Arc::downgrade(&ops)));
    let graceful = GracefulShutdown::new();
    let builder = http1::Builder::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "ops listener: accept failed");
                    // Usually out of file descriptors: give the process a moment.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let ops = ops.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let ops = ops.clone();
            async move {
                let answer = ops.handle(request.method(), request.uri().path(), request.headers());
                Ok::<_, Infallible>(answer)
            }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "ops connection ended with an error");
            }
        });
    }
    follower.abort();
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!(
            "ops connections still open after {SHUTDOWN_GRACE:?}; not waiting for them"
        );
    }
}

/// Records instance changes as new backend sets appear, until the server stops. Holds the
/// state weakly, so the task also ends if the server's future is dropped rather than shut down.
async fn follow_changes(ops: std::sync::Weak<Ops>) {
    let mut tick = tokio::time::interval(CHANGE_POLL_INTERVAL);
    loop {
        tick.tick().await;
        let Some(ops) = ops.upgrade() else { return };
        ops.changes.update(&ops.fleet.backends());
    }
}

impl Ops {
    fn handle(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let known = matches!(
            path,
            "/" | "/metrics" | "/healthz" | "/readyz" | "/v1/mesh/nodes"
        );
        if known && !matches!(*method, Method::GET | Method::HEAD) {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &Problem {
                    error: format!("{method} {path}: only GET is allowed"),
                },
            );
        }
        if matches!(path, "/" | "/metrics" | "/v1/mesh/nodes") {
            if let Some(refusal) = self.refusal(path, headers) {
                return refusal;
            }
        }
        match path {
            "/metrics" => self.metrics(),
            "/healthz" => json(StatusCode::OK, &Health { status: "ok" }),
            "/readyz" => self.readiness(),
            "/v1/mesh/nodes" => json(StatusCode::OK, &self.nodes()),
            "/" => page::render(&self.nodes()),
            _ => json(
                StatusCode::NOT_FOUND,
                &Problem {
                    error: format!("not found: {path}"),
                },
            ),
        }
    }

    /// Every instance of the current set, stamped with its last change.
    fn nodes(&self) -> Vec<nodes::NodeReport> {
        let set = self.fleet.backends();
        self.changes.update(&set);
        self.changes.describe(&set, &self.scheduler)
    }

    /// The answer to a request for `path` without an admin key, when keys are required.
    fn refusal(&self, path: &str, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
        let keys = self.keys.as_ref()?;
        match keys.authenticate_request(headers, SystemTime::now()) {
            Err(denied) => {
                let error = denied.to_string();
                let mut refusal = json(StatusCode::UNAUTHORIZED, &Problem { error });
                refusal.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static(denied.challenge()),
                );
                Some(refusal)
            }
            Ok(key) if !key.is_admin() => {
                let error = format!("{path} requires an API key with the admin scope");
                Some(json(StatusCode::FORBIDDEN, &Problem { error }))
            }
            Ok(_) => None,
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        self.metrics.observe_fleet(&self.fleet.backends());
        self.metrics.observe_watches(&self.fleet.watches());
        response(StatusCode::OK, PROMETHEUS_TEXT, self.metrics.encode())
    }

    fn readiness(&self) -> Response<Full<Bytes>> {
        let ready = self.fleet.is_ready();
        let watches: Vec<WatchReport> = self
            .fleet
            .watches()
            .into_iter()
            .map(|(name, status)| WatchReport {
                name,
                connected: status.is_connected(),
                errors: status.errors(),
                last_index: status.last_index(),
                seconds_since_contact: status.since_last_success().map(|d| d.as_secs_f64()),
            })
            .collect();
        let consul = if watches.is_empty() {
            "not used"
        } else if watches.iter().all(|w| w.connected) {
            "ok"
        } else {
            "unreachable"
        };
        let stale_seconds = watches
            .iter()
            .filter(|w| !w.connected)
            .filter_map(|w| w.seconds_since_contact)
            .reduce(f64::max);
        let report = Readiness {
            ready,
            backends: self.fleet.backends().len(),
            consul,
            stale_seconds,
            watches,
        };
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(status, &report)
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

#[derive(Serialize)]
struct Problem {
    error: String,
}

/// The `/readyz` body.
#[derive(Serialize)]
struct Readiness {
    /// Whether a first backend set has been published.
    ready: bool,
    /// Instances in the current set, whatever their state.
    backends: usize,
    /// `ok`, `unreachable` (routing on the last good set), or `not used` (static backends).
    consul: &'static str,
    /// While Consul is unreachable: seconds since the stalest watch last heard from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    stale_seconds: Option<f64>,
    watches: Vec<WatchReport>,
}

#[derive(Serialize)]
struct WatchReport {
    name: &'static str,
    connected: bool,
    errors: u64,
    last_index: u64,
    seconds_since_contact: Option<f64>,
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_string(body)
        .unwrap_or_else(|error| format!(r#"{{"error":"cannot encode the answer: {error}"}}"#));
    text.push('\n');
    response(status, "application/json", text)
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests;
