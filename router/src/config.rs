//! What operators write, and the one validated configuration the router runs on.
//!
//! Settings come from three places. For each setting, the first that gives it wins:
//!
//! 1. a command-line flag (`--listen 0.0.0.0:8080`);
//! 2. its environment variable (`OLLAMA_MESH_LISTEN`);
//! 3. the TOML file named by `--config FILE` (`OLLAMA_MESH_CONFIG`), with the flags' names as
//!    keys (`listen = "0.0.0.0:8080"`, `backend = ["http://10.0.0.5:11434"]`);
//! 4. the built-in default.
//!
//! Consul's own variables (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, …) configure the Consul client
//! the way Consul's CLI reads them; `--consul-addr` overrides `CONSUL_HTTP_ADDR`.
//!
//! Every value is checked at start, and an unusable one fails with the flag's name
//! (`--listen: …`), whichever of the three places it came from.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::Parser;
use ollama_mesh_consul::config::{ClientConfig, ConsulSettings};
use ollama_mesh_consul::contract;
pub use ollama_mesh_daemon::LogFormat;
use serde::Deserialize;

use crate::backend_tls::BackendTls;
use crate::keygen::KeygenArgs;
use crate::mesh::MeshSettings;
use crate::schedule::{Policy, ScheduleSettings};
use crate::static_fleet::{PollConfig, StaticBackend};
use crate::tls::{TlsError, TlsFiles};

/// One Ollama endpoint for a whole fleet of GPU nodes.
///
/// The router learns the fleet from Consul (instances of --service-name registered by
/// ollama-mesh-sidecar; CONSUL_HTTP_ADDR and Consul's other variables apply) or from --backend
/// URLs, and sends each request to a node that has its model: warm first, least busy. Clients
/// talk to it as to Ollama. Every flag can also come from its environment variable or from a
/// TOML file given with --config (flags win over the environment, which wins over the file).
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "ollama-mesh-router", version, args_override_self = true)]
pub struct Args {
    /// TOML file with defaults for any of the flags below (keys are the flags' names); flags and
    /// environment variables override it.
    #[arg(long, env = "OLLAMA_MESH_CONFIG")]
    pub config: Option<PathBuf>,

    /// The settings themselves.
    #[command(flatten)]
    pub settings: Settings,

    /// A task other than routing.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Tasks other than routing, run instead of it.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Make a new API key: prints the key once, its KV entry and the `consul kv put` line.
    Keygen(KeygenArgs),
}

