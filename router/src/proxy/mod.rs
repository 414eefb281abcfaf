//! The Pingora proxy: one [`ProxyHttp`] implementation, its hooks kept thin and the work done in
//! one module per concern.
//!
//! * `route`: what a request is, from its method and normalized path.
//! * `auth`: who the caller is (API keys) and what they may do.
//! * `limits`: per-key rate and concurrency limits.
//! * `body`: reading the body to learn the model, within a size limit.
//! * `views`: fleet-wide `/api/tags`, `/api/ps`, `/v1/models` and `/api/version`.
//! * `dialect`: errors as Ollama or OpenAI clients expect them.
//! * `fanout` and `broadcast`: one request to every node, for model management without a
//!   target node.
//! * `completion`: generation statistics read off the streaming response.
//! * `large_body`: bodies larger than Pingora's replay buffer, sent through a subrequest.
//! * `connections`: the cap on open client connections.
//! * `lookup`: asking the nodes for a model their Meta does not list yet.
//! * `peer`: how Pingora reaches a node (HTTP, HTTPS, or Connect mTLS in the mesh).
//!
//! A request that names a model is sent to a backend chosen by [`crate::select::choose`]; the
//! choice's in-flight guard lives in the request context, so every way a request ends releases
//! it. Requests the router does not need to understand (a bad body, an unknown path) go to any
//! backend, so the caller gets Ollama's own answer.

mod auth;
mod body;
mod broadcast;
mod completion;
mod connections;
mod dialect;
mod fanout;
mod large_body;
mod limits;
mod lookup;
mod peer;
mod route;
mod views;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Uri};
use ollama_mesh_consul::contract::meta::canonical_model_name;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::backend_tls::BackendTls;
use crate::keys::{KeyStore, API_KEY_HEADER};
use crate::mesh::MeshClient;
use crate::metrics::Metrics;
use crate::select::{self, SelectError};
use crate::server::{ActiveRequest, ActiveRequests};
use crate::{Backend, Fleet, InFlightGuard};
use auth::Caller;
use body::BodyBuffer;
use completion::CompletionScanner;
use connections::{ConnectionLimit, ConnectionPermit};
use fanout::FanOut;
use limits::{Limits, Slot};
use lookup::Lookup;
use ollama_mesh_connect::metrics::{self as connect_metrics, Side};
use pingora::protocols::Digest;
// The request inspection the fuzz target (router/fuzz) drives directly.
pub use auth::is_admin_path;
pub use body::{model_in, ModelInBody};
pub use route::{encode as encode_path, normalize as normalize_path, Dialect, Management, Route};
use views::{View, Views};

/// Header naming the instance a model-management request is for.
pub const NODE_HEADER: &str = "x-ollama-mesh-node";
/// Prefix of the mesh's internal headers, which only admins may send to a node.
pub const INTERNAL_HEADER_PREFIX: &str = "x-ollama-mesh-";
/// Header listing the nodes a broadcast reached and how each answered (`gpu-1=200, gpu-2=404`).
pub const NODES_HEADER: &str = "x-ollama-mesh-nodes";
/// Header carrying the request's ID to the backend and back to the client.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

const JSON: &str = "application/json; charset=utf-8";

/// How requests are proxied.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Longest wait for a TCP connection to a backend.
    pub connect_timeout: Duration,
    /// Longest wait for any read from a backend: the first byte (which includes a model load)
    /// and every gap between chunks.
    pub read_timeout: Duration,
    /// How many other backends to try when one fails before answering.
    pub retries: usize,
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
}

/// What the router knows about one request.
pub struct RequestContext {
    route: Route,
    caller: Caller,
    /// The caller's concurrency slot, held while the request runs.
    _slot: Option<Slot>,
    model: Option<String>,
    request_id: String,
    /// A backend chosen before `upstream_peer` (so a missing model is answered early).
    chosen: Option<InFlightGuard>,
    /// The backend of the current attempt; dropping it releases its in-flight count.
    current: Option<InFlightGuard>,
    tried: Vec<Arc<str>>,
    retries_left: usize,
    started: Instant,
    completion: Option<CompletionScanner>,
    /// The body went to a subrequest, which proxies and accounts for it.
    forwarded_to_subrequest: bool,
    rng: fastrand::Rng,
    _active: ActiveRequest,
    /// This connection's place under the connection cap, carried across kept-alive requests.
    connection: Option<ConnectionPermit>,
}

