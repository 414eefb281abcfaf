use std::time::{Duration, Instant};

use ollama_mesh_test_support::SimNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A server on a free port answering every connection with `answer` (`None`: never answers).
async fn server(answer: Option<&'static [u8]>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                match answer {
                    Some(answer) => {
                        let _ = stream.write_all(answer).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn reads_a_nodes_version_models_on_disk_and_models_loaded() {
    let node = SimNode::with_models(&["llama3.2:3b", "qwen2.5:7b"]).await;
    let client = NodeClient::http();
    let limit = Duration::from_secs(5);
    let answer = client
        .send(
            Request::post(format!("{}/api/generate", node.url()))
                .body(Full::from(r#"{"model":"qwen2.5:7b","stream":false}"#))
                .unwrap(),
            limit,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);

    let state = client
        .read_state(&format!("{}/", node.url()), limit)
        .await
        .unwrap();
    assert_eq!(state.version, "0.17.4");
    assert_eq!(state.models_on_disk, ["llama3.2:3b", "qwen2.5:7b"]);
    assert_eq!(state.models_loaded.len(), 1);
    assert_eq!(state.models_loaded[0].name, "qwen2.5:7b");
    assert!(state.models_loaded[0].size_vram > 0);
}

#[tokio::test]
async fn says_why_a_node_gave_no_usable_answer() {
    let client = NodeClient::http();
    let limit = Duration::from_millis(300);

    let closed = format!("http://127.0.0.1:{}", ollama_mesh_test_support::free_port());
    let error = client.read_state(&closed, limit).await.unwrap_err();
    assert!(matches!(error, AskError::Unreachable { .. }), "{error}");
    assert!(
        error.to_string().contains("Connection refused"),
        "the cause is in the text: {error}"
    );

    let silent = server(None).await;
    let started = Instant::now();
    let error = client.get(&silent, limit).await.unwrap_err();
    assert!(matches!(error, AskError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let missing = server(Some(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")).await;
    let error = client.read_state(&missing, limit).await.unwrap_err();
    assert!(
        matches!(
            error,
            AskError::Status {
                status: StatusCode::NOT_FOUND,
                ..
            }
        ),
        "{error}"
    );
    // Any status is an answer to a plain GET.
    assert_eq!(
        client.get(&missing, limit).await.unwrap().status,
        StatusCode::NOT_FOUND
    );

    let html = server(Some(
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\n<html>hi!",
    ))
    .await;
    let error = client.read_state(&html, limit).await.unwrap_err();
    assert!(matches!(error, AskError::Garbage { .. }), "{error}");
    assert!(error
        .to_string()
        .contains("did not answer like Ollama's API"));

    let error = client.get("http://bad url/", limit).await.unwrap_err();
    assert!(matches!(error, AskError::Request { .. }), "{error}");
}