/// Every setting, each optional, so a source that leaves one out lets the next decide. Parsed
/// from flags and environment by clap and from the `--config` file by serde, with the same
/// names.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Where clients connect (Ollama's port, so they need no change). [default: 0.0.0.0:11434]
    #[arg(long, env = "OLLAMA_MESH_LISTEN")]
    pub listen: Option<String>,

    /// The ops listener: /metrics, /healthz, /readyz, /v1/mesh/nodes. [default: 127.0.0.1:11435]
    #[arg(long, env = "OLLAMA_MESH_OPS_LISTEN")]
    pub ops_listen: Option<String>,

    /// Consul service name of the Ollama nodes. [default: ollama]
    #[arg(long, env = "OLLAMA_MESH_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// A static backend (http://HOST:PORT, or https://HOST:PORT for one behind a TLS proxy),
    /// polled by the router itself instead of discovered in Consul. Repeatable (all http:// or
    /// all https://); in the environment, comma-separated.
    #[arg(long = "backend", env = "OLLAMA_MESH_BACKEND", value_delimiter = ',')]
    #[serde(rename = "backend")]
    pub backends: Vec<String>,

    /// How often the router reads each --backend's version, models on disk and models loaded
    /// (its view of them is at most this old). [default: 2s]
    #[arg(long, env = "OLLAMA_MESH_BACKEND_POLL_INTERVAL")]
    pub backend_poll_interval: Option<String>,

    /// Consul's HTTP API (overrides CONSUL_HTTP_ADDR). [default: CONSUL_HTTP_ADDR, else
    /// 127.0.0.1:8500]
    #[arg(long, env = "OLLAMA_MESH_CONSUL_ADDR")]
    pub consul_addr: Option<String>,

    /// Longest wait for a connection to a backend. [default: 5s]
    #[arg(long, env = "OLLAMA_MESH_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<String>,

    /// Longest silence from a backend in any case: the bound on the two deadlines below.
    /// [default: 600s]
    #[arg(long, env = "OLLAMA_MESH_READ_TIMEOUT")]
    pub read_timeout: Option<String>,

    /// How long a node has for the first byte of an answer, plus twice the time the scheduler
    /// expects the request to take there (a model load, a queue, the answer itself); then the
    /// request is retried on another node, or answered 504. [default: 30s]
    #[arg(long, env = "OLLAMA_MESH_FIRST_BYTE_TIMEOUT")]
    pub first_byte_timeout: Option<String>,

    /// Longest gap in a response once it has started; a stream that stalls longer ends with an
    /// error chunk in the caller's dialect. [default: 30s]
    #[arg(long, env = "OLLAMA_MESH_STREAM_IDLE_TIMEOUT")]
    pub stream_idle_timeout: Option<String>,

    /// Other backends tried when one fails before anything was sent to the client. [default: 2]
    #[arg(long, env = "OLLAMA_MESH_RETRIES")]
    pub retries: Option<u32>,

    /// Scheduling policy: least-outstanding, queue, residency, affinity, learned or preload
    /// (each adds one idea to the one before; see the README). [default: learned]
    #[arg(long, env = "OLLAMA_MESH_SCHEDULE")]
    pub schedule: Option<String>,

    /// Most requests waiting at the router for a slot at once; beyond it requests are
    /// answered 503 with Retry-After. [default: 1000]
    #[arg(long, env = "OLLAMA_MESH_QUEUE_MAX")]
    pub queue_max: Option<usize>,

    /// Longest a request waits at the router for a slot before it is answered 503 with
    /// Retry-After. [default: 60s]
    #[arg(long, env = "OLLAMA_MESH_QUEUE_TIMEOUT")]
    pub queue_timeout: Option<String>,

    /// Requests one loaded model serves at once on each --backend (its OLLAMA_NUM_PARALLEL;
    /// nodes discovered in Consul say so in Meta): one value for all, or one per --backend in
    /// their order (comma-separated in the environment). [default: 1]
    #[arg(long, env = "OLLAMA_MESH_SLOTS", value_delimiter = ',')]
    pub slots: Vec<u32>,

    /// Proxy worker threads. [default: all cores]
    #[arg(long, env = "OLLAMA_MESH_THREADS")]
    pub threads: Option<usize>,

    /// How long in-flight requests may finish at shutdown. [default: 30s]
    #[arg(long, env = "OLLAMA_MESH_GRACE_PERIOD")]
    pub grace_period: Option<String>,

    /// Allow model management (/api/pull, /api/push, /api/create, /api/copy, /api/delete).
    /// [default: false]
    #[arg(long, env = "OLLAMA_MESH_ENABLE_MANAGEMENT", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub enable_management: Option<bool>,

    /// Register this router in the local Consul agent as ollama-mesh-router. [default: false]
    #[arg(long, env = "OLLAMA_MESH_REGISTER", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub register: Option<bool>,

    /// Largest request body accepted, e.g. 64MiB, 10MB or 1048576 (bytes). [default: 64MiB]
    #[arg(long, env = "OLLAMA_MESH_MAX_BODY_SIZE")]
    pub max_body_size: Option<String>,

    /// Longest a client may keep the router waiting on one read of its request body or one
    /// write of the response (slow-client protection). [default: 60s]
    #[arg(long, env = "OLLAMA_MESH_CLIENT_TIMEOUT")]
    pub client_timeout: Option<String>,

    /// Largest request head accepted (request line and headers), e.g. 64KiB. [default: 64KiB]
    #[arg(long, env = "OLLAMA_MESH_MAX_HEADER_SIZE")]
    pub max_header_size: Option<String>,

    /// Most client connections open at once; more are answered 503 and closed (over HTTP/2,
    /// each concurrent stream counts). Keep it below the process's file-descriptor limit.
    /// [default: 10000]
    #[arg(long, env = "OLLAMA_MESH_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Serve TLS on --listen with this PEM certificate chain (leaf first); needs --tls-key.
    /// Reloaded when the file changes or on SIGHUP.
    #[arg(long, env = "OLLAMA_MESH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "OLLAMA_MESH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this PEM CA bundle (mTLS); needs --tls-cert.
    #[arg(long, env = "OLLAMA_MESH_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Reach the nodes discovered in Consul over HTTPS (Ollama behind a TLS-terminating proxy);
    /// https:// --backend URLs imply it. [default: false]
    #[arg(long, env = "OLLAMA_MESH_BACKEND_TLS", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub backend_tls: Option<bool>,

    /// PEM CA bundle the nodes' certificates must chain to, with TLS to the nodes. [default:
    /// the system's root certificates]
    #[arg(long, env = "OLLAMA_MESH_BACKEND_CA")]
    pub backend_ca: Option<PathBuf>,

    /// Reach the nodes through Consul Connect (service mesh): mutual TLS with this router's
    /// Connect certificate, to nodes whose sidecars run with --mesh. [default: false]
    #[arg(long, env = "OLLAMA_MESH_MESH", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub mesh: Option<bool>,

    /// The router's own service name in the mesh: the identity Consul's intentions allow or
    /// deny. [default: ollama-mesh-router]
    #[arg(long, env = "OLLAMA_MESH_MESH_SERVICE")]
    pub mesh_service: Option<String>,

    /// With --mesh, still reach nodes registered without Connect, over plain HTTP (for a
    /// fleet migrating to the mesh). [default: false]
    #[arg(long, env = "OLLAMA_MESH_MESH_ALLOW_PLAIN", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub mesh_allow_plain: Option<bool>,

    /// Log format. [default: text]
    #[arg(long, env = "OLLAMA_MESH_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Require API keys, read from Consul KV (ollama-mesh/keys/NAME) and followed live.
    /// [default: false]
    #[arg(long, env = "OLLAMA_MESH_KEYS_FROM_CONSUL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub keys_from_consul: Option<bool>,

    /// Require API keys, read from this JSON file (entries by name, as in KV) and reloaded
    /// when it changes.
    #[arg(long, env = "OLLAMA_MESH_KEYS_FILE")]
    pub keys_file: Option<PathBuf>,

    /// Serve without API keys on a non-loopback --listen address (without a key source the
    /// router otherwise refuses to). [default: false]
    #[arg(long, env = "OLLAMA_MESH_ALLOW_ANONYMOUS", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub allow_anonymous: Option<bool>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has an unusable value.
    #[error("--{field}: {message}")]
    Invalid {
        /// The flag's name (also the file's key).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A TLS file (the listener's or the nodes' CA) cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The `--config` file cannot be read or is not valid TOML for these settings.
    #[error("--config {}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key when it is one key.
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// Where API keys come from (at most one source). With none, every client is let in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySources {
    /// Keys in Consul KV under `ollama-mesh/keys/`.
    pub consul: bool,
    /// Keys in a JSON file.
    pub file: Option<PathBuf>,
}

