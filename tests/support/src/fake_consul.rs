//! A scripted stand-in for Consul's HTTP API, for faults a real agent cannot produce on demand.
//!
//! It speaks raw HTTP/1.1 over TCP (one request per connection, `Connection: close`) so it can
//! also misbehave in ways a well-formed server library would refuse to: bodies shorter than
//! their `Content-Length`, answers that never come.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ollama_mesh_daemon::AbortOnDrop;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// `GET`, `PUT`, …
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The raw query string (empty when none).
    pub query: String,
    /// Request headers, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    /// The value of query parameter `name`, if present (`Some("")` for a bare flag).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    /// The blocking index the request asked for (0 when none).
    pub fn index(&self) -> u64 {
        self.query_param("index")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the fake answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A JSON body with `X-Consul-Index`.
    Json {
        /// Status code.
        status: u16,
        /// `X-Consul-Index`.
        index: u64,
        /// The body.
        body: String,
    },
    /// Wait this long, then answer like `then`.
    Delay(Duration, Box<Reply>),
    /// Never answer (until the client gives up).
    Stall,
    /// Declare `body`'s full length but send only its first half, then close.
    Truncated {
        /// `X-Consul-Index`.
        index: u64,
        /// The body that is cut.
        body: String,
    },
}

impl Reply {
    /// 200 with `body` and `index`.
    pub fn ok(index: u64, body: impl Into<String>) -> Self {
        Self::Json {
            status: 200,
            index,
            body: body.into(),
        }
    }

    /// `status` with a plain error text, as Consul sends errors.
    pub fn status(status: u16, index: u64, text: &str) -> Self {
        Self::Json {
            status,
            index,
            body: text.to_owned(),
        }
    }
}

type Handler = dyn Fn(&SeenRequest) -> Reply + Send + Sync;

/// A running fake, stopped on drop.
pub struct FakeConsul {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    _task: AbortOnDrop<()>,
}

impl FakeConsul {
    /// Starts a fake on a free loopback port that answers every request with `handler`.
    pub async fn start(handler: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake consul");
        let addr = listener.local_addr().expect("fake consul address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = seen.clone();
        let task = AbortOnDrop::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(serve(stream, handler, recorded));
            }
        });
        Self {
            addr,
            seen,
            _task: task,
        }
    }

    /// The address, as `CONSUL_HTTP_ADDR` takes it.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("requests lock").clone()
    }
}

async fn serve(mut stream: TcpStream, handler: Arc<Handler>, seen: Arc<Mutex<Vec<SeenRequest>>>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    seen.lock().expect("requests lock").push(request.clone());
    let mut reply = handler(&request);
    loop {
        match reply {
            Reply::Delay(delay, then) => {
                tokio::time::sleep(delay).await;
                reply = *then;
            }
            Reply::Stall => {
                // Hold the connection open without answering until the client hangs up.
                let mut buf = [0u8; 64];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                return;
            }
            Reply::Json {
                status,
                index,
                body,
            } => {
                let head = response_head(status, index, body.len());
                let _ = stream.write_all(format!("{head}{body}").as_bytes()).await;
                return;
            }
            Reply::Truncated { index, body } => {
                let head = response_head(200, index, body.len());
                let _ = stream
                    .write_all(format!("{head}{}", &body[..body.len() / 2]).as_bytes())
                    .await;
                return;
            }
        }
    }
}

fn response_head(status: u16, index: u64, length: usize) -> String {
    format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nX-Consul-Index: {index}\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )
}

async fn read_request(stream: &mut TcpStream) -> Option<SeenRequest> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split_whitespace();
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body_read = data.len() - (head_end + 4);
    while body_read < length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        body_read += n;
    }
    Some(SeenRequest {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
    })
}
