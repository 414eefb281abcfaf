//! The request phase (`request_filter`): who the caller is, what they ask for, and the answers
//! the router gives itself, including "no node can take this" from the scheduler.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::Method;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::body::{self, BodyBuffer, Inspection, ModelInBody};
use super::completion::CompletionScanner;
use super::context::RequestContext;
use super::respond::{
    declared_length, respond, respond_error, respond_error_with, respond_unscheduled, JSON,
};
use super::route::{Dialect, Management, Route};
use super::views::{self, View};
use super::{auth, large_body, MeshProxy, NODE_HEADER};
use crate::schedule::{Ask, Priority, Residency, ScheduleError, PRIORITY_HEADER};
use ollama_mesh_consul::contract::meta::canonical_model_name;

impl MeshProxy {
    /// Lets the caller in, or answers 401 (no or a bad key), 403 (a management path without
    /// an admin key) or 429 (the key's limits); returns whether the request is done.
    pub(super) async fn admit(
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

    /// Refuses a body its `Content-Length` already says is too large, before reading any of it.
    pub(super) async fn refuse_declared_size(
        &self,
        session: &mut Session,
        dialect: Dialect,
    ) -> Result<bool> {
        let limit = self.settings.max_body_size;
        match declared_length(session) {
            Some(length) if length > limit as u64 => {
                let message =
                    format!("request body is larger than {limit} bytes ({length} declared)");
                respond_error(session, dialect, 413, &message).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Answers what the router answers itself; returns whether the request is done.
    pub(super) async fn answer_locally(
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
                        let error = ScheduleError::NoneAvailable;
                        respond_error(session, dialect, 503, &error.to_string()).await?;
                    }
                }
                return Ok(true);
            }
            Route::Tags => View::Tags,
            Route::Ps => View::Ps,
            Route::OpenAiModels => View::OpenAiModels,
            Route::OpenAiModel(model) => {
                ctx.model = Some(model.clone());
                ctx.ask = Some(self.ask(session, ctx, Ask::lookup(model))?);
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

    /// `base` with the caller's priority and key.
    fn ask(&self, session: &Session, ctx: &RequestContext, base: Ask) -> Result<Ask> {
        let asked = session
            .get_header(PRIORITY_HEADER)
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<Priority>().ok())
                    .ok_or_else(|| {
                        Error::explain(
                            ErrorType::HTTPStatus(400),
                            format!(
                                "{PRIORITY_HEADER} must be critical, standard or sheddable, not {value:?}"
                            ),
                        )
                    })
            })
            .transpose()?;
        Ok(Ask {
            priority: ctx.caller.priority(asked),
            key: ctx.caller.key().map(|k| k.name.as_str().into()),
            ..base
        })
    }

    /// Reads the body to find the model, then chooses a node for it.
    async fn read_model(&self, session: &mut Session, ctx: &mut RequestContext) -> Result<bool> {
        ctx.completion = Some(CompletionScanner::default());
        if let Some(forwarded) = large_body::forwarded(session) {
            // The parent request read the body already and streams it to this subrequest.
            ctx.request_id.clone_from(&forwarded.request_id);
            ctx.model.clone_from(&forwarded.model);
            ctx.ask = forwarded.ask;
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
        let Inspection {
            model,
            conversation,
        } = body::inspect(&body);
        if let ModelInBody::Named(model) = model {
            let ask = if !ctx.route.runs_model() {
                Ask::lookup(&model)
            } else {
                Ask {
                    residency: Some(Residency {
                        model: canonical_model_name(&model),
                        runner: conversation.runner,
                    }),
                    affinity: conversation.affinity,
                    prompt_tokens: conversation.prompt_tokens,
                    fresh_tokens: conversation.fresh_tokens,
                    model: Some(model.clone()),
                    ..Ask::default()
                }
            };
            ctx.ask = Some(self.ask(session, ctx, ask)?);
            ctx.model = Some(model);
        } else if ctx.caller.is_model_restricted() {
            // Without a model the request would go to any node, which might read one this
            // router could not (a duplicated field, say) and run it.
            let message =
                "this API key may use only some models; the request must name one in a JSON body";
            respond_error(session, ctx.route.dialect(), 400, message).await?;
            return Ok(true);
        }
        if session.as_ref().retry_buffer_truncated() {
            // Pingora replays at most 64 KiB of a body it has already read; a larger one goes
            // through a subrequest fed from memory, which is scheduled there and streams its
            // response back here.
            ctx.completion = None;
            ctx.forwarded_to_subrequest = true;
            large_body::forward(session, ctx, body).await?;
            return Ok(true);
        }
        self.choose_early(session, ctx).await
    }

    /// Schedules the first attempt now, so that "no such model" or "the queue is full" is
    /// answered in the caller's dialect before anything is sent upstream. While the request
    /// waits at the router for a slot, a client that hangs up takes it out of the queue.
    async fn choose_early(&self, session: &mut Session, ctx: &mut RequestContext) -> Result<bool> {
        if let Some(model) = ctx.model.as_deref() {
            if !ctx.caller.allows_model(model) {
                let message = format!("model '{model}' is not allowed for this API key");
                respond_error(session, ctx.route.dialect(), 403, &message).await?;
                return Ok(true);
            }
        }
        let ask = ctx.ask.clone().unwrap_or_default();
        let acquired = tokio::select! {
            acquired = self.scheduler.acquire(ask, &ctx.tried) => acquired,
            gone = client_gone(session) => return Err(gone),
        };
        let error = match acquired {
            Ok(permit) => {
                ctx.chosen = Some(permit);
                return Ok(false);
            }
            Err(error) => error,
        };
        let set = self.fleet.backends();
        if let (ScheduleError::ModelNotFound { model, .. }, false) = (&error, set.is_empty()) {
            // Meta may lag a model pulled or copied a moment ago: ask the nodes before a 404.
            if let Some(node) = self.lookup.nodes_with(&set, model).await.into_iter().next() {
                ctx.chosen = Some(self.scheduler.direct(node));
                return Ok(false);
            }
        }
        respond_unscheduled(session, &ctx.route, &error).await?;
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
                ctx.chosen = Some(self.scheduler.direct(backend.clone()));
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

/// Resolves when the client of `session` goes away (its body has been read): the error to end
/// the request with.
async fn client_gone(session: &mut Session) -> Box<Error> {
    match session.downstream_session.read_body_or_idle(true).await {
        Err(error) => error,
        // Anything else is a client sending after its request: nothing to act on while waiting.
        Ok(_) => std::future::pending().await,
    }
}