impl RequestContext {
    /// The model as a metric label: only names a backend was chosen for (so label values stay
    /// bounded by the fleet's models), `none` when the request names no model, else `unknown`.
    fn model_label(&self) -> String {
        match (&self.model, self.current.is_some() || self.chosen.is_some()) {
            (None, _) => "none".to_owned(),
            (Some(model), true) => canonical_model_name(model),
            (Some(_), false) => "unknown".to_owned(),
        }
    }
}

impl MeshProxy {
    /// A proxy over `fleet`, counting its requests in `active` (for draining at shutdown).
    pub fn new(fleet: Arc<dyn Fleet>, settings: ProxySettings, active: ActiveRequests) -> Self {
        let fanout = FanOut::new(settings.backend_tls.as_ref(), settings.mesh.as_deref());
        // Views and lookups are small reads; a node that cannot answer them quickly is left out.
        let node_read_timeout = settings.connect_timeout.max(Duration::from_secs(5));
        Self {
            fleet,
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

    /// Lets the caller in, or answers 401 (no or a bad key), 403 (a management path without
    /// an admin key) or 429 (the key's limits); returns whether the request is done.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        path: &str,
    ) -> Result<bool> {
        if let Some(keys) = &self.keys {
            match auth::authenticate(keys, session.req_header(), SystemTime::now()) {
                Ok(caller) => ctx.caller = caller,
                Err(denied) => {
                    self.metrics.auth_denied(denied.label());
                    let challenge = [(http::header::WWW_AUTHENTICATE, denied.challenge())];
                    respond_error_with(
                        session,
                        ctx.route.dialect(),
                        401,
                        &denied.to_string(),
                        &challenge,
                    )
                    .await?;
                    return Ok(true);
                }
            }
        }
        if auth::is_admin_path(path) && !ctx.caller.is_admin() {
            self.metrics.auth_denied("forbidden");
            let message = format!("{path} requires an API key with the admin scope");
            respond_error(session, Dialect::Native, 403, &message).await?;
            return Ok(true);
        }
        // A large body's subrequest runs within its parent, which holds the request's slot.
        let Some(key) = ctx
            .caller
            .key()
            .filter(|_| large_body::forwarded(session).is_none())
        else {
            return Ok(false);
        };
        match self.limits.acquire(key, Instant::now()) {
            Ok(slot) => {
                ctx._slot = slot;
                Ok(false)
            }
            Err(limited) => {
                let retry_after = limited.retry_after_seconds().to_string();
                let message = limited.message(key);
                let headers = [(http::header::RETRY_AFTER, retry_after.as_str())];
                respond_error_with(session, ctx.route.dialect(), 429, &message, &headers).await?;
                Ok(true)
            }
        }
    }

    /// Answers what the router answers itself; returns whether the request is done.
    async fn answer_locally(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        let dialect = ctx.route.dialect();
        let set = self.fleet.backends();
        let view = match &ctx.route {
            Route::Root => {
                respond(
                    session,
                    200,
                    "text/plain; charset=utf-8",
                    Bytes::from_static(b"Ollama is running"),
                )
                .await?;
                return Ok(true);
            }
            Route::Version => {
                match views::fleet_version(&set) {
                    Some(version) => {
                        let body = serde_json::json!({ "version": version }).to_string();
                        respond(session, 200, JSON, Bytes::from(body)).await?;
                    }
                    None => {
                        respond_error(
                            session,
                            dialect,
                            503,
                            &SelectError::NoneAvailable.to_string(),
                        )
                        .await?
                    }
                }
                return Ok(true);
            }
            Route::Tags => View::Tags,
            Route::Ps => View::Ps,
            Route::OpenAiModels => View::OpenAiModels,
            Route::OpenAiModel(model) => {
                ctx.model = Some(model.clone());
                return self.choose_early(session, ctx).await;
            }
            Route::ModelRouted { .. } => return self.read_model(session, ctx).await,
            Route::Management(management) => {
                return self.management(session, ctx, *management).await
            }
            Route::Other
                if ctx.caller.is_model_restricted()
                    && !matches!(session.req_header().method, Method::GET | Method::HEAD) =>
            {
                // A route the router does not read could name any model (a newer Ollama API,
                // say): a key limited to some models may only write where models are checked.
                let message = "this API key may use only some models, and this route is not one \
                               the router checks models on";
                respond_error(session, dialect, 403, message).await?;
                return Ok(true);
            }
            Route::Other => return Ok(false),
        };
        let caller = &ctx.caller;
        let body = self
            .views
            .gather(view, &set, |model| caller.allows_model(model))
            .await;
        respond(session, 200, JSON, body).await?;
        Ok(true)
    }

    /// Reads the body to find the model, then chooses a backend for it.
    async fn read_model(&self, session: &mut Session, ctx: &mut RequestContext) -> Result<bool> {
        ctx.completion = Some(CompletionScanner::default());
        if let Some(forwarded) = large_body::forwarded(session) {
            // The parent request read the body already and streams it to this subrequest.
            ctx.request_id.clone_from(&forwarded.request_id);
            ctx.model.clone_from(&forwarded.model);
            return self.choose_early(session, ctx).await;
        }
        session.enable_retry_buffering();
        let mut buffer = BodyBuffer::new(self.settings.max_body_size);
        while let Some(chunk) = session.read_request_body().await? {
            if let Err(too_large) = buffer.push(&chunk) {
                let message = format!("request body is larger than {} bytes", too_large.limit);
                respond_error(session, ctx.route.dialect(), 413, &message).await?;
                return Ok(true);
            }
        }
        let body = buffer.freeze();
        if let ModelInBody::Named(model) = body::model_in(&body) {
            ctx.model = Some(model);
        } else if ctx.caller.is_model_restricted() {
            // Without a model the request would go to any node, which might read one this
            // router could not (a duplicated field, say) and run it.
            let message =
                "this API key may use only some models; the request must name one in a JSON body";
            respond_error(session, ctx.route.dialect(), 400, message).await?;
            return Ok(true);
        }
        if self.choose_early(session, ctx).await? {
            return Ok(true);
        }
        if session.as_ref().retry_buffer_truncated() {
            // Pingora replays at most 64 KiB of a body it has already read; a larger one goes
            // through a subrequest fed from memory, which streams its response back here.
            ctx.chosen = None;
            ctx.completion = None;
            ctx.forwarded_to_subrequest = true;
            large_body::forward(session, ctx, body).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Chooses the first backend now, so that "no such model" is answered in the caller's
    /// dialect before anything is sent upstream.
    async fn choose_early(&self, session: &mut Session, ctx: &mut RequestContext) -> Result<bool> {
        if let Some(model) = ctx.model.as_deref() {
            if !ctx.caller.allows_model(model) {
                let message = format!("model '{model}' is not allowed for this API key");
                respond_error(session, ctx.route.dialect(), 403, &message).await?;
                return Ok(true);
            }
        }
        let set = self.fleet.backends();
        let error = match select::choose(&set, ctx.model.as_deref(), &ctx.tried, &mut ctx.rng) {
            Ok(guard) => {
                ctx.chosen = Some(guard);
                return Ok(false);
            }
            Err(error) => error,
        };
        if let (SelectError::ModelNotFound { model, .. }, false) = (&error, set.is_empty()) {
            // Meta may lag a model pulled or copied a moment ago: ask the nodes before a 404.
            if let Some(node) = self.lookup.nodes_with(&set, model).await.into_iter().next() {
                ctx.chosen = Some(InFlightGuard::new(node));
                return Ok(false);
            }
        }
        let (status, message) = describe(&error, &ctx.route);
        respond_error(session, ctx.route.dialect(), status, &message).await?;
        Ok(true)
    }

    /// Model management changes a node's disk: off unless enabled, and aimed at one node.
    async fn management(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        management: Management,
    ) -> Result<bool> {
        if !self.settings.enable_management {
            let message = format!(
                "/api/{} is disabled on this router; start it with --enable-management to allow model management",
                management.label()
            );
            respond_error(session, Dialect::Native, 403, &message).await?;
            return Ok(true);
        }
        self.lookup.forget_misses();
        let target = session
            .get_header(NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let Some(target) = target else {
            return self.broadcast(session, management).await;
        };
        let set = self.fleet.backends();
        match set.get(&target) {
            Some(backend) => {
                ctx.chosen = Some(InFlightGuard::new(backend.clone()));
                Ok(false)
            }
            None => {
                respond_error(
                    session,
                    Dialect::Native,
                    404,
                    &format!("no instance {target:?} in the fleet"),
                )
                .await?;
                Ok(true)
            }
        }
    }
}

impl MeshProxy {
    /// Sends a management request to every node that takes work and answers for all of them.
    async fn broadcast(&self, session: &mut Session, management: Management) -> Result<bool> {
        let mut buffer = BodyBuffer::new(self.settings.max_body_size);
        while let Some(chunk) = session.read_request_body().await? {
            if let Err(too_large) = buffer.push(&chunk) {
                let message = format!("request body is larger than {} bytes", too_large.limit);
                respond_error(session, Dialect::Native, 413, &message).await?;
                return Ok(true);
            }
        }
        let body = buffer.freeze();
        let set = self.fleet.backends();
        let existing = broadcast::existing_model(management, &body);
        let mut nodes: Vec<Arc<Backend>> = set
            .accepting()
            .filter(|b| existing.as_deref().is_none_or(|model| b.has_model(model)))
            .cloned()
            .collect();
        if let Some(model) = &existing {
            if nodes.is_empty() {
                nodes = self.lookup.nodes_with(&set, model).await;
            }
            if nodes.is_empty() {
                let message = broadcast::not_found(management, model);
                respond_error(session, Dialect::Native, 404, &message).await?;
                return Ok(true);
            }
        }
        let header = session.req_header();
        let (method, path) = (header.method.clone(), header.uri.path().to_owned());
        let body = broadcast::node_body(&body);
        let targets: Vec<&Arc<Backend>> = nodes.iter().collect();
        let answers = self
            .fanout
            .send_all(&targets, &method, &path, &body, self.settings.read_timeout)
            .await;
        let answer = broadcast::aggregate(management.label(), &targets, answers);
        let headers = [(
            http::HeaderName::from_static(NODES_HEADER),
            answer.nodes.as_str(),
        )];
        respond_with(
            session,
            answer.status,
            answer.content_type,
            answer.body,
            &headers,
        )
        .await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for MeshProxy {
    type CTX = RequestContext;

    fn new_ctx(&self) -> RequestContext {
        RequestContext {
            route: Route::Other,
            caller: Caller::default(),
            _slot: None,
            model: None,
            request_id: String::new(),
            chosen: None,
            current: None,
            tried: Vec::new(),
            retries_left: self.settings.retries,
            started: Instant::now(),
            completion: None,
            forwarded_to_subrequest: false,
            rng: fastrand::Rng::new(),
            _active: self.active.start(),
            connection: None,
        }
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
            .map_or_else(|| format!("{:032x}", ctx.rng.u128(..)), str::to_owned);
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
        self.answer_locally(session, ctx).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        let guard = match ctx.chosen.take() {
            Some(guard) => guard,
            None => {
                let set = self.fleet.backends();
                select::choose(&set, ctx.model.as_deref(), &ctx.tried, &mut ctx.rng).map_err(
                    |error| {
                        let (status, message) = describe(&error, &ctx.route);
                        Error::explain(ErrorType::HTTPStatus(status), message)
                    },
                )?
            }
        };
        let backend = guard.backend();
        ctx.tried.push(backend.id().clone());
        let peer = peer::node_peer(backend, &self.settings)?;
        ctx.current = Some(guard);
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
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        // Ollama's "server busy" comes before any byte of a generation: another node may have room.
        if upstream.status.as_u16() == 503
            && ctx.retries_left > 0
            && ctx.tried.len() < self.fleet.backends().len()
        {
            ctx.retries_left -= 1;
            self.metrics.retry(ctx.route.label(), "busy");
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
        if ctx.retries_left > 0 {
            ctx.retries_left -= 1;
            self.metrics.retry(ctx.route.label(), "connect");
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
        // Retry only while the client has seen nothing and the body can be sent again.
        let retriable = ctx.retries_left > 0
            && session.response_written().is_none()
            && !session.as_ref().retry_buffer_truncated();
        if retriable {
            ctx.retries_left -= 1;
            self.metrics.retry(ctx.route.label(), "upstream_error");
            tracing::warn!(request_id = %ctx.request_id, error = %e, "backend failed before answering; trying another");
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
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ if e.esource() == &ErrorSource::Downstream => 0,
            _ => 502,
        };
        let message = match e.etype() {
            ErrorType::HTTPStatus(_) => e
                .context
                .as_ref()
                .map_or_else(|| e.to_string(), |c| c.as_str().to_owned()),
            _ => format!("the Ollama backend failed: {e}"),
        };
        if code > 0 {
            // The connection is not reused after a failure (below): say so in the answer, or a
            // client would send its next request on a connection about to close.
            session.set_keepalive(None);
            let written = if session.response_written().is_some() {
                // Mid-stream: end the stream with an error line the client's parser understands.
                session
                    .write_response_body(Some(dialect::stream_error(dialect, &message)), true)
                    .await
            } else {
                respond_error(session, dialect, code, &message).await
            };
            if let Err(write_error) = written {
                tracing::debug!(request_id = %ctx.request_id, error = %write_error, "could not tell the client");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
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
        let generated = ctx.completion.take().and_then(CompletionScanner::finish);
        let backend = ctx.current.as_ref().map(|g| g.backend().id().clone());
        if let (Some(generated), Some(backend)) = (generated, &backend) {
            self.metrics
                .tokens(&model, backend, generated.tokens, generated.duration);
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
            tokens = generated.map(|g| g.tokens),
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

/// The status and message for a failed choice.
///
/// A missing model gets Ollama's own text for the route (its embedding endpoints word it
/// differently), followed by the models the fleet does have.
fn describe(error: &SelectError, route: &Route) -> (u16, String) {
    match error {
        SelectError::ModelNotFound { model, available } => {
            let ollama_text = match route.label() {
                "embed" | "embeddings" | "openai_embeddings" => {
                    format!("model \"{model}\" not found, try pulling it first")
                }
                _ => format!("model '{model}' not found"),
            };
            let message = if available.is_empty() {
                ollama_text
            } else {
                format!("{ollama_text}; the fleet has: {}", available.join(", "))
            };
            (404, message)
        }
        SelectError::NoneAvailable | SelectError::AllTried { .. } => (503, error.to_string()),
    }
}

/// Writes a complete response (headers only for `HEAD`).
async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
) -> Result<()> {
    respond_with(session, status, content_type, body, &[]).await
}

/// [`respond`] with extra headers. An empty `content_type` sends none, as Ollama does for its
/// empty 200s.
async fn respond_with(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    headers: &[(http::HeaderName, &str)],
) -> Result<()> {
    let head_only = session.req_header().method == Method::HEAD;
    let mut header = ResponseHeader::build(status, Some(2 + headers.len()))?;
    for (name, value) in headers {
        header.insert_header(name.clone(), *value)?;
    }
    if !content_type.is_empty() {
        header.insert_header(http::header::CONTENT_TYPE, content_type)?;
    }
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

async fn respond_error(
    session: &mut Session,
    dialect: Dialect,
    status: u16,
    message: &str,
) -> Result<()> {
    respond_error_with(session, dialect, status, message, &[]).await
}

/// [`respond_error`] with extra headers.
async fn respond_error_with(
    session: &mut Session,
    dialect: Dialect,
    status: u16,
    message: &str,
    headers: &[(http::HeaderName, &str)],
) -> Result<()> {
    let body = dialect::error_body(dialect, status, message);
    respond_with(session, status, JSON, body, headers).await
}
