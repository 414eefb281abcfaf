use http_body_util::BodyExt as _;

use super::*;

async fn body(response: Response<Full<Bytes>>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn metrics_are_the_default_registry_in_text_format() {
    ollama_mesh_connect::metrics::denied("metrics-endpoint-test");
    let response = respond(&Request::get("/metrics").body(()).unwrap());
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        prometheus::TEXT_FORMAT
    );
    let text = body(response).await;
    assert!(
        text.contains(r#"ollama_mesh_connect_denied_total{source="metrics-endpoint-test"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() {
    let response = respond(&Request::get("/").body(()).unwrap());
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(body(response).await.contains("/metrics"));
    let response = respond(&Request::post("/metrics").body(()).unwrap());
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
}

#[tokio::test]
async fn serves_over_http_and_a_taken_port_names_the_flag() {
    let addr: SocketAddr = ([127, 0, 0, 1], ollama_mesh_test_support::free_port()).into();
    let _server = start(addr).await.unwrap();
    let (status, text) = ollama_mesh_test_support::http::get(addr, "/metrics")
        .await
        .expect("an answer");
    assert_eq!(status, 200);
    assert!(text.is_empty() || text.contains("# TYPE"), "{text}");
    assert_eq!(
        ollama_mesh_test_support::http::get(addr, "/nope")
            .await
            .map(|(s, _)| s),
        Some(404)
    );

    let Err(error) = start(addr).await else {
        panic!("bound a port that is taken");
    };
    assert!(
        error.to_string().starts_with("--metrics-listen: "),
        "{error}"
    );
}
