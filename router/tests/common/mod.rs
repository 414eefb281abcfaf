//! What the router's integration tests share: a router on a free port in front of a fleet,
//! and a small HTTP client.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser as _;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use ollama_mesh_consul::agent::{CheckDefinition, CheckKind, ServiceRegistration, Weights};
use ollama_mesh_consul::contract::{self, ModelList, NodeMeta};
use ollama_mesh_consul::health::{CatalogService, CheckStatus, HealthCheck, Node, ServiceEntry};
use ollama_mesh_consul::watch::WatchStatus;
use ollama_mesh_consul::ConsulSettings;
use ollama_mesh_daemon::Notifier;
use ollama_mesh_router::active::ActiveRequests;
use ollama_mesh_router::backend::MeshPolicy;
use ollama_mesh_router::config::{Args, RouterConfig};
use ollama_mesh_router::keys::{hex, sha256, KeyEntry, KeyStore};
use ollama_mesh_router::proxy::{MeshProxy, ProxySettings};
use ollama_mesh_router::router::{proxy_settings, serve_options};
use ollama_mesh_router::server::{self, ServeOptions, Shutdown};
use ollama_mesh_router::tls::ServerTls;
use ollama_mesh_router::{BackendSet, Fleet};
use ollama_mesh_test_support::{free_port, ConsulDev, SimNode};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

/// A fixed fleet: the backend set the proxy sees, built the way discovery builds it.
pub struct FixedFleet(pub Arc<BackendSet>);

impl Fleet for FixedFleet {
    fn backends(&self) -> Arc<BackendSet> {
        self.0.clone()
    }
    fn is_ready(&self) -> bool {
        true
    }
    fn watches(&self) -> Vec<(&'static str, Arc<WatchStatus>)> {
        Vec::new()
    }
}

/// An instance entry for a node at `addr` with `on_disk` and `loaded` models.
pub fn entry(
    id: &str,
    addr: SocketAddr,
    on_disk: &[&str],
    loaded: &[&str],
    weight: u32,
) -> ServiceEntry {
    let meta = NodeMeta {
        gpu_count: 1,
        parallel_slots: 4,
        models_on_disk: ModelList::new(on_disk.iter().copied()),
        models_loaded: ModelList::new(loaded.iter().copied()),
        ollama_version: Some("0.17.4".into()),
        sidecar_version: "test".into(),
        ..NodeMeta::default()
    };
    ServiceEntry {
        node: Node {
            node: format!("node-{id}"),
            address: "127.0.0.1".into(),
            ..Node::default()
        },
        service: CatalogService {
            id: id.into(),
            service: "ollama".into(),
            address: addr.ip().to_string(),
            port: addr.port(),
            meta: meta.to_consul_meta(),
            weights: Weights {
                passing: weight,
                warning: 1,
            },
            ..CatalogService::default()
        },
        checks: vec![HealthCheck {
            check_id: "serfHealth".into(),
            status: CheckStatus::Passing,
            ..HealthCheck::default()
        }],
    }
}

/// The configuration `ollama-mesh-router FLAGS…` gives, with Consul's defaults.
pub fn config(flags: &[&str]) -> RouterConfig {
    let argv = std::iter::once("ollama-mesh-router").chain(flags.iter().copied());
    let args = Args::try_parse_from(argv).expect("valid flags");
    RouterConfig::from_args(&args, ConsulSettings::default()).expect("valid configuration")
}

/// The proxy settings the binary derives from a few test flags (short timeouts).
pub fn settings() -> ProxySettings {
    proxy_settings(
        &config(&[
            "--allow-anonymous",
            "--connect-timeout=1s",
            "--read-timeout=30s",
            "--first-byte-timeout=30s",
            "--stream-idle-timeout=30s",
            "--retries=2",
            "--max-connections=1000",
        ]),
        None,
    )
}

