//! The Pingora proxy: one [`ProxyHttp`] implementation, its hooks kept thin and the work done in
//! one module per concern.
//!
//! * `request`: the request phase: admission, the router's own answers, reading the model and
//!   scheduling the first attempt.
//! * `context`: what the router knows about one request ([`RequestContext`]).
//! * `respond`: answers the router writes itself, errors in the caller's dialect.
//! * `route`: what a request is, from its method and normalized path.
//! * `auth`: who the caller is (API keys) and what they may do.
//! * `limits`: per-key rate and concurrency limits.
//! * `body`: reading the body to learn the model and the conversation, within a size limit.
//! * `views`: fleet-wide `/api/tags`, `/api/ps`, `/v1/models` and `/api/version`.
//! * `dialect`: errors as Ollama or OpenAI clients expect them.
//! * `fanout` and `broadcast`: one request to every node, for model management without a
//!   target node.
//! * `completion`: generation statistics read off the streaming response.
//! * `large_body`: bodies larger than Pingora's replay buffer, sent through a subrequest.
//! * `connections`: the cap on open client connections.
//! * `lookup`: asking the nodes for a model their Meta does not list yet.
//! * `peer`: how Pingora reaches a node (HTTP, HTTPS, or Connect mTLS in the mesh).
//! * `preload`: loading a model on a node ahead of need, when the scheduler orders it.
//! * `watchdog`: the first-byte deadline, the stream gap and Consul's verdict on each attempt,
//!   enforced on the connection to the node.
//!
//! Which node serves a request, and when, is the [`Scheduler`]'s decision: the proxy describes
//! the request as an [`crate::schedule::Ask`] and holds the [`crate::schedule::Permit`] it gets
//! in the request context, so every way a request ends frees its slot. Whether a failed attempt
//! is tried again is the scheduler's retry budget's. Requests the router does not need to
//! understand (a bad body, an unknown path) go to any node, so the caller gets Ollama's own
//! answer.

mod auth;
mod body;
mod broadcast;
mod completion;
mod connections;
mod context;
mod dialect;
mod fanout;
mod large_body;
mod limits;
mod lookup;
mod peer;
mod preload;
mod request;
mod respond;
mod route;
mod views;
mod watchdog;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::Uri;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::active::ActiveRequests;
use crate::backend_tls::BackendTls;
use crate::keys::{KeyStore, API_KEY_HEADER};
use crate::mesh::MeshClient;
use crate::metrics::Metrics;
use crate::schedule::{Outcome, ScheduleSettings, Scheduler};
use crate::Fleet;
use completion::CompletionScanner;
use connections::{ConnectionLimit, ConnectionPermit};
pub use context::RequestContext;
use fanout::FanOut;
use limits::Limits;
use lookup::Lookup;
use ollama_mesh_connect::metrics::{self as connect_metrics, Side};
use pingora::protocols::Digest;
use respond::{describe, respond_error};
// The request inspection the fuzz target (router/fuzz) drives directly.
pub use auth::is_admin_path;
pub use body::{model_in, ModelInBody};
pub use route::{encode as encode_path, normalize as normalize_path, Dialect, Management, Route};
use views::Views;
use watchdog::{AttemptSpec, Watchdog};

/// Header naming the instance a model-management request is for.
pub const NODE_HEADER: &str = "x-ollama-mesh-node";
/// Prefix of the mesh's internal headers, which only admins may send to a node.
pub const INTERNAL_HEADER_PREFIX: &str = "x-ollama-mesh-";
/// Header listing the nodes a broadcast reached and how each answered (`gpu-1=200, gpu-2=404`).
pub const NODES_HEADER: &str = "x-ollama-mesh-nodes";
/// Header carrying the request's ID to the backend and back to the client.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// How requests are proxied.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Longest wait for a TCP connection to a backend.
    pub connect_timeout: Duration,
    /// Longest wait for any read from a backend, whatever the deadlines below say.
    pub read_timeout: Duration,
    /// How long a node has for the first byte of an answer, before twice the time the
    /// scheduler expects the request to take there is added (see `schedule::deadline`).
    pub first_byte_timeout: Duration,
    /// Longest gap in a response once its first byte came.
    pub stream_idle_timeout: Duration,
    /// How requests are scheduled: the policy, the queue, and retries.
    pub schedule: ScheduleSettings,
    /// Largest request body accepted.
    pub max_body_size: usize,
    /// Whether model-management endpoints are served.
    pub enable_management: bool,
    /// Longest wait on one read of a client's body or one write of the response to it.
    pub client_timeout: Duration,
    /// Largest request head (request line and headers) accepted.
    pub max_header_size: usize,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// TLS to the nodes (the trust for the router's own clients; Pingora's comes from
    /// [`crate::server::ServeOptions::backend_ca`]); `None` speaks plain HTTP to them.
    pub backend_tls: Option<BackendTls>,
    /// Consul Connect to the nodes registered Connect-native; `None` outside the mesh.
    pub mesh: Option<Arc<MeshClient>>,
}