impl KeySources {
    /// Whether clients must present a key.
    pub fn required(&self) -> bool {
        self.consul || self.file.is_some()
    }
}

/// Time limits for one proxied request, sized for LLMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to a backend.
    pub connect: Duration,
    /// Any wait for a backend's bytes, whatever the two below say (Pingora's read timeout).
    /// A whole-request limit is left to clients, since a router-side one would cut long
    /// generations that are working fine.
    pub read: Duration,
    /// The first byte, before the expected time on the node is added.
    pub first_byte: Duration,
    /// A gap in a response that has started.
    pub stream_idle: Duration,
}

/// The validated configuration.
///
/// Its `Debug` output includes the Consul token: log [`RouterConfig::summary`] instead.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where the ops endpoints listen.
    pub ops_listen: SocketAddr,
    /// Consul service name of the Ollama nodes.
    pub service_name: String,
    /// Static backends; empty means discovery through Consul.
    pub static_backends: Vec<StaticBackend>,
    /// How often static backends are read.
    pub backend_poll_interval: Duration,
    /// The Consul client configuration (used for discovery, drain keys and self-registration).
    pub consul: ClientConfig,
    /// Time limits.
    pub timeouts: Timeouts,
    /// The scheduling policy, the router's queue, and retries before the first byte.
    pub schedule: ScheduleSettings,
    /// Proxy worker threads.
    pub threads: NonZeroUsize,
    /// How long in-flight requests may finish at shutdown.
    pub grace_period: Duration,
    /// Model-management routes allowed.
    pub enable_management: bool,
    /// Self-registration in Consul.
    pub register: bool,
    /// Largest request body, in bytes.
    pub max_body_size: u64,
    /// Longest wait on one read from or write to a client.
    pub client_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_size: u64,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Where API keys come from.
    pub keys: KeySources,
    /// TLS on the main listener.
    pub tls: Option<TlsFiles>,
    /// TLS to the nodes, with the certificates it trusts; `None` speaks plain HTTP to them.
    pub backend_tls: Option<BackendTls>,
    /// Consul Connect to the nodes; `None` outside the service mesh.
    pub mesh: Option<MeshSettings>,
}

