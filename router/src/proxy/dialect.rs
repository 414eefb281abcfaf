//! Errors in the caller's dialect: Ollama's `{"error": "…"}` on the native API, the OpenAI
//! error object on `/v1`, and the final line that ends a stream that failed midway.

use bytes::Bytes;
use serde_json::json;

use super::route::Dialect;

/// An error body for `status` in `dialect`.
pub fn error_body(dialect: Dialect, status: u16, message: &str) -> Bytes {
    let value = match dialect {
        Dialect::Native => json!({ "error": message }),
        Dialect::OpenAi => json!({
            "error": {
                "message": message,
                "type": openai_error_type(status),
                "param": null,
                "code": null,
            }
        }),
    };
    Bytes::from(value.to_string())
}

/// The last piece of a stream that broke after its first byte: an NDJSON error line, as Ollama
/// writes one, or an SSE event holding the OpenAI error object.
pub fn stream_error(dialect: Dialect, message: &str) -> Bytes {
    let body = error_body(dialect, 500, message);
    let mut line = Vec::with_capacity(body.len() + 8);
    match dialect {
        Dialect::Native => {
            line.extend_from_slice(&body);
            line.push(b'\n');
        }
        Dialect::OpenAi => {
            line.extend_from_slice(b"data: ");
            line.extend_from_slice(&body);
            line.extend_from_slice(b"\n\n");
        }
    }
    Bytes::from(line)
}

/// OpenAI's error `type` for a status, as Ollama's compatibility layer maps it.
fn openai_error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_errors_are_a_string() {
        let body: serde_json::Value =
            serde_json::from_slice(&error_body(Dialect::Native, 404, "model 'x' not found"))
                .unwrap();
        assert_eq!(body, json!({"error": "model 'x' not found"}));
    }

    #[test]
    fn openai_errors_are_an_object() {
        let body: serde_json::Value =
            serde_json::from_slice(&error_body(Dialect::OpenAi, 404, "nope")).unwrap();
        assert_eq!(
            body,
            json!({"error": {"message": "nope", "type": "not_found_error", "param": null, "code": null}})
        );
    }

    #[test]
    fn stream_errors_end_the_framing() {
        assert!(stream_error(Dialect::Native, "gone").ends_with(b"}\n"));
        let sse = stream_error(Dialect::OpenAi, "gone");
        assert!(sse.starts_with(b"data: {\"error\":") && sse.ends_with(b"\n\n"));
    }
}
