//! Answers the router gives before it has read a request's body (401, 403, 404, 413, 429, 431,
//! 503) reach the client intact over HTTP/2 and HTTP/1.1, whatever the size of the body the
//! client is still sending: over HTTP/2 the stream is ended with the complete answer followed,
//! when the body was not read, by `RST_STREAM(NO_ERROR)` (RFC 9113 §8.1), never with an error
//! a client would take for a broken stream.
//!
//! Driven by hyper's HTTP/2 and HTTP/1.1 clients through the TLS listener, each case many times
//! (the failure this guards against came by chance), and by curl where it is installed.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ollama_mesh_router::proxy::MeshProxy;
use ollama_mesh_router::tls::{ServerTls, TlsFiles};
use ollama_mesh_router::BackendSet;
use ollama_mesh_sim::NodeSpec;
use ollama_mesh_test_support::SimNode;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const USER: &str = "om_user_secret";
const ADMIN: &str = "om_admin_secret";
const LIMITED: &str = "om_limited_secret";
/// The router's body limit in these tests.
const MAX_BODY: usize = 2 << 20;
/// Body sizes every case is sent with.
const BODY_SIZES: [usize; 3] = [0, 1 << 10, 1 << 20];
/// A body over the limit.
const OVER_LIMIT: usize = 3 << 20;
/// Times each case is sent per body size and protocol.
const REPEATS: usize = 8;

/// One answer the router gives before reading the body.
struct Case {
    name: &'static str,
    method: http::Method,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    status: StatusCode,
    /// A word the error message must contain.
    says: &'static str,
    /// Body sizes to send.
    sizes: &'static [usize],
}

fn cases() -> Vec<Case> {
    let bearer = |secret: &str| ("authorization", format!("Bearer {secret}"));
    let post = http::Method::POST;
    vec![
        Case {
            name: "401: no key",
            method: post.clone(),
            path: "/api/generate",
            headers: vec![],
            status: StatusCode::UNAUTHORIZED,
            says: "key",
            sizes: &BODY_SIZES,
        },
        Case {
            name: "401 in OpenAI's dialect: a wrong key",
            method: post.clone(),
            path: "/v1/chat/completions",
            headers: vec![bearer("om_not_a_key")],
            status: StatusCode::UNAUTHORIZED,
            says: "key",
            sizes: &BODY_SIZES,
        },
        Case {
            name: "403: a management route without an admin key",
            method: post.clone(),
            path: "/api/pull",
            headers: vec![bearer(USER)],
            status: StatusCode::FORBIDDEN,
            says: "admin",
            sizes: &BODY_SIZES,
        },
        Case {
            name: "404: management aimed at an instance the fleet does not have",
            method: http::Method::DELETE,
            path: "/api/delete",
            headers: vec![
                bearer(ADMIN),
                ("x-ollama-mesh-node", "no-such-node".to_owned()),
            ],
            status: StatusCode::NOT_FOUND,
            says: "no-such-node",
            sizes: &BODY_SIZES,
        },
        Case {
            name: "429: a key over its requests per minute",
            method: post.clone(),
            path: "/api/chat",
            headers: vec![bearer(LIMITED)],
            status: StatusCode::TOO_MANY_REQUESTS,
            says: "limit",
            sizes: &BODY_SIZES,
        },
        Case {
            name: "431: request headers over the limit",
            method: post.clone(),
            path: "/api/generate",
            headers: vec![bearer(USER), ("x-padding", "p".repeat(70 << 10))],
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            says: "headers",
            sizes: &BODY_SIZES,
        },
        Case {
            name: "413: a declared body over the limit",
            method: post,
            path: "/api/generate",
            headers: vec![bearer(USER)],
            status: StatusCode::PAYLOAD_TOO_LARGE,
            says: "larger than",
            sizes: &[OVER_LIMIT],
        },
    ]
}

