//! `GET /`: the fleet page, a live table of `/v1/mesh/nodes` for people (as Traefik's dashboard
//! or HAProxy's stats page are for theirs).
//!
//! One self-contained HTML document, embedded in the binary: no external assets, so it works
//! offline and on an air-gapped cluster. The router writes the current nodes into the page, so
//! the first paint needs no second request; a small inline script renders them and then polls
//! `/v1/mesh/nodes` every 2 s.
//!
//! The page is served with a Content-Security-Policy that allows only its own inline style and
//! script (by hash) and requests to the ops listener itself. The script already inserts every
//! value as text, never as markup; the policy makes sure a Meta value crafted as HTML could not
//! run even if that ever regressed.

use std::sync::LazyLock;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;

use super::nodes::NodeReport;
use crate::keys::sha256;

const TEMPLATE: &str = include_str!("page/page.html");
const STYLE: &str = include_str!("page/page.css");
const SCRIPT: &str = include_str!("page/page.js");

/// Where the template takes the style, the script and the nodes' JSON.
const STYLE_SLOT: &str = "{{style}}";
const SCRIPT_SLOT: &str = "{{script}}";
const NODES_SLOT: &str = "{{nodes}}";

/// The page around the nodes' JSON, and the policy that lets its inline style and script run.
struct Shell {
    before: String,
    after: String,
    policy: HeaderValue,
}

static SHELL: LazyLock<Shell> = LazyLock::new(|| {
    let page = TEMPLATE
        .replacen(STYLE_SLOT, STYLE, 1)
        .replacen(SCRIPT_SLOT, SCRIPT, 1);
    let (before, after) = page
        .split_once(NODES_SLOT)
        .expect("the page template has a slot for the nodes");
    let policy = format!(
        "default-src 'none'; style-src '{}'; script-src '{}'; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        csp_hash(STYLE),
        csp_hash(SCRIPT)
    );
    Shell {
        before: before.to_owned(),
        after: after.to_owned(),
        policy: HeaderValue::try_from(policy).expect("the policy is ASCII"),
    }
});

/// A CSP source expression allowing the inline element whose text is `text`.
fn csp_hash(text: &str) -> String {
    let digest = base64::engine::general_purpose::STANDARD.encode(sha256(text.as_bytes()));
    format!("sha256-{digest}")
}

/// The page showing `nodes`.
pub(super) fn render(nodes: &[NodeReport]) -> Response<Full<Bytes>> {
    let shell = &*SHELL;
    // Plain strings and numbers cannot fail to encode; were it ever to, an empty table that
    // the first refresh fills beats no page.
    let json = serde_json::to_string(nodes).unwrap_or_else(|_| "[]".to_owned());
    let mut page = String::with_capacity(shell.before.len() + json.len() + shell.after.len());
    page.push_str(&shell.before);
    page.push_str(&script_safe(&json));
    page.push_str(&shell.after);

    let mut response = Response::new(Full::new(Bytes::from(page)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, shell.policy.clone());
    // The page is a snapshot of the fleet: never show a cached one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `json` made safe inside a `<script>` element: `<`, `>` and `&` only occur inside JSON
/// strings, where their `\u` escapes mean the same, and without them no value can close the
/// element (`</script>`) or open a comment that changes how the HTML parser reads it.
fn script_safe(json: &str) -> String {
    let mut safe = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => safe.push_str("\\u003c"),
            '>' => safe.push_str("\\u003e"),
            '&' => safe.push_str("\\u0026"),
            c => safe.push(c),
        }
    }
    safe
}

#[cfg(test)]
mod tests;