/// Ollama's API for the whole fleet.
pub struct MeshProxy {
    fleet: Arc<dyn Fleet>,
    scheduler: Arc<Scheduler>,
    settings: ProxySettings,
    views: Views,
    fanout: FanOut,
    lookup: Lookup,
    active: ActiveRequests,
    metrics: Metrics,
    /// The accepted API keys; `None` lets every caller in.
    keys: Option<KeyStore>,
    limits: Limits,
    connections: ConnectionLimit,
    watchdog: Watchdog,
}

/// Tells the scheduler that the node of the current attempt failed it, so the outlier
/// detection can eject it.
fn node_failed(ctx: &mut RequestContext) {
    if let Some(permit) = ctx.current.as_mut() {
        permit.node_failed();
    }
}

impl MeshProxy {
    /// A proxy over `fleet`, counting its requests in `active` (for draining at shutdown).
    pub fn new(fleet: Arc<dyn Fleet>, settings: ProxySettings, active: ActiveRequests) -> Self {
        let scheduler = Scheduler::new(fleet.clone(), settings.schedule.clone());
        Self::with_scheduler(fleet, scheduler, settings, active)
    }

    /// A proxy over `fleet` whose requests `scheduler` places (shared with the ops endpoints).
    pub fn with_scheduler(
        fleet: Arc<dyn Fleet>,
        scheduler: Arc<Scheduler>,
        settings: ProxySettings,
        active: ActiveRequests,
    ) -> Self {
        let fanout = FanOut::new(settings.backend_tls.as_ref(), settings.mesh.as_deref());
        scheduler.set_preloader(Arc::new(preload::NodePreloader::new(fanout.clone())));
        // Views and lookups are small reads; a node that cannot answer them quickly is left out.
        let node_read_timeout = settings.connect_timeout.max(Duration::from_secs(5));
        Self {
            watchdog: Watchdog::following(&fleet),
            fleet,
            scheduler,
            views: Views::new(fanout.clone(), node_read_timeout),
            lookup: Lookup::new(fanout.clone(), node_read_timeout),
            connections: ConnectionLimit::new(settings.max_connections),
            settings,
            fanout,
            active,
            metrics: Metrics::new(),
            keys: None,
            limits: Limits::default(),
        }
    }

    /// This proxy, requiring every caller to present one of the keys in `keys`.
    pub fn with_keys(mut self, keys: KeyStore) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Whether a failed attempt of `ctx`'s request may go to another node: nothing reached the
    /// client yet (the caller checks), some node is left untried, and the retry budget allows
    /// it. Counts the retry under `reason` when it may.
    fn may_retry(&self, ctx: &mut RequestContext, reason: &str) -> bool {
        let others = self
            .fleet
            .backends()
            .backends()
            .iter()
            .any(|b| !ctx.tried.contains(b.id()));
        if others && self.scheduler.retries().allow(&mut ctx.retries) {
            self.metrics.retry(ctx.route.label(), reason);
            true
        } else {
            false
        }
    }
}

#[async_trait]
impl ProxyHttp for MeshProxy {
    type CTX = RequestContext;

