//! Request bodies larger than Pingora's 64 KiB replay buffer.
//!
//! The router must read a body to learn its model before choosing a backend, and Pingora can
//! only send on what it buffered for retries (64 KiB). A larger body (a long conversation, a
//! big prompt, images) is handed to a Pingora subrequest that runs this same proxy with the body
//! fed from memory; the subrequest's response is piped back to the client as it streams. The
//! subrequest learns the model and request ID from [`Forwarded`] instead of reading the body.

use bytes::Bytes;
use pingora::proxy::subrequest::pipe::{pipe_subrequest, InputBody, InputBodyType};
use pingora::proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::RequestContext;
use crate::schedule::Ask;

/// What the parent request learned from the body.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub model: Option<String>,
    pub ask: Option<Ask>,
    pub request_id: String,
}

/// The parent's findings, when `session` is a subrequest made by [`forward`].
pub fn forwarded(session: &Session) -> Option<Forwarded> {
    session
        .subrequest_ctx
        .as_ref()?
        .user_ctx()?
        .downcast_ref::<Forwarded>()
        .cloned()
}

/// Proxies the request through a subrequest carrying `body`, writing its response to `session`.
pub async fn forward(session: &mut Session, ctx: &RequestContext, body: Bytes) -> Result<()> {
    let spawner = session
        .subrequest_spawner
        .as_ref()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "subrequests are not enabled"))?;
    let sub_ctx = SubrequestCtx::builder()
        .body_mode(BodyMode::ExpectBody)
        .user_ctx(Box::new(Forwarded {
            model: ctx.model.clone(),
            ask: ctx.ask.clone(),
            request_id: ctx.request_id.clone(),
        }))
        .build();
    let (subrequest, handle) = spawner.create_subrequest(session.as_downstream(), sub_ctx);
    let input = InputBodyType::Preset(InputBody::Bytes(vec![body]));
    match pipe_subrequest(session, subrequest, handle, |task| Ok(Some(task)), input).await {
        Ok(_) => Ok(()),
        Err(failure) => Err(failure.error),
    }
}
