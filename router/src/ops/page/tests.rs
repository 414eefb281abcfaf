use std::sync::Arc;

use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::Value;

use super::*;
use crate::ops::nodes::ChangeLog;
use crate::testing::{instance, set};

/// A model name written to close the data element and run a script of its own.
const HOSTILE: &str = "</script><script>alert(1)</script><!--&";

async fn page(set: crate::BackendSet) -> (http::HeaderMap, String) {
    let set = Arc::new(set);
    let changes = ChangeLog::default();
    changes.update(&set);
    let scheduler = crate::Scheduler::new(
        crate::testing::TestFleet::new(crate::BackendSet::default()),
        Default::default(),
    );
    let response = render(&changes.describe(&set, &scheduler));
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (headers, String::from_utf8(body.to_vec()).unwrap())
}

/// The text of the first element opened by `open`, up to `close`.
fn element<'a>(page: &'a str, open: &str, close: &str) -> &'a str {
    let start = page.find(open).unwrap_or_else(|| panic!("no {open}")) + open.len();
    let len = page[start..]
        .find(close)
        .unwrap_or_else(|| panic!("no {close}"));
    &page[start..start + len]
}

#[tokio::test]
async fn the_page_carries_the_nodes_and_no_value_can_leave_its_element() {
    let (headers, page) = page(set(&[
        instance("a").on_disk(&["llama3.2:3b", HOSTILE]),
        instance("b").foreign(),
    ]))
    .await;
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert!(!page.contains("{{"), "every slot is filled");
    assert!(!page.contains(HOSTILE), "the name is escaped");
    assert_eq!(
        page.matches("</script>").count(),
        2,
        "the data and the script"
    );

    let data = element(
        &page,
        r#"<script type="application/json" id="initial">"#,
        "</script>",
    );
    let nodes: Value = serde_json::from_str(data).unwrap();
    assert_eq!(nodes[0]["id"], "a");
    let names = nodes[0]["models"]["on_disk"]["names"].as_array().unwrap();
    assert!(names.contains(&Value::from(HOSTILE)), "{names:?}");
    assert_eq!(nodes[1]["id"], "b");
}

#[tokio::test]
async fn the_policy_allows_exactly_the_inline_style_and_script() {
    let (headers, page) = page(set(&[instance("a")])).await;
    let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(policy.starts_with("default-src 'none';"), "{policy}");
    let style = element(&page, "<style>", "</style>");
    let script = element(&page, "<script>", "</script>");
    assert!(script.contains("v1/mesh/nodes"), "the live script");
    assert!(
        policy.contains(&format!("style-src '{}'", csp_hash(style))),
        "{policy}"
    );
    assert!(
        policy.contains(&format!("script-src '{}'", csp_hash(script))),
        "{policy}"
    );
    assert!(policy.contains("connect-src 'self'"), "{policy}");
}

#[test]
fn script_safe_escapes_only_what_html_reads() {
    assert_eq!(
        script_safe(r#"{"a":"</script>&"}"#),
        r#"{"a":"\u003c/script\u003e\u0026"}"#
    );
    assert_eq!(script_safe(r#"["é",1]"#), r#"["é",1]"#);
}
