//! Which kind of request this is, decided from the method and the normalized path.
//!
//! Paths are normalized before matching (percent-decoding, `//`, `.` and `..` segments, a
//! trailing `/`), and the normalized path is what goes upstream, re-encoded ([`encode`]) so
//! that the node, which decodes it once more, reads exactly the path classified here: a
//! double-encoded `%2570` or an encoded `?` cannot turn into another route on the node.

use http::Method;

/// Which error format the caller speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Ollama's native API: `{"error": "…"}`, NDJSON streams.
    Native,
    /// The OpenAI-compatible API under `/v1`: `{"error": {"message": …}}`, SSE streams.
    OpenAi,
}

/// Ollama's model-management endpoints; each changes a node's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Management {
    /// `POST /api/pull`
    Pull,
    /// `POST /api/push`
    Push,
    /// `POST /api/create`
    Create,
    /// `POST /api/copy`
    Copy,
    /// `DELETE /api/delete`
    Delete,
}

/// What the router does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET|HEAD /`: "Ollama is running".
    Root,
    /// `GET|HEAD /api/version`.
    Version,
    /// `GET|HEAD /api/tags`: models on disk across the fleet.
    Tags,
    /// `GET /api/ps`: models loaded across the fleet.
    Ps,
    /// `GET /v1/models`.
    OpenAiModels,
    /// `GET /v1/models/:model`: sent to a node that has the model.
    OpenAiModel(String),
    /// A `POST` whose JSON body names the model (generate, chat, embed, show, `/v1/*`).
    ModelRouted {
        /// Metric label.
        label: &'static str,
        /// Error format.
        dialect: Dialect,
    },
    /// A model-management endpoint.
    Management(Management),
    /// Anything else: forwarded to any node, which answers as Ollama does (404, 405, …).
    Other,
}

impl Route {
    /// Classifies a request by its method and normalized path.
    pub fn classify(method: &Method, path: &str) -> Self {
        let get = method == Method::GET || method == Method::HEAD;
        let post = method == Method::POST;
        match path {
            "/" if get => Self::Root,
            "/api/version" if get => Self::Version,
            "/api/tags" if get => Self::Tags,
            "/api/ps" if method == Method::GET => Self::Ps,
            "/v1/models" if method == Method::GET => Self::OpenAiModels,
            "/api/generate" if post => native("generate"),
            "/api/chat" if post => native("chat"),
            "/api/embed" if post => native("embed"),
            "/api/embeddings" if post => native("embeddings"),
            "/api/show" if post => native("show"),
            "/v1/chat/completions" if post => openai("chat_completions"),
            "/v1/completions" if post => openai("completions"),
            "/v1/embeddings" if post => openai("openai_embeddings"),
            "/api/pull" if post => Self::Management(Management::Pull),
            "/api/push" if post => Self::Management(Management::Push),
            "/api/create" if post => Self::Management(Management::Create),
            "/api/copy" if post => Self::Management(Management::Copy),
            "/api/delete" if method == Method::DELETE => Self::Management(Management::Delete),
            _ => match path.strip_prefix("/v1/models/") {
                Some(model) if method == Method::GET && !model.is_empty() => {
                    Self::OpenAiModel(model.to_owned())
                }
                _ => Self::Other,
            },
        }
    }

    /// A short, bounded name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Version => "version",
            Self::Tags => "tags",
            Self::Ps => "ps",
            Self::OpenAiModels | Self::OpenAiModel(_) => "openai_models",
            Self::ModelRouted { label, .. } => label,
            Self::Management(m) => m.label(),
            Self::Other => "other",
        }
    }

    /// Whether a request on this route runs its model (and so needs a slot): every model-routed
    /// route but `/api/show`, which only reads about it.
    pub fn runs_model(&self) -> bool {
        matches!(self, Self::ModelRouted { label, .. } if *label != "show")
    }

    /// Whether the router reads this route's body itself (to learn the model, or to send it to
    /// every node), so `--max-body-size` applies to it.
    pub fn reads_body(&self) -> bool {
        matches!(self, Self::ModelRouted { .. } | Self::Management(_))
    }

    /// The error format of this route's callers.
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::OpenAiModels | Self::OpenAiModel(_) => Dialect::OpenAi,
            Self::ModelRouted { dialect, .. } => *dialect,
            _ => Dialect::Native,
        }
    }
}