/// A router on a free port, shut down (gracefully) on drop.
pub struct Router {
    pub addr: SocketAddr,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Router {
    pub async fn start(entries: Vec<ServiceEntry>, settings: ProxySettings) -> Self {
        let set = BackendSet::build(&entries, &[], &BackendSet::default(), MeshPolicy::default());
        Self::with_fleet(Arc::new(FixedFleet(Arc::new(set))), settings).await
    }

    /// A router in front of `fleet`.
    pub async fn with_fleet(fleet: Arc<dyn Fleet>, settings: ProxySettings) -> Self {
        Self::with_proxy(|active| MeshProxy::new(fleet, settings, active)).await
    }

    /// A router over `entries` that requires one of `keys`.
    pub async fn with_keys(
        entries: Vec<ServiceEntry>,
        settings: ProxySettings,
        keys: KeyStore,
    ) -> Self {
        let set = BackendSet::build(&entries, &[], &BackendSet::default(), MeshPolicy::default());
        let fleet: Arc<dyn Fleet> = Arc::new(FixedFleet(Arc::new(set)));
        Self::with_proxy(|active| MeshProxy::new(fleet, settings, active).with_keys(keys)).await
    }

    /// A router over `entries` serving TLS.
    pub async fn with_tls(
        entries: Vec<ServiceEntry>,
        settings: ProxySettings,
        tls: Arc<ServerTls>,
    ) -> Self {
        let set = BackendSet::build(&entries, &[], &BackendSet::default(), MeshPolicy::default());
        let fleet: Arc<dyn Fleet> = Arc::new(FixedFleet(Arc::new(set)));
        Self::serving(
            |active| MeshProxy::new(fleet, settings, active),
            Some(tls),
            None,
        )
        .await
    }

    /// A router serving TLS with the proxy `build` makes (keys, say).
    pub async fn with_tls_proxy(
        build: impl FnOnce(ActiveRequests) -> MeshProxy,
        tls: Arc<ServerTls>,
    ) -> Self {
        Self::serving(build, Some(tls), None).await
    }

    /// A router over `entries` reaching them with `settings.backend_tls`, Pingora trusting the
    /// same CA bundle as the router's own clients (as `main` sets it up).
    pub async fn with_backend_tls(entries: Vec<ServiceEntry>, settings: ProxySettings) -> Self {
        let set = BackendSet::build(&entries, &[], &BackendSet::default(), MeshPolicy::default());
        let fleet: Arc<dyn Fleet> = Arc::new(FixedFleet(Arc::new(set)));
        let ca = settings
            .backend_tls
            .as_ref()
            .and_then(|tls| tls.ca_file())
            .map(PathBuf::from);
        Self::serving(|active| MeshProxy::new(fleet, settings, active), None, ca).await
    }

    /// The router `ollama-mesh-router FLAGS…` runs, built and run as the binary does
    /// ([`ollama_mesh_router::Router`]), on a free port with its ops endpoints on another.
    pub async fn built(flags: &[&str]) -> (Self, SocketAddr) {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listen = format!("--listen={addr}");
        let mut all = vec![listen.as_str(), "--ops-listen=127.0.0.1:0"];
        all.extend_from_slice(flags);
        let router = ollama_mesh_router::Router::build(config(&all), Notifier::default())
            .await
            .expect("the router builds");
        let ops = router.ops_addr();
        let shutdown = Shutdown::default();
        let requested = shutdown.clone();
        let thread = std::thread::spawn(move || {
            router.run(async move {
                requested.requested().await;
                "test shutdown".to_owned()
            })
        });
        (Self::started(addr, shutdown, thread).await, ops)
    }

    /// A router serving the proxy `build` makes, given the request counter it must use.
    pub async fn with_proxy(build: impl FnOnce(ActiveRequests) -> MeshProxy) -> Self {
        Self::serving(build, None, None).await
    }

    async fn serving(
        build: impl FnOnce(ActiveRequests) -> MeshProxy,
        tls: Option<Arc<ServerTls>>,
        backend_ca: Option<PathBuf>,
    ) -> Self {
        let active = ActiveRequests::default();
        let proxy = build(active.clone());
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listen = format!("--listen={addr}");
        let options = ServeOptions {
            backend_ca,
            ..serve_options(
                &config(&[&listen, "--threads=2", "--grace-period=10s", "--retries=2"]),
                tls,
            )
        };
        let shutdown = Shutdown::default();
        let trigger = shutdown.clone();
        let thread = std::thread::spawn(move || server::serve(proxy, active, &options, &trigger));
        Self::started(addr, shutdown, thread).await
    }

    /// Waits until the router serving on `thread` accepts connections at `addr`.
    async fn started(
        addr: SocketAddr,
        shutdown: Shutdown,
        thread: std::thread::JoinHandle<()>,
    ) -> Self {
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "router did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            addr,
            shutdown,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Triggers shutdown and waits for the server thread; returns how long it took.
    pub async fn stop(mut self) -> Duration {
        let started = Instant::now();
        self.shutdown.trigger();
        let thread = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        started.elapsed()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The last line of an NDJSON stream, parsed.
    pub fn last_line(&self) -> Value {
        let line = self
            .body
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .expect("a non-empty stream");
        serde_json::from_slice(line).expect("a JSON line")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn call(method: Method, url: &str, body: impl Into<Bytes>) -> Answer {
    call_with(method, url, &[], body).await
}

/// [`call`] with extra request headers.
pub async fn call_with(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).unwrap();
    let response = client().request(request).await.expect("request");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn post(url: &str, body: Value) -> Answer {
    call(Method::POST, url, body.to_string()).await
}

/// The stored entry of the API key `secret`, with `extra` JSON fields (`, "rpm": 2`).
pub fn key_entry_json(secret: &str, extra: &str) -> String {
    format!(
        r#"{{"sha256": "{}"{extra}}}"#,
        hex(&sha256(secret.as_bytes()))
    )
}

/// A key store holding `(name, secret, extra fields)` keys.
pub fn key_store(keys: &[(&str, &str, &str)]) -> KeyStore {
    let store = KeyStore::default();
    store.replace(
        keys.iter()
            .map(|(name, secret, extra)| {
                KeyEntry::parse(&key_entry_json(secret, extra))
                    .unwrap()
                    .check(name)
                    .unwrap()
            })
            .collect(),
    );
    store
}

/// A client of the `consul agent -dev` under test.
pub fn consul_client(consul: &ConsulDev) -> ollama_mesh_consul::Client {
    let settings = ConsulSettings {
        http_addr: Some(consul.http_url()),
        ..ConsulSettings::default()
    };
    ollama_mesh_consul::Client::new(&settings.validate().unwrap()).unwrap()
}

pub fn requests_on(node: &SimNode) -> u64 {
    node.sim().stats()["requests_total"].as_u64().unwrap()
}

/// The heartbeat check's ID for an instance registered by [`sidecar_registration`].
pub fn heartbeat(id: &str) -> String {
    format!("{id}:heartbeat")
}

/// An instance as a sidecar registers it: mesh Meta with `models` on disk, one GPU with four
/// slots, a passing TTL heartbeat.
pub fn sidecar_registration(id: &str, addr: SocketAddr, models: &[&str]) -> ServiceRegistration {
    let meta = NodeMeta {
        gpu_count: 1,
        parallel_slots: 4,
        models_on_disk: ModelList::new(models.iter().copied()),
        ollama_version: Some("0.17.4".into()),
        sidecar_version: "test".into(),
        ..NodeMeta::default()
    };
    ServiceRegistration {
        id: id.into(),
        name: contract::DEFAULT_SERVICE_NAME.into(),
        tags: vec![contract::MESH_TAG.into()],
        address: addr.ip().to_string(),
        port: addr.port(),
        meta: meta.to_consul_meta(),
        weights: Weights::default(),
        checks: vec![CheckDefinition {
            check_id: heartbeat(id),
            name: "sidecar heartbeat".into(),
            notes: "test".into(),
            kind: CheckKind::Ttl {
                ttl: Duration::from_secs(60),
            },
            status: Some(CheckStatus::Passing),
            deregister_critical_after: None,
        }],
        connect: None,
    }
}

/// A certificate authority made for one test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert: CertificateDer<'static>,
    pub pem: String,
}

/// A certificate and its key, in PEM and DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }
}

/// A directory for one test's files, removed at the end.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("om-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        // Written whole, then renamed, as certificate tools do.
        let partial = self.0.join(format!("{name}.partial"));
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &path).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