const DEFAULT_LISTEN: &str = "0.0.0.0:11434";
const DEFAULT_OPS_LISTEN: &str = "127.0.0.1:11435";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The seed's nginx used 600 s: a cold model load on a slow disk takes minutes.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(600);
/// Long enough for a node to take a request it has room for; the model load and the queue
/// are added per request.
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
/// A node generating sends a token every few tens of milliseconds.
const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_RETRIES: u32 = 2;
/// Long enough for a typical generation to finish, short enough that a rolling restart of
/// several replicas does not take minutes (Pingora's own default is 300 s).
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// Enough for a long chat history with images; Ollama itself sets no limit.
const DEFAULT_MAX_BODY_SIZE: u64 = 64 << 20;
/// Pingora's read timeout for a request head, applied to the body and the response as well.
const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Far above what Ollama's clients send (a few hundred bytes), far below Pingora's 1 MiB.
const DEFAULT_MAX_HEADER_SIZE: u64 = 64 << 10;
/// The largest request head Pingora reads at all.
const PINGORA_MAX_HEADER_SIZE: u64 = (1 << 20) - 1;

impl Settings {
    /// These settings with every one that `overrides` gives replaced (flags over the file).
    pub fn overridden_by(self, overrides: Settings) -> Self {
        Self {
            listen: overrides.listen.or(self.listen),
            ops_listen: overrides.ops_listen.or(self.ops_listen),
            service_name: overrides.service_name.or(self.service_name),
            backends: if overrides.backends.is_empty() {
                self.backends
            } else {
                overrides.backends
            },
            backend_poll_interval: overrides
                .backend_poll_interval
                .or(self.backend_poll_interval),
            consul_addr: overrides.consul_addr.or(self.consul_addr),
            connect_timeout: overrides.connect_timeout.or(self.connect_timeout),
            read_timeout: overrides.read_timeout.or(self.read_timeout),
            first_byte_timeout: overrides.first_byte_timeout.or(self.first_byte_timeout),
            stream_idle_timeout: overrides.stream_idle_timeout.or(self.stream_idle_timeout),
            retries: overrides.retries.or(self.retries),
            schedule: overrides.schedule.or(self.schedule),
            queue_max: overrides.queue_max.or(self.queue_max),
            queue_timeout: overrides.queue_timeout.or(self.queue_timeout),
            slots: if overrides.slots.is_empty() {
                self.slots
            } else {
                overrides.slots
            },
            threads: overrides.threads.or(self.threads),
            grace_period: overrides.grace_period.or(self.grace_period),
            enable_management: overrides.enable_management.or(self.enable_management),
            register: overrides.register.or(self.register),
            max_body_size: overrides.max_body_size.or(self.max_body_size),
            client_timeout: overrides.client_timeout.or(self.client_timeout),
            max_header_size: overrides.max_header_size.or(self.max_header_size),
            max_connections: overrides.max_connections.or(self.max_connections),
            log_format: overrides.log_format.or(self.log_format),
            keys_from_consul: overrides.keys_from_consul.or(self.keys_from_consul),
            keys_file: overrides.keys_file.or(self.keys_file),
            allow_anonymous: overrides.allow_anonymous.or(self.allow_anonymous),
            tls_cert: overrides.tls_cert.or(self.tls_cert),
            tls_key: overrides.tls_key.or(self.tls_key),
            tls_client_ca: overrides.tls_client_ca.or(self.tls_client_ca),
            backend_tls: overrides.backend_tls.or(self.backend_tls),
            backend_ca: overrides.backend_ca.or(self.backend_ca),
            mesh: overrides.mesh.or(self.mesh),
            mesh_service: overrides.mesh_service.or(self.mesh_service),
            mesh_allow_plain: overrides.mesh_allow_plain.or(self.mesh_allow_plain),
        }
    }

