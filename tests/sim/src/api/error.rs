//! Error responses in Ollama's two dialects: `{"error":"…"}` natively and the OpenAI error
//! object on `/v1` (openai/openai.go:225-237).

use http::StatusCode;
use serde_json::json;

use super::body::{self, content_type, Response};
use crate::scheduler::SchedError;

/// Which API a request came through, deciding how errors and JSON are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `/api/*`.
    Native,
    /// `/v1/*`.
    OpenAi,
}

/// An error answered before the first byte of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Message, Ollama's text where it has one.
    pub message: String,
    /// Raised by Ollama's OpenAI middleware itself (unreadable body, empty `messages`), which
    /// answers through gin's `AbortWithStatusJSON` and so adds `; charset=utf-8`.
    middleware: bool,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            middleware: false,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// Marks the error as raised by the OpenAI middleware rather than the handler behind it.
    pub fn raised_by_middleware(self) -> Self {
        Self {
            middleware: true,
            ..self
        }
    }

    /// The response in the dialect of `flavor`.
    pub fn respond(&self, flavor: Flavor) -> Response {
        match flavor {
            Flavor::Native => body::json(
                self.status,
                content_type::JSON,
                &json!({ "error": self.message }),
            ),
            Flavor::OpenAi => {
                let kind = match self.status {
                    StatusCode::BAD_REQUEST => "invalid_request_error",
                    StatusCode::NOT_FOUND => "not_found_error",
                    _ => "api_error",
                };
                let error = json!({ "error": { "message": self.message, "type": kind, "param": null, "code": null } });
                let content_type = if self.middleware {
                    content_type::JSON
                } else {
                    content_type::OPENAI_JSON
                };
                body::json(self.status, content_type, &error)
            }
        }
    }
}

impl From<SchedError> for ApiError {
    fn from(e: SchedError) -> Self {
        match e {
            SchedError::QueueFull => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}