    fn new_ctx(&self) -> RequestContext {
        RequestContext::new(self.scheduler.retries().start(), self.active.start())
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestContext,
        previous: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(permit) = previous.downcast::<ConnectionPermit>() {
            ctx.connection = Some(*permit);
        }
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &RequestContext,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        ctx.connection
            .clone()
            .map(|permit| Box::new(permit) as Box<dyn std::any::Any + Send + Sync>)
    }

    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &RequestContext) -> bool {
        session.subrequest_ctx.is_none()
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        // Slow clients: Pingora bounds each read of the head; the body and the response get
        // the same bound per read and write.
        session.set_read_timeout(Some(self.settings.client_timeout));
        session.set_write_timeout(Some(self.settings.client_timeout));
        if ctx.connection.is_none() && session.subrequest_ctx.is_none() {
            match self.connections.try_acquire() {
                Some(permit) => ctx.connection = Some(permit),
                None => {
                    session.set_keepalive(None);
                    let message = format!(
                        "the router has {} client connections open, its limit (--max-connections)",
                        self.connections.open()
                    );
                    respond_error(session, Dialect::Native, 503, &message).await?;
                    return Ok(true);
                }
            }
        }
        let head = head_size(session.req_header());
        if head > self.settings.max_header_size {
            let message = format!(
                "request headers are {head} bytes; the limit is {}",
                self.settings.max_header_size
            );
            respond_error(session, Dialect::Native, 431, &message).await?;
            return Ok(true);
        }
        ctx.request_id = session
            .get_header(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .map_or_else(|| format!("{:032x}", fastrand::u128(..)), str::to_owned);
        let header = session.req_header();
        let Some(path) = route::normalize(header.uri.path()) else {
            respond_error(session, Dialect::Native, 400, "invalid request path").await?;
            return Ok(true);
        };
        let upstream_path = route::encode(&path);
        if upstream_path != header.uri.path() {
            let uri = match header.uri.query() {
                Some(query) => format!("{upstream_path}?{query}"),
                None => upstream_path,
            };
            let uri: Uri = uri
                .parse()
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "normalized path", e))?;
            session.req_header_mut().set_uri(uri);
        }
        ctx.route = Route::classify(&session.req_header().method, &path);
        if self.admit(session, ctx, &path).await? {
            return Ok(true);
        }
        if ctx.route.reads_body()
            && self
                .refuse_declared_size(session, ctx.route.dialect())
                .await?
        {
            return Ok(true);
        }
        self.answer_locally(session, ctx).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        // A retry's earlier attempt frees its slot before the next is taken.
        ctx.current = None;
        ctx.attempt = None;
        let permit = match ctx.chosen.take() {
            Some(permit) => permit,
            None => {
                let ask = ctx.ask.clone().unwrap_or_default();
                self.scheduler
                    .acquire(ask, &ctx.tried)
                    .await
                    .map_err(|error| {
                        let message = describe(&error, &ctx.route);
                        Error::explain(ErrorType::HTTPStatus(error.status()), message)
                    })?
            }
        };
        let backend = permit.backend();
        ctx.tried.push(backend.id().clone());
        let connector = self
            .watchdog
            .connector(backend.id().clone(), self.settings.connect_timeout);
        let peer = peer::node_peer(backend, &self.settings, connector)?;
        let ask = ctx.ask.clone().unwrap_or_default();
        ctx.attempt = Some(self.watchdog.watch(AttemptSpec {
            node: backend.id().clone(),
            first_byte: self.scheduler.first_byte_deadline(
                backend,
                &ask,
                self.settings.first_byte_timeout,
                self.settings.read_timeout,
            ),
            model: ask.model,
            tried: ctx.tried.clone(),
            may_move: ctx.retries.left() > 0,
            stream_idle: self.settings.stream_idle_timeout,
        }));
        ctx.current = Some(permit);
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&Digest>,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        match &ctx.current {
            Some(guard) => {
                peer::check_connected(guard.backend(), &self.settings, reused, digest).await
            }
            None => Ok(()),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        if let Some(guard) = &ctx.current {
            // Ollama on loopback refuses foreign Host headers; the backend's own passes.
            upstream.insert_header(http::header::HOST, guard.backend().host_header())?;
        }
        upstream.remove_header(NODE_HEADER);
        if !ctx.caller.is_admin() {
            // Headers of the mesh's own are the router's (or an admin's) to send.
            let internal: Vec<http::HeaderName> = upstream
                .headers
                .keys()
                .filter(|name| name.as_str().starts_with(INTERNAL_HEADER_PREFIX))
                .cloned()
                .collect();
            for name in internal {
                upstream.remove_header(&name);
            }
        }
        if self.keys.is_some() {
            // The key is for the router: a node (or whoever runs it) never sees it.
            upstream.remove_header(&http::header::AUTHORIZATION);
            upstream.remove_header(API_KEY_HEADER);
        }
        upstream.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        // Watched connections are not pooled (see `watchdog`): the node closes after answering.
        upstream.insert_header(http::header::CONNECTION, "close")?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        if let Some(attempt) = &ctx.attempt {
            attempt.attempt().head_arrived();
        }
        // Ollama's "server busy" comes before any byte of a generation: another node may have room.
        if upstream.status.as_u16() == 503 {
            node_failed(ctx);
        }
        if upstream.status.as_u16() == 503 && self.may_retry(ctx, "busy") {
            let mut error = Error::explain(ErrorType::HTTPStatus(503), "backend busy");
            error.set_retry(true);
            return Err(error);
        }
        upstream.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        self.metrics
            .first_byte(ctx.route.label(), &ctx.model_label(), ctx.started.elapsed());
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> Result<Option<Duration>> {
        if let (Some(scanner), Some(data)) = (ctx.completion.as_mut(), body.as_ref()) {
            scanner.feed(data);
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestContext,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if peer.client_cert_key.is_some() && peer::is_tls_failure(&e) {
            connect_metrics::handshake(Side::Client, false);
        }
        node_failed(ctx);
        if self.may_retry(ctx, "connect") {
            tracing::warn!(request_id = %ctx.request_id, %peer, error = %e, "cannot connect to backend; trying another");
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestContext,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("backend {peer}"));
        let cut = ctx.cut();
        if e.esource() == &ErrorSource::Upstream && cut.as_ref().is_none_or(|c| c.is_node_failure())
        {
            node_failed(ctx);
        }
        // Retry only while the client has seen nothing and the body can be sent again.
        let reason = cut.as_ref().map_or("upstream_error", |c| c.reason());
        let retriable = session.response_written().is_none()
            && !session.as_ref().retry_buffer_truncated()
            && self.may_retry(ctx, reason);
        if retriable {
            tracing::warn!(request_id = %ctx.request_id, error = %e, reason, "backend failed before answering; trying another");
        }
        e.set_retry(retriable);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestContext,
    ) -> FailToProxy {
        let dialect = ctx.route.dialect();
        let cut = ctx.attempt.as_ref().and_then(|a| {
            a.attempt()
                .cut()
                .map(|cut| (cut, a.attempt().node().clone()))
        });
        let code = match (e.etype(), &cut) {
            (ErrorType::HTTPStatus(code), _) => *code,
            (_, Some((cut, _))) => cut.status(),
            _ if e.esource() == &ErrorSource::Downstream => 0,
            _ => 502,
        };
        let message = match (e.etype(), &cut) {
            (ErrorType::HTTPStatus(_), _) => e
                .context
                .as_ref()
                .map_or_else(|| e.to_string(), |c| c.as_str().to_owned()),
            (_, Some((cut, node))) => cut.message(node),
            _ => format!("the Ollama backend failed: {e}"),
        };
        let mut reusable = false;
        if code > 0 {
            let written = match session
                .response_written()
                .map(|r| r.headers.contains_key(http::header::CONTENT_LENGTH))
            {
                // Mid-stream: end the stream with an error line the client's parser understands.
                // A chunked stream then ends as HTTP says, and its connection stays usable (a
                // client told nothing else would reuse it anyway).
                Some(sized) => {
                    let ended = session
                        .write_response_body(Some(dialect::stream_error(dialect, &message)), true)
                        .await;
                    reusable = !sized && ended.is_ok();
                    if !reusable {
                        session.set_keepalive(None);
                    }
                    ended
                }
                None => {
                    // The connection is not reused after a failure: say so in the answer, or
                    // a client would send its next request on a connection about to close.
                    session.set_keepalive(None);
                    respond_error(session, dialect, code, &message).await
                }
            };
            if let Err(write_error) = written {
                tracing::debug!(request_id = %ctx.request_id, error = %write_error, "could not tell the client");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: reusable,
        }
    }

    async fn logging(
        &self,
        session: &mut Session,
        error: Option<&Error>,
        ctx: &mut RequestContext,
    ) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let model = ctx.model_label();
        let elapsed = ctx.started.elapsed();
        let timings = ctx.completion.take().and_then(CompletionScanner::finish);
        let backend = ctx.current.as_ref().map(|p| p.backend().id().clone());
        if let (Some(timings), Some(backend)) = (timings, &backend) {
            self.metrics
                .tokens(&model, backend, timings.eval_tokens, timings.eval_duration);
        }
        if let Some(permit) = ctx.current.as_mut() {
            // What the node's answer teaches the scheduler: it answered unless the attempt
            // failed or the node answered with a server error.
            permit.record(Outcome {
                answered: error.is_none() && status < 500,
                node_failed: false,
                timings,
            });
        }
        // A request forwarded through a subrequest is counted there, with its backend.
        if !ctx.forwarded_to_subrequest {
            self.metrics
                .request_finished(ctx.route.label(), &model, status, elapsed);
            if let Some(key) = ctx.caller.key() {
                self.metrics.key_request(&key.name, status);
            }
        }
        tracing::debug!(
            request_id = %ctx.request_id,
            key = ctx.caller.key().map_or("", |k| k.name.as_str()),
            route = ctx.route.label(),
            model,
            backend = backend.as_deref().unwrap_or(""),
            status,
            ?elapsed,
            tokens = timings.map(|t| t.eval_tokens),
            error = error.map(|e| e.to_string()),
            "request done"
        );
        ctx.current = None;
        ctx.chosen = None;
    }
}

/// The size of a request head as sent: request line and header lines.
fn head_size(header: &RequestHeader) -> usize {
    let line = header.method.as_str().len() + header.uri.to_string().len() + 12;
    header.headers.iter().fold(line, |size, (name, value)| {
        size + name.as_str().len() + value.len() + 4
    })
}
