//! Hostile input at the edge, over raw TCP where a well-behaved client library would not send
//! it: request smuggling, oversized heads, slow clients, and headers a node must never see.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ollama_mesh_router::proxy::ProxySettings;
use ollama_mesh_test_support::SimNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends `raw` and reads until the router closes the connection (or `limit` passes).
async fn exchange(router: &Router, raw: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(router.addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_lines(answer: &str) -> Vec<&str> {
    answer
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect()
}

async fn anonymous_router() -> (Router, SimNode) {
    let a = SimNode::with_models(&["llama3.2:3b"]).await;
    let router = Router::start(
        vec![entry("a", a.addr(), &["llama3.2:3b"], &[], 1)],
        settings(),
    )
    .await;
    (router, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_cannot_smuggle_a_second_request() {
    let (router, _a) = anonymous_router().await;
    let limit = Duration::from_secs(5);

    // Transfer-Encoding wins over Content-Length (RFC 9112 §6.1), and the connection is closed
    // after the answer, so the bytes behind the chunked body are never read as a request.
    let both = exchange(
        &router,
        b"POST /api/show HTTP/1.1\r\nHost: r\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /api/tags HTTP/1.1\r\nHost: r\r\n\r\n",
        limit,
    )
    .await;
    assert_eq!(status_lines(&both).len(), 1, "{both}");

    for (what, raw) in [
        (
            "two different Content-Lengths",
            &b"POST /api/chat HTTP/1.1\r\nHost: r\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}"[..],
        ),
        (
            "a final Transfer-Encoding other than chunked",
            b"POST /api/chat HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            b"POST /api/chat HTTP/1.0\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ] {
        let answer = exchange(&router, raw, limit).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{what}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_slow_clients_are_cut_off() {
    let a = SimNode::with_models(&["llama3.2:3b"]).await;
    let router = Router::start(
        vec![entry("a", a.addr(), &["llama3.2:3b"], &[], 1)],
        ProxySettings {
            client_timeout: Duration::from_secs(1),
            max_header_size: 8 << 10,
            ..settings()
        },
    )
    .await;
    let big = format!(
        "GET /api/tags HTTP/1.1\r\nHost: r\r\nConnection: close\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(10 << 10)
    );
    let answer = exchange(&router, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A body that stops halfway: the router gives up after the client timeout.
    let started = Instant::now();
    let stalled = exchange(
        &router,
        b"POST /api/chat HTTP/1.1\r\nHost: r\r\nContent-Length: 100\r\n\r\n{\"model\":",
        Duration::from_secs(10),
    )
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a stalled client held the connection for {took:?}: {stalled}"
    );
    assert_eq!(requests_on(&a), 0);
}

/// A node that records the head of every request it gets and answers `{}`.
async fn recording_node() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1
                {
                    head.push(byte[0]);
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).to_lowercase());
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
                let _ = stream.write_all(answer).await;
            });
        }
    });
    (addr, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_never_see_keys_hop_by_hop_or_internal_headers_of_users() {
    let (node, heads) = recording_node().await;
    let keys = key_store(&[
        ("user", "om-user", ""),
        ("admin", "om-admin", r#", "scope": "admin""#),
    ]);
    let router = Router::with_keys(vec![entry("n", node, &[], &[], 1)], settings(), keys).await;
    let sent = |secret: &'static str| {
        format!(
            "GET /api/anything HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {secret}\r\n\
             X-API-Key: {secret}\r\nX-Ollama-Mesh-Debug: 1\r\nConnection: close, X-Private\r\n\
             X-Private: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\
             TE: trailers\r\nX-Kept: 1\r\n\r\n"
        )
    };
    for secret in ["om-user", "om-admin"] {
        let answer = exchange(&router, sent(secret).as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for head in &heads {
        assert!(head.contains("x-kept: 1"), "{head}");
        let names: Vec<&str> = head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':').map(|(name, _)| name))
            .collect();
        for gone in [
            "authorization",
            "x-api-key",
            "x-private",
            "keep-alive",
            "proxy-authorization",
            "te",
        ] {
            assert!(!names.contains(&gone), "{gone} reached the node: {head}");
        }
        assert!(
            !head.contains("om-user") && !head.contains("om-admin"),
            "{head}"
        );
    }
    assert!(
        !heads[0].contains("x-ollama-mesh-debug"),
        "a user's internal header is dropped"
    );
    assert!(
        heads[1].contains("x-ollama-mesh-debug: 1"),
        "an admin's is passed on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_the_path_as_classified() {
    let (node, heads) = recording_node().await;
    let router = Router::start(vec![entry("n", node, &[], &[], 1)], settings()).await;
    // Decoded once by the router to `/api/x%70ull?`; a node decoding what it gets must read
    // exactly that, not `/api/xpull` with a query.
    let raw = b"GET /api/x%2570ull%3F HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n";
    let answer = exchange(&router, raw, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let heads = heads.lock().unwrap().clone();
    assert!(
        heads[0].starts_with("get /api/x%2570ull%3f http/1.1"),
        "{}",
        heads[0]
    );
}

/// Sends one keep-alive request on `stream` and returns the status of its answer.
async fn keep_alive_get(stream: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: router\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // Small answers with a Content-Length: read until the head and the body are in.
    while !answer.windows(4).any(|w| w == b"\r\n\r\n")
        || !answer.ends_with(b"running") && !answer.ends_with(b"}")
    {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_until_one_closes() {
    let a = SimNode::with_models(&["llama3.2:3b"]).await;
    let router = Router::start(
        vec![entry("a", a.addr(), &["llama3.2:3b"], &[], 1)],
        ProxySettings {
            max_connections: 2,
            ..settings()
        },
    )
    .await;
    let mut first = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    assert_eq!(keep_alive_get(&mut first).await, 200);
    assert_eq!(keep_alive_get(&mut second).await, 200);
    // Kept alive, both still hold their places: a second request on one needs no new place.
    assert_eq!(keep_alive_get(&mut first).await, 200);

    let mut third = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    assert_eq!(keep_alive_get(&mut third).await, 503);

    drop(first);
    let started = std::time::Instant::now();
    loop {
        let mut next = tokio::net::TcpStream::connect(router.addr).await.unwrap();
        if keep_alive_get(&mut next).await == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a closed connection never freed its place"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
