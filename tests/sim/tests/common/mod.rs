//! A simulator on a free port and a minimal HTTP/1.1 client for black-box tests.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ollama_mesh_sim::{NodeSpec, ServeExit, Simulator};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running in-process simulator.
pub struct Node {
    pub addr: SocketAddr,
    pub sim: Simulator,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<ServeExit>>,
}

impl Node {
    pub async fn start(spec: NodeSpec) -> Node {
        let sim = Simulator::new(spec.build().expect("valid config"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let sim = sim.clone();
            async move {
                sim.serve(listener, async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        Node {
            addr,
            sim,
            stop: Some(stop),
            task,
        }
    }

    /// The default test node: instant time, the tiny model plus an embedding model.
    pub async fn tiny() -> Node {
        Node::start(
            NodeSpec::default()
                .models(["tiny", "nomic-embed-text"])
                .time_scale(0.0),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&str>) -> Reply {
        let resp = self.open(method, path, body, &[]).await;
        Reply::read(resp).await
    }

    /// Sends a request and returns the response head with its body unread.
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> http::Response<Incoming> {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req = req.header("host", self.addr.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .unwrap();
        sender.send_request(req).await.unwrap()
    }

    pub fn stats(&self) -> Value {
        self.sim.stats()
    }

    pub async fn stop(mut self) -> ServeExit {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap()
    }
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub async fn read(resp: http::Response<Incoming>) -> Reply {
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    pub fn lines(&self) -> Vec<Value> {
        self.body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The JSON payloads of SSE `data:` events, and whether the stream ended with `[DONE]`.
    pub fn events(&self) -> (Vec<Value>, bool) {
        assert!(
            self.body.ends_with("\n\n"),
            "SSE events end with a blank line: {:?}",
            self.body
        );
        let mut done = false;
        let mut events = Vec::new();
        for event in self.body.split("\n\n").filter(|e| !e.is_empty()) {
            let data = event
                .strip_prefix("data: ")
                .expect("every event is a data line");
            assert!(!done, "nothing follows [DONE]");
            if data == "[DONE]" {
                done = true;
            } else {
                events.push(serde_json::from_str(data).unwrap());
            }
        }
        (events, done)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Polls `check` every 10 ms for up to `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}