/// A router with keys and TLS in front of one simulated node; the limited key has used its one
/// request per minute.
struct Setup {
    _node: SimNode,
    router: Router,
    ca: Ca,
    dir: Dir,
}

async fn setup(max_connections: usize) -> Setup {
    let node = SimNode::start(NodeSpec::default().models(["llama3.2:3b"])).await;
    let entries = vec![entry("gpu-1", node.addr(), &["llama3.2:3b"], &[], 1)];
    let set = BackendSet::build(
        &entries,
        &[],
        &BackendSet::default(),
        ollama_mesh_router::backend::MeshPolicy::default(),
    );
    let fleet: Arc<dyn ollama_mesh_router::Fleet> = Arc::new(FixedFleet(Arc::new(set)));
    let keys = key_store(&[
        ("user", USER, ""),
        ("admin", ADMIN, r#", "scope": "admin""#),
        ("limited", LIMITED, r#", "rpm": 1"#),
    ]);
    let ca = Ca::new("early answers ca");
    let dir = Dir::new("early-answers");
    let leaf = ca.leaf(&["localhost"]);
    let tls = ServerTls::load(TlsFiles {
        cert: dir.write("cert.pem", &leaf.cert_pem),
        key: dir.write("key.pem", &leaf.key_pem),
        client_ca: None,
    })
    .unwrap();
    let mut proxy_settings = settings();
    proxy_settings.max_body_size = MAX_BODY;
    proxy_settings.enable_management = true;
    proxy_settings.max_connections = max_connections;
    let router = Router::with_tls_proxy(
        |active| MeshProxy::new(fleet, proxy_settings, active).with_keys(keys),
        Arc::new(tls),
    )
    .await;
    let setup = Setup {
        _node: node,
        router,
        ca,
        dir,
    };
    // The limited key's one request this minute.
    let used = send(
        &setup,
        Protocol::Http1,
        &http::Method::POST,
        "/api/chat",
        &[("authorization", format!("Bearer {LIMITED}"))],
        Bytes::from(
            r#"{"model":"llama3.2:3b","messages":[{"role":"user","content":"hi"}],"stream":false}"#,
        ),
    )
    .await
    .unwrap();
    assert_eq!(used.status, StatusCode::OK, "{:?}", used.body);
    setup
}

#[derive(Debug, Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
}

/// Sends one request on a new TLS connection and reads the whole answer.
async fn send(
    setup: &Setup,
    protocol: Protocol,
    method: &http::Method,
    path: &str,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Result<Answer, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(setup.ca.cert.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![match protocol {
        Protocol::Http1 => b"http/1.1".to_vec(),
        Protocol::Http2 => b"h2".to_vec(),
    }];
    let tcp = TcpStream::connect(setup.router.addr)
        .await
        .map_err(|e| e.to_string())?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut request = Request::builder()
        .method(method.clone())
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/json");
    if matches!(protocol, Protocol::Http1) {
        request = request.header("host", "localhost");
    }
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request.body(Full::new(body)).unwrap();
    let response = match protocol {
        Protocol::Http1 => {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            sender.send_request(request).await
        }
        Protocol::Http2 => {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            sender.send_request(request).await
        }
    }
    .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e:?}"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// The error message of an answer in either dialect.
fn message(answer: &Answer) -> Result<String, String> {
    let value: Value = serde_json::from_slice(&answer.body).map_err(|e| {
        format!(
            "{} with a body that is not JSON ({e}): {:?}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )
    })?;
    match &value["error"] {
        Value::String(text) => Ok(text.clone()),
        Value::Object(object) => Ok(object["message"].as_str().unwrap_or_default().to_owned()),
        other => Err(format!("no error in {value}: {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_before_the_body_reach_http2_and_http1_clients_intact() {
    let setup = setup(1_000).await;
    let failures = send_cases(&setup, cases()).await;
    assert!(
        failures.is_empty(),
        "{} answers did not arrive intact:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A router at its connection cap answers 503 before reading anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_caps_503_reaches_clients_intact() {
    let setup = setup(1).await;
    // One long stream holds the only place.
    let generate =
        Bytes::from(r#"{"model":"llama3.2:3b","prompt":"hi","options":{"num_predict":100000}}"#);
    let key = [("authorization", format!("Bearer {USER}"))];
    let holder = send(
        &setup,
        Protocol::Http1,
        &http::Method::POST,
        "/api/generate",
        &key,
        generate,
    );
    tokio::pin!(holder);
    let case = Case {
        name: "503: the router's connection cap",
        method: http::Method::POST,
        path: "/api/generate",
        headers: vec![("authorization", format!("Bearer {USER}"))],
        status: StatusCode::SERVICE_UNAVAILABLE,
        says: "connections",
        sizes: &BODY_SIZES,
    };
    let failures = tokio::select! {
        failures = async {
            // Let the holder take its place first.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            send_cases(&setup, vec![case]).await
        } => failures,
        held = &mut holder => panic!("the holding stream ended early: {:?}", held.map(|a| a.status)),
    };
    assert!(
        failures.is_empty(),
        "{} answers did not arrive intact:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Sends every case at every size over both protocols; returns what did not arrive intact.
async fn send_cases(setup: &Setup, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        for &size in case.sizes {
            // A JSON body of `size` bytes, as a client would send with a long prompt.
            let body = Bytes::from(if size == 0 {
                String::new()
            } else {
                format!(
                    r#"{{"model":"llama3.2:3b","prompt":"{}"}}"#,
                    "x".repeat(size.saturating_sub(32))
                )
            });
            for protocol in [Protocol::Http2, Protocol::Http1] {
                for _ in 0..REPEATS {
                    let label = format!("{} ({protocol:?}, {size}-byte body)", case.name);
                    match send(
                        setup,
                        protocol,
                        &case.method,
                        case.path,
                        &case.headers,
                        body.clone(),
                    )
                    .await
                    {
                        Ok(answer) if answer.status == case.status => match message(&answer) {
                            Ok(text) => assert!(
                                text.to_lowercase().contains(case.says),
                                "{label}: {text:?} does not say {:?}",
                                case.says
                            ),
                            Err(error) => failures.push(format!("{label}: {error}")),
                        },
                        Ok(answer) => failures.push(format!(
                            "{label}: {} {:?}",
                            answer.status,
                            String::from_utf8_lossy(&answer.body)
                        )),
                        Err(error) => failures.push(format!("{label}: {error}")),
                    }
                }
            }
        }
    }
    failures
}

/// curl, which speaks HTTP/2 over TLS as browsers and Go clients do, reads the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http2_reads_a_refusal_whatever_the_body() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let setup = setup(1_000).await;
    let ca_file = setup.dir.write("ca.pem", &setup.ca.pem);
    let body_file = setup.dir.write(
        "body.json",
        &format!(
            r#"{{"model":"llama3.2:3b","prompt":"{}"}}"#,
            "x".repeat(200_000)
        ),
    );
    let port = setup.router.addr.port();
    for body in ["", "@small", "@large"] {
        for _ in 0..REPEATS {
            let data = match body {
                "" => String::new(),
                "@small" => r#"{"model":"llama3.2:3b","prompt":"hi"}"#.to_owned(),
                _ => format!("@{}", body_file.display()),
            };
            let output = tokio::process::Command::new("curl")
                .args(["-sS", "--http2", "--max-time", "10", "--cacert"])
                .arg(&ca_file)
                .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
                .args(["-o", "-", "-w", "\n%{http_code} %{http_version}"])
                .args([
                    "-H",
                    "content-type: application/json",
                    "--data-binary",
                    &data,
                ])
                .arg(format!("https://localhost:{port}/api/generate"))
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success() && stdout.ends_with("\n401 2"),
                "curl with body {body:?}: exit {:?}, {stdout:?}, {}",
                output.status.code(),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(stdout.contains("\"error\""), "{stdout}");
        }
    }
}
