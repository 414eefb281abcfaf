//! Who is calling: the API key a request presents, checked against the [`KeyStore`], and what
//! that caller may do.
//!
//! Model management is decided on the path alone, compared without regard to case, so no
//! spelling or method of a management path reaches a node without an admin key, whatever the
//! node would make of it.

use std::sync::Arc;
use std::time::SystemTime;

use pingora::http::RequestHeader;

use super::route::normalize;
use crate::keys::{ApiKey, Denied, KeyStore};
use crate::schedule::Priority;

/// Paths that change a node's disk: Ollama's management endpoints.
const ADMIN_PATHS: [&str; 5] = [
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
];
/// Blob uploads, which `ollama create` sends before the model they make.
const ADMIN_PREFIX: &str = "/api/blobs/";

/// The caller of one request.
#[derive(Debug, Clone, Default)]
pub enum Caller {
    /// No keys are configured: everyone may do everything the router serves.
    #[default]
    Anonymous,
    /// A valid key.
    Key(Arc<ApiKey>),
}

impl Caller {
    /// Whether the caller may manage models.
    pub fn is_admin(&self) -> bool {
        match self {
            Self::Anonymous => true,
            Self::Key(key) => key.is_admin(),
        }
    }

    /// Whether the caller may use `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        match self {
            Self::Anonymous => true,
            Self::Key(key) => key.allows_model(model),
        }
    }

    /// Whether the caller is limited to some models (and so must name one).
    pub fn is_model_restricted(&self) -> bool {
        matches!(self, Self::Key(key) if key.models.is_some())
    }

    /// The priority of a request that asked for `asked` (its `X-Ollama-Mesh-Priority`): what it
    /// asked, else its key's; a key's priority is also the highest its requests may ask for,
    /// except with an admin key. Without keys every caller is trusted with any priority.
    pub fn priority(&self, asked: Option<Priority>) -> Priority {
        match self {
            Self::Anonymous => asked.unwrap_or_default(),
            Self::Key(key) if key.is_admin() => asked.unwrap_or(key.priority),
            // Lower in the order is more important: a request may only ask for less.
            Self::Key(key) => asked.map_or(key.priority, |asked| asked.max(key.priority)),
        }
    }

    /// The key, if one was presented.
    pub fn key(&self) -> Option<&Arc<ApiKey>> {
        match self {
            Self::Anonymous => None,
            Self::Key(key) => Some(key),
        }
    }
}

/// The caller of a request with `header`, when `store` holds the accepted keys.
pub fn authenticate(
    store: &KeyStore,
    header: &RequestHeader,
    now: SystemTime,
) -> Result<Caller, Denied> {
    store
        .authenticate_request(&header.headers, now)
        .map(Caller::Key)
}

/// Whether the normalized `path` is, or could be read by some server as, a model-management
/// path: one of them in any case, followed by nothing or by anything but a letter or digit
/// (`/api/pull?`, `/api/pull.json`, `/api/pull/x`; `/api/pulls` is another route), also once
/// decoded again (`/api/%70ull`, from a double-encoded `/api/%2570ull`). The path goes to the
/// node encoded so that it cannot decode it further, but a proxy in between might.
pub fn is_admin_path(path: &str) -> bool {
    let mut path = path.to_owned();
    loop {
        if names_admin_route(&path) {
            return true;
        }
        match normalize(&path) {
            Some(decoded) if decoded != path => path = decoded,
            _ => return false,
        }
    }
}

fn names_admin_route(path: &str) -> bool {
    let starts_with = |prefix: &str| {
        path.get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    ADMIN_PATHS.iter().any(|admin| {
        starts_with(admin) && !path[admin.len()..].starts_with(|c: char| c.is_alphanumeric())
    }) || starts_with(ADMIN_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::api_key;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut header = RequestHeader::build("POST", b"/api/chat", None).unwrap();
        for (name, value) in headers {
            header.insert_header(name.to_string(), *value).unwrap();
        }
        header
    }

    fn store() -> KeyStore {
        let store = KeyStore::default();
        store.replace(vec![api_key("good", "om-good", "")]);
        store
    }

    #[test]
    fn keys_are_read_from_either_header() {
        let now = SystemTime::now();
        let store = store();
        for headers in [
            &[("authorization", "Bearer om-good")][..],
            &[("authorization", "bearer  om-good")],
            &[("x-api-key", "om-good")],
            &[("authorization", "Basic Zm9v"), ("x-api-key", "om-good")],
        ] {
            let caller = authenticate(&store, &request(headers), now).unwrap();
            assert_eq!(caller.key().unwrap().name, "good", "{headers:?}");
        }
        assert_eq!(
            authenticate(&store, &request(&[]), now).unwrap_err(),
            Denied::Missing
        );
        assert_eq!(
            authenticate(&store, &request(&[("authorization", "Bearer ")]), now).unwrap_err(),
            Denied::Missing
        );
        assert_eq!(
            authenticate(&store, &request(&[("x-api-key", "om-bad")]), now).unwrap_err(),
            Denied::Invalid
        );
    }

    #[test]
    fn management_paths_in_any_case() {
        for path in [
            "/api/pull",
            "/API/PULL",
            "/api/Delete",
            "/api/pull?x",
            "/api/pull#",
            "/api/pull ",
            "/api/pull/x",
            "/api/%70ull",
            "/api/%2570ull",
            "/api/blobs/sha256:abc",
        ] {
            assert!(is_admin_path(path), "{path}");
        }
        for path in ["/api/chat", "/api/pulls", "/api/pullé", "/api/blobs", "/"] {
            assert!(!is_admin_path(path), "{path}");
        }
    }
}