    /// Reads a `--config` file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file_error = |message: String| ConfigError::File {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        toml::from_str(&text).map_err(|e| file_error(e.to_string()))
    }
}

impl RouterConfig {
    /// Reads the `--config` file if there is one, applies `args` over it, and validates the
    /// result. `consul_env` are Consul's own variables
    /// ([`ConsulSettings::from_env`] in production); `--consul-addr` wins over them.
    pub fn from_args(args: &Args, consul_env: ConsulSettings) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        Self::validate(file.overridden_by(args.settings.clone()), consul_env)
    }

    /// Validates merged settings, filling in defaults.
    pub fn validate(settings: Settings, consul_env: ConsulSettings) -> Result<Self, ConfigError> {
        let backends_are_static = !settings.backends.is_empty();
        let mesh = mesh(&settings, backends_are_static)?;
        let schedule = schedule(&settings)?;
        let consul = consul_env
            .overridden_by(ConsulSettings {
                http_addr: settings.consul_addr.clone(),
                ..ConsulSettings::default()
            })
            .validate()
            .map_err(|e| invalid("consul-addr", e.to_string()))?;
        let listen = socket_addr("listen", settings.listen.as_deref(), DEFAULT_LISTEN)?;
        let ops_listen = socket_addr(
            "ops-listen",
            settings.ops_listen.as_deref(),
            DEFAULT_OPS_LISTEN,
        )?;
        if listen == ops_listen && listen.port() != 0 {
            return Err(invalid(
                "ops-listen",
                format!("must differ from --listen ({listen})"),
            ));
        }
        let service_name = settings
            .service_name
            .unwrap_or_else(|| contract::DEFAULT_SERVICE_NAME.to_owned());
        if !is_dns_label(&service_name) {
            return Err(invalid(
                "service-name",
                format!("{service_name:?}: must be letters, digits and '-' (a valid DNS label)"),
            ));
        }
        let mut static_backends: Vec<StaticBackend> = Vec::new();
        for url in &settings.backends {
            let backend =
                StaticBackend::parse(url).map_err(|e| invalid("backend", e.to_string()))?;
            if static_backends.iter().any(|b| b.id() == backend.id()) {
                return Err(invalid("backend", format!("{url:?} is listed twice")));
            }
            static_backends.push(backend);
        }
        let backend_poll_interval = timeout(
            "backend-poll-interval",
            settings.backend_poll_interval.as_deref(),
            PollConfig::default().interval,
        )?;
        if settings.backend_poll_interval.is_some() && static_backends.is_empty() {
            return Err(invalid(
                "backend-poll-interval",
                "applies to --backend URLs; nodes discovered in Consul report themselves",
            ));
        }
        let static_backends = with_slots(static_backends, &settings.slots)?;
        let backend_tls = backend_tls(
            &static_backends,
            settings.backend_tls.unwrap_or(false),
            settings.backend_ca,
        )?;
        let timeouts = Timeouts {
            connect: timeout(
                "connect-timeout",
                settings.connect_timeout.as_deref(),
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            read: timeout(
                "read-timeout",
                settings.read_timeout.as_deref(),
                DEFAULT_READ_TIMEOUT,
            )?,
            first_byte: timeout(
                "first-byte-timeout",
                settings.first_byte_timeout.as_deref(),
                DEFAULT_FIRST_BYTE_TIMEOUT,
            )?,
            stream_idle: timeout(
                "stream-idle-timeout",
                settings.stream_idle_timeout.as_deref(),
                DEFAULT_STREAM_IDLE_TIMEOUT,
            )?,
        };
        let threads = match settings.threads {
            Some(n) => {
                NonZeroUsize::new(n).ok_or_else(|| invalid("threads", "must be at least 1"))?
            }
            None => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        };
        let grace_period = match settings.grace_period.as_deref() {
            Some(text) => parse_duration("grace-period", text)?,
            None => DEFAULT_GRACE_PERIOD,
        };
        let max_body_size = size(
            "max-body-size",
            settings.max_body_size.as_deref(),
            DEFAULT_MAX_BODY_SIZE,
        )?;
        let max_header_size = size(
            "max-header-size",
            settings.max_header_size.as_deref(),
            DEFAULT_MAX_HEADER_SIZE,
        )?;
        if max_header_size > PINGORA_MAX_HEADER_SIZE {
            return Err(invalid(
                "max-header-size",
                format!("must be at most {PINGORA_MAX_HEADER_SIZE} bytes (Pingora's own limit)"),
            ));
        }
        let max_connections = match settings.max_connections {
            Some(0) => return Err(invalid("max-connections", "must be at least 1")),
            Some(n) => n,
            None => DEFAULT_MAX_CONNECTIONS,
        };
        let client_timeout = timeout(
            "client-timeout",
            settings.client_timeout.as_deref(),
            DEFAULT_CLIENT_TIMEOUT,
        )?;
        let keys = KeySources {
            consul: settings.keys_from_consul.unwrap_or(false),
            file: settings.keys_file,
        };
        check_access(
            [("listen", listen), ("ops-listen", ops_listen)],
            &keys,
            settings.allow_anonymous.unwrap_or(false),
        )?;
        let tls = match (settings.tls_cert, settings.tls_key, settings.tls_client_ca) {
            (Some(cert), Some(key), client_ca) => Some(TlsFiles {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            (Some(_), None, _) => return Err(invalid("tls-key", "is required with --tls-cert")),
            (None, _, _) => {
                return Err(invalid(
                    "tls-cert",
                    "is required with --tls-key and --tls-client-ca",
                ))
            }
        };
        Ok(Self {
            listen,
            ops_listen,
            service_name,
            static_backends,
            backend_poll_interval,
            consul,
            timeouts,
            schedule,
            threads,
            grace_period,
            enable_management: settings.enable_management.unwrap_or(false),
            register: settings.register.unwrap_or(false),
            max_body_size,
            client_timeout,
            max_header_size,
            max_connections,
            log_format: settings.log_format.unwrap_or_default(),
            keys,
            tls,
            backend_tls,
            mesh,
        })
    }

    /// The effective configuration in one line for the start-up log. Holds no secrets: the
    /// Consul token is only said to be there.
    pub fn summary(&self) -> String {
        let backends = if self.static_backends.is_empty() {
            format!("discovered in Consul (service {:?})", self.service_name)
        } else {
            let urls: Vec<&str> = self.static_backends.iter().map(|b| b.url()).collect();
            format!(
                "static: {} (read every {})",
                urls.join(", "),
                humantime::format_duration(self.backend_poll_interval)
            )
        };
        format!(
            "listen {}; ops {}; backends {backends}; consul {}{}; timeouts: connect {}, read {}, \
             first byte {} + twice the expected time, stream gap {}; \
             schedule {} (queue {} for at most {}); retries {}; threads {}; grace period {}; \
             max body {} bytes; max header {} bytes; \
             client timeout {}; max connections {}; TLS {}; TLS to the nodes {}; mesh {}; \
             management {}; self-registration {}; log format {:?}; API keys {}",
            self.listen,
            self.ops_listen,
            self.consul.address,
            if self.consul.token.is_some() {
                " (with ACL token)"
            } else {
                ""
            },
            humantime::format_duration(self.timeouts.connect),
            humantime::format_duration(self.timeouts.read),
            humantime::format_duration(self.timeouts.first_byte),
            humantime::format_duration(self.timeouts.stream_idle),
            self.schedule.policy,
            self.schedule.queue_max,
            humantime::format_duration(self.schedule.queue_timeout),
            self.schedule.retries,
            self.threads,
            humantime::format_duration(self.grace_period),
            self.max_body_size,
            self.max_header_size,
            humantime::format_duration(self.client_timeout),
            self.max_connections,
            match &self.tls {
                None => "off".to_owned(),
                Some(tls) => format!(
                    "{}{}",
                    tls.cert.display(),
                    if tls.client_ca.is_some() {
                        " with client certificates"
                    } else {
                        ""
                    }
                ),
            },
            match &self.backend_tls {
                None => "off".to_owned(),
                Some(tls) => match tls.ca_file() {
                    Some(ca) => format!("on, trusting {}", ca.display()),
                    None => "on, trusting the system's roots".to_owned(),
                },
            },
            match &self.mesh {
                None => "off".to_owned(),
                Some(mesh) => format!(
                    "on, as service {:?}{}",
                    mesh.service,
                    if mesh.allow_plain {
                        ", plain HTTP to nodes without Connect"
                    } else {
                        ""
                    }
                ),
            },
            on_off(self.enable_management),
            on_off(self.register),
            self.log_format,
            match (&self.keys.file, self.keys.consul) {
                (None, false) => "off (anonymous access)".to_owned(),
                (None, true) => "from Consul KV".to_owned(),
                (Some(file), _) => format!("from {}", file.display()),
            },
        )
    }
}

/// `backends` with their `--slots`: none given is 1 each, one value is for all, else one per
/// backend.
fn with_slots(
    backends: Vec<StaticBackend>,
    slots: &[u32],
) -> Result<Vec<StaticBackend>, ConfigError> {
    if slots.contains(&0) {
        return Err(invalid("slots", "must be at least 1"));
    }
    if !slots.is_empty() && backends.is_empty() {
        return Err(invalid(
            "slots",
            "applies to --backend URLs; nodes discovered in Consul report parallel_slots",
        ));
    }
    let each: Vec<u32> = match slots {
        [] => vec![1; backends.len()],
        [all] => vec![*all; backends.len()],
        list if list.len() == backends.len() => list.to_vec(),
        list => {
            return Err(invalid(
                "slots",
                format!(
                    "give one value, or one per --backend ({} values for {} backends)",
                    list.len(),
                    backends.len()
                ),
            ))
        }
    };
    Ok(backends
        .into_iter()
        .zip(each)
        .map(|(backend, slots)| backend.with_slots(slots))
        .collect())
}

/// The scheduler's settings: `--schedule`, `--queue-max`, `--queue-timeout`, `--retries`.
fn schedule(settings: &Settings) -> Result<ScheduleSettings, ConfigError> {
    let defaults = ScheduleSettings::default();
    let policy = match settings.schedule.as_deref() {
        Some(name) => name
            .parse::<Policy>()
            .map_err(|e| invalid("schedule", e.to_string()))?,
        None => defaults.policy,
    };
    let queue_max = match settings.queue_max {
        Some(0) => {
            return Err(invalid(
                "queue-max",
                "must be at least 1 (with no queue, use --schedule least-outstanding)",
            ))
        }
        Some(n) => n,
        None => defaults.queue_max,
    };
    let queue_timeout = timeout(
        "queue-timeout",
        settings.queue_timeout.as_deref(),
        defaults.queue_timeout,
    )?;
    Ok(ScheduleSettings {
        policy,
        queue_max,
        queue_timeout,
        retries: settings.retries.unwrap_or(DEFAULT_RETRIES) as usize,
    })
}

/// TLS to the nodes is one setting for the whole fleet (Pingora and the router's own clients
/// reach every node the same way), so static backends are all http:// or all https://, and
/// https:// ones turn it on. `--backend-tls` with http:// backends, or a CA without TLS, is a
/// contradiction worth stopping on rather than guessing which was meant.
fn backend_tls(
    static_backends: &[StaticBackend],
    flag: bool,
    ca_file: Option<PathBuf>,
) -> Result<Option<BackendTls>, ConfigError> {
    let https = static_backends.iter().filter(|b| b.tls()).count();
    if https != 0 && https != static_backends.len() {
        return Err(invalid(
            "backend",
            "mixes http:// and https:// URLs: TLS to the nodes is one setting for the fleet",
        ));
    }
    if flag && !static_backends.is_empty() && https == 0 {
        return Err(invalid(
            "backend-tls",
            "the --backend URLs are http://; write them as https:// instead",
        ));
    }
    if !(flag || https > 0) {
        return match ca_file {
            Some(_) => Err(invalid(
                "backend-ca",
                "needs --backend-tls (or https:// --backend URLs)",
            )),
            None => Ok(None),
        };
    }
    if let Some(path) = &ca_file {
        // Pingora's connector takes the CA as a path string.
        if path.to_str().is_none() {
            return Err(invalid(
                "backend-ca",
                format!("{}: the path is not valid UTF-8", path.display()),
            ));
        }
    }
    Ok(Some(BackendTls::load(ca_file)?))
}

/// The mesh needs Consul (the router's certificate and the nodes' Connect registrations come
/// from there) and replaces `--backend-tls`, whose certificates it would contradict.
fn mesh(
    settings: &Settings,
    backends_are_static: bool,
) -> Result<Option<MeshSettings>, ConfigError> {
    if !settings.mesh.unwrap_or(false) {
        return match (&settings.mesh_service, settings.mesh_allow_plain) {
            (Some(_), _) => Err(invalid("mesh-service", "needs --mesh")),
            (None, Some(true)) => Err(invalid("mesh-allow-plain", "needs --mesh")),
            _ => Ok(None),
        };
    }
    if backends_are_static {
        return Err(invalid(
            "mesh",
            "needs nodes discovered in Consul, not --backend URLs",
        ));
    }
    if settings.backend_tls.unwrap_or(false) || settings.backend_ca.is_some() {
        return Err(invalid(
            "mesh",
            "replaces --backend-tls: mesh nodes present Consul Connect certificates",
        ));
    }
    let service = settings
        .mesh_service
        .clone()
        .unwrap_or_else(|| contract::ROUTER_SERVICE_NAME.to_owned());
    if !is_dns_label(&service) {
        return Err(invalid(
            "mesh-service",
            format!("{service:?}: must be letters, digits and '-' (a valid DNS label)"),
        ));
    }
    Ok(Some(MeshSettings {
        service,
        allow_plain: settings.mesh_allow_plain.unwrap_or(false),
    }))
}

/// Consul service names ollama-mesh accepts: letters, digits and '-'.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Secure by default: a router whose listeners are reachable from other machines requires keys
/// unless anonymous access is asked for by name. Asking for both is a mistake worth stopping
/// on, and so is asking for two key sources (each would replace the other's keys).
fn check_access(
    listeners: [(&str, SocketAddr); 2],
    keys: &KeySources,
    allow_anonymous: bool,
) -> Result<(), ConfigError> {
    if keys.consul && keys.file.is_some() {
        return Err(invalid(
            "keys-file",
            "cannot be combined with --keys-from-consul: choose one key source",
        ));
    }
    match (keys.required(), allow_anonymous) {
        (true, true) => Err(invalid(
            "allow-anonymous",
            "cannot be combined with --keys-from-consul or --keys-file, which require keys",
        )),
        (false, false) => match listeners.iter().find(|(_, addr)| !addr.ip().is_loopback()) {
            Some((flag, addr)) => Err(invalid(
                "allow-anonymous",
                format!(
                    "no API key source is configured and --{flag} {addr} is reachable from other \
                     machines; give --keys-from-consul or --keys-file to require keys, or \
                     --allow-anonymous to serve without them"
                ),
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// A size: positive, or `default` when unset.
fn size(field: &'static str, value: Option<&str>, default: u64) -> Result<u64, ConfigError> {
    match value.map(parse_size) {
        None => Ok(default),
        Some(Ok(0)) => Err(invalid(field, "must be greater than zero")),
        Some(Ok(size)) => Ok(size),
        Some(Err(message)) => Err(invalid(field, message)),
    }
}

fn socket_addr(
    field: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or(default);
    text.parse().map_err(|_| {
        invalid(
            field,
            format!("{text:?} is not an IP:PORT address (such as {default})"),
        )
    })
}

/// A timeout: a positive duration, or `default` when unset.
fn timeout(
    field: &'static str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    value.map_or(Ok(default), |text| positive_duration(field, text))
}

fn positive_duration(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let parsed = parse_duration(field, text)?;
    if parsed.is_zero() {
        return Err(invalid(field, "must be greater than zero"));
    }
    Ok(parsed)
}

fn parse_duration(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            field,
            format!("{text:?} is not a duration such as 30s or 5m: {e}"),
        )
    })
}

/// Parses a size: a number of bytes, optionally followed by a unit. `KiB`, `MiB`, `GiB` (and
/// `K`, `M`, `G`, as in Ollama's own settings) are powers of 1024; `kB`/`KB`, `MB`, `GB` are
/// powers of 1000.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 64MiB, 10MB or 1048576"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, kB, MB or GB)"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests;