impl Management {
    /// Metric label and the path's last segment.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Push => "push",
            Self::Create => "create",
            Self::Copy => "copy",
            Self::Delete => "delete",
        }
    }
}

fn native(label: &'static str) -> Route {
    Route::ModelRouted {
        label,
        dialect: Dialect::Native,
    }
}

fn openai(label: &'static str) -> Route {
    Route::ModelRouted {
        label,
        dialect: Dialect::OpenAi,
    }
}

/// Normalizes a request path: percent-decodes it, collapses repeated `/`, resolves `.` and `..`
/// (never above the root) and drops a trailing `/`. Returns `None` for a path that does not
/// decode to UTF-8 or contains control characters.
pub fn normalize(path: &str) -> Option<String> {
    let decoded = percent_decode(path)?;
    if decoded.chars().any(char::is_control) {
        return None;
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    Some(format!("/{}", segments.join("/")))
}

/// The normalized `path` as it goes upstream: every byte a path segment may not carry
/// literally (RFC 3986 `pchar`), `%` included, percent-encoded, so decoding it gives `path`
/// back.
pub fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &byte in path.as_bytes() {
        let literal = byte.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&byte);
        if literal {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_ollama_routes() {
        assert_eq!(Route::classify(&Method::GET, "/"), Route::Root);
        assert_eq!(Route::classify(&Method::HEAD, "/api/tags"), Route::Tags);
        assert_eq!(Route::classify(&Method::GET, "/api/ps"), Route::Ps);
        assert_eq!(
            Route::classify(&Method::POST, "/api/chat").dialect(),
            Dialect::Native
        );
        assert_eq!(
            Route::classify(&Method::POST, "/v1/chat/completions").dialect(),
            Dialect::OpenAi
        );
        assert_eq!(
            Route::classify(&Method::GET, "/v1/models/llama3.2:3b"),
            Route::OpenAiModel("llama3.2:3b".into())
        );
        assert_eq!(
            Route::classify(&Method::DELETE, "/api/delete"),
            Route::Management(Management::Delete)
        );
        assert_eq!(
            Route::classify(&Method::GET, "/api/chat"),
            Route::Other,
            "wrong method: Ollama answers 405"
        );
        assert_eq!(Route::classify(&Method::POST, "/api/nope"), Route::Other);
    }

    #[test]
    fn normalization_closes_spellings_of_a_route() {
        for spelling in [
            "/api/pull",
            "//api/pull",
            "/api/./pull",
            "/api/x/../pull",
            "/api/%70ull",
            "/api/pull/",
            "/../api/pull",
        ] {
            assert_eq!(
                normalize(spelling).as_deref(),
                Some("/api/pull"),
                "{spelling}"
            );
        }
        assert_eq!(normalize("/").as_deref(), Some("/"));
        for (once, upstream) in [
            ("/api/%2570ull", "/api/%2570ull"),
            ("/api/pull%3Fx", "/api/pull%3Fx"),
            ("/api/pull%23", "/api/pull%23"),
            ("/v1/models/llama3.2%3A3b", "/v1/models/llama3.2:3b"),
            ("/api/caf%C3%A9", "/api/caf%C3%A9"),
        ] {
            let normalized = normalize(once).unwrap();
            let sent = encode(&normalized);
            assert_eq!(sent, upstream, "{once}");
            assert_eq!(
                normalize(&sent).unwrap(),
                normalized,
                "the node reads {once} as classified"
            );
        }
        assert_eq!(normalize("/api/%zz"), None);
        assert_eq!(normalize("/api/%00pull"), None);
    }
}
