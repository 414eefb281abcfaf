//! What operators write (flags, `OLLAMA_MESH_*` and `CONSUL_*` environment variables), and the
//! validated configuration the sidecar runs on. Every invalid value fails at start with the
//! flag's name.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use http::Uri;
use ollama_mesh_consul::config::{ClientConfig, ConsulAddress, ConsulSettings};
use ollama_mesh_consul::contract::{self, InstanceId};
use ollama_mesh_daemon::host_name;
pub use ollama_mesh_daemon::LogFormat;

/// Register the local Ollama in Consul, keep its entry true, and drain it cleanly.
///
/// The sidecar is the only writer of this node's entry in Consul. It registers through the local
/// Consul agent (CONSUL_HTTP_ADDR and Consul's other variables apply) with GPU facts, the models on
/// disk and in memory, an HTTP check and a TTL heartbeat. On SIGTERM or SIGINT, an operator's drain
/// key (`consul kv put ollama-mesh/drain/<instance-id> "reason"`) or a preemption notice, it puts
/// the instance in maintenance so routers stop sending new work, waits for running requests, and
/// (on shutdown) deregisters.
#[derive(Debug, Clone, Parser)]
#[command(name = "ollama-mesh-sidecar", version, args_override_self = true)]
pub struct Args {
    /// Ollama's API, as this sidecar and the local Consul agent reach it.
    #[arg(
        long,
        env = "OLLAMA_MESH_OLLAMA_URL",
        default_value = "http://127.0.0.1:11434"
    )]
    pub ollama_url: String,

    /// What routers connect to (http://HOST:PORT). Default: the address this node reaches
    /// Consul from, with Ollama's port (in mesh mode, the --mesh-listen port).
    #[arg(long, env = "OLLAMA_MESH_ADVERTISE")]
    pub advertise: Option<String>,

    /// Consul service name.
    #[arg(long, env = "OLLAMA_MESH_SERVICE_NAME", default_value = contract::DEFAULT_SERVICE_NAME)]
    pub service_name: String,

    /// Instance ID (letters, digits, `_ . -`). Default: `<service>-<node>-<port>`.
    #[arg(long, env = "OLLAMA_MESH_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Node name used in the default instance ID. Default: the host name.
    #[arg(long, env = "OLLAMA_MESH_NODE_NAME")]
    pub node_name: Option<String>,

    /// How to learn about GPUs: `nvidia-smi`, or `none` on CPU nodes.
    #[arg(long, env = "OLLAMA_MESH_GPU_PROBE", value_enum, default_value_t = GpuProbeKind::NvidiaSmi)]
    pub gpu_probe: GpuProbeKind,

    /// The nvidia-smi executable.
    #[arg(long, env = "OLLAMA_MESH_NVIDIA_SMI", default_value = "nvidia-smi")]
    pub nvidia_smi: PathBuf,

    /// Requests one loaded model serves at once (Ollama's OLLAMA_NUM_PARALLEL; Ollama does not
    /// report it).
    #[arg(long, env = "OLLAMA_MESH_PARALLEL_SLOTS", default_value_t = 1)]
    pub parallel_slots: u32,

    /// Routing weight while passing. Default: parallel slots × GPUs.
    #[arg(long, env = "OLLAMA_MESH_WEIGHT")]
    pub weight: Option<u32>,

    /// Routing weight while a check warns (e.g. GPU probing fails).
    #[arg(long, env = "OLLAMA_MESH_WARNING_WEIGHT", default_value_t = 1)]
    pub warning_weight: u32,

    /// Mark the node as preemptible (spot) in its Meta.
    #[arg(long, env = "OLLAMA_MESH_PREEMPTIBLE")]
    pub preemptible: bool,

    /// How long to let running requests finish after maintenance is on, before deregistering.
    #[arg(long, env = "OLLAMA_MESH_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// A cloud metadata URL that answers 200 when preemption is imminent (e.g. AWS
    /// http://169.254.169.254/latest/meta-data/spot/instance-action); polled, a 200 starts a drain.
    #[arg(long, env = "OLLAMA_MESH_PREEMPTION_NOTICE_URL")]
    pub preemption_notice_url: Option<String>,

    /// How often to poll the preemption notice URL.
    #[arg(long, env = "OLLAMA_MESH_PREEMPTION_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub preemption_poll_interval: Duration,

    /// How often to read Ollama's version, models on disk and loaded models.
    #[arg(long, env = "OLLAMA_MESH_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// How often to run the GPU probe.
    #[arg(long, env = "OLLAMA_MESH_GPU_PROBE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub gpu_probe_interval: Duration,

    /// Longest the GPU probe may run.
    #[arg(long, env = "OLLAMA_MESH_GPU_PROBE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub gpu_probe_timeout: Duration,

    /// Least time between two Meta updates (each one is a Raft write in Consul).
    #[arg(long, env = "OLLAMA_MESH_META_MIN_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub meta_min_interval: Duration,

    /// Interval of the agent's HTTP check on Ollama.
    #[arg(long, env = "OLLAMA_MESH_CHECK_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub check_interval: Duration,

    /// Timeout of the agent's HTTP check on Ollama.
    #[arg(long, env = "OLLAMA_MESH_CHECK_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub check_timeout: Duration,

    /// TTL of the heartbeat check; the sidecar reports at every poll, so keep it several poll
    /// intervals long.
    #[arg(long, env = "OLLAMA_MESH_HEARTBEAT_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub heartbeat_ttl: Duration,

    /// Consul removes the instance after its heartbeat has been critical this long (at least 1m),
    /// so registrations of dead sidecars do not pile up.
    #[arg(long, env = "OLLAMA_MESH_DEREGISTER_CRITICAL_AFTER", default_value = "10m", value_parser = humantime::parse_duration)]
    pub deregister_critical_after: Duration,

    /// Mesh mode: put Ollama behind Consul Connect mutual TLS on --mesh-listen, register the node
    /// Connect-native on that port, and let only services the intentions allow reach Ollama.
    /// Ollama must then listen on loopback only (OLLAMA_HOST=127.0.0.1:11434), or the mesh could
    /// be bypassed.
    #[arg(long, env = "OLLAMA_MESH_MESH")]
    pub mesh: bool,

    /// Where mesh mode accepts Connect mTLS connections (ADDR:PORT); routers are told this port
    /// unless --advertise says otherwise.
    #[arg(long, env = "OLLAMA_MESH_MESH_LISTEN", default_value = "0.0.0.0:11444")]
    pub mesh_listen: String,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off when unset).
    #[arg(long, env = "OLLAMA_MESH_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Consul's HTTP API (overrides CONSUL_HTTP_ADDR).
    #[arg(long, env = "OLLAMA_MESH_CONSUL_ADDR")]
    pub consul_addr: Option<String>,

    /// Log format.
    #[arg(long, env = "OLLAMA_MESH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How GPU facts are learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GpuProbeKind {
    /// Run nvidia-smi.
    NvidiaSmi,
    /// CPU node: report no GPUs.
    None,
}

/// A flag whose value cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--{field}: {message}")]
pub struct ConfigError {
    /// The flag's name.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        message: message.into(),
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Ollama's base URL (no trailing slash).
    pub ollama_url: String,
    /// Address routers connect to.
    pub advertise_host: String,
    /// Port routers connect to: Ollama's, or in mesh mode the mesh listener's.
    pub advertise_port: u16,
    /// Consul service name.
    pub service_name: String,
    /// Instance ID.
    pub instance_id: InstanceId,
    /// GPU probe.
    pub gpu_probe: GpuProbe,
    /// Parallel slots per loaded model.
    pub parallel_slots: u32,
    /// Fixed passing weight, if set.
    pub weight: Option<u32>,
    /// Warning weight.
    pub warning_weight: u32,
    /// Preemptible node.
    pub preemptible: bool,
    /// Drain period.
    pub drain_timeout: Duration,
    /// Preemption notice URL and its poll interval.
    pub preemption_notice: Option<(String, Duration)>,
    /// Poll interval for Ollama.
    pub poll_interval: Duration,
    /// GPU probe interval.
    pub gpu_probe_interval: Duration,
    /// Least time between Meta writes.
    pub meta_min_interval: Duration,
    /// Agent HTTP check interval and timeout.
    pub check_interval: Duration,
    /// Agent HTTP check timeout.
    pub check_timeout: Duration,
    /// Heartbeat TTL.
    pub heartbeat_ttl: Duration,
    /// Deregister after critical this long.
    pub deregister_critical_after: Duration,
    /// Consul client configuration.
    pub consul: ClientConfig,
    /// Mesh mode's settings; `None` when Ollama is reached directly.
    pub mesh: Option<MeshConfig>,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// Mesh mode: Connect mTLS in front of a loopback-only Ollama.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// Where the mTLS listener binds.
    pub listen: SocketAddr,
    /// Ollama's host as written in `--ollama-url` (a loopback address or `localhost`).
    pub ollama_host: String,
    /// Ollama's port.
    pub ollama_port: u16,
}

/// How GPU facts are learned, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuProbe {
    /// Run this nvidia-smi with a time limit.
    NvidiaSmi {
        /// The executable.
        path: PathBuf,
        /// Longest run.
        timeout: Duration,
    },
    /// No GPUs.
    None,
}

impl SidecarConfig {
    /// Validates `args`; `consul_env` are Consul's own variables (flags win over them).
    pub fn from_args(args: &Args, consul_env: ConsulSettings) -> Result<Self, ConfigError> {
        let consul = consul_env
            .overridden_by(ConsulSettings {
                http_addr: args.consul_addr.clone(),
                ..ConsulSettings::default()
            })
            .validate()
            .map_err(|e| invalid("consul-addr", e.to_string()))?;

        let (ollama_url, ollama_host, ollama_port) =
            parse_http_url("ollama-url", &args.ollama_url)?;
        let mesh = if args.mesh {
            Some(mesh_config(args, &ollama_host, ollama_port)?)
        } else {
            None
        };
        let metrics_listen = args
            .metrics_listen
            .as_deref()
            .map(|addr| parse_listen_addr("metrics-listen", addr))
            .transpose()?;
        let (advertise_host, advertise_port) = match &args.advertise {
            Some(url) => {
                let (_, host, port) = parse_http_url("advertise", url)?;
                (host, port)
            }
            None => (
                default_advertise_host(&consul.address, &ollama_host),
                // In mesh mode routers must come through the mTLS listener, never to Ollama.
                mesh.as_ref().map_or(ollama_port, |mesh| mesh.listen.port()),
            ),
        };
        if args.service_name.is_empty()
            || !args
                .service_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(invalid(
                "service-name",
                "must be letters, digits and '-' (a valid DNS label)",
            ));
        }
        let instance_id = match &args.instance_id {
            Some(id) => InstanceId::parse(id),
            None => {
                let node = args.node_name.clone().unwrap_or_else(host_name);
                InstanceId::for_node(&args.service_name, &node, ollama_port)
            }
        }
        .map_err(|e| invalid("instance-id", e.to_string()))?;

        let positive = |field, d: Duration| {
            if d.is_zero() {
                Err(invalid(field, "must be greater than zero"))
            } else {
                Ok(d)
            }
        };
        if args.deregister_critical_after < Duration::from_secs(60) {
            return Err(invalid(
                "deregister-critical-after",
                "must be at least 1m (Consul's minimum)",
            ));
        }
        if args.heartbeat_ttl <= args.poll_interval {
            return Err(invalid(
                "heartbeat-ttl",
                "must be longer than --poll-interval, or the heartbeat expires between reports",
            ));
        }
        if args.parallel_slots == 0 {
            return Err(invalid("parallel-slots", "must be at least 1"));
        }
        let preemption_notice = match &args.preemption_notice_url {
            Some(url) => {
                parse_http_url("preemption-notice-url", url)?;
                Some((
                    url.clone(),
                    positive("preemption-poll-interval", args.preemption_poll_interval)?,
                ))
            }
            None => None,
        };
        Ok(Self {
            ollama_url,
            advertise_host,
            advertise_port,
            service_name: args.service_name.clone(),
            instance_id,
            gpu_probe: match args.gpu_probe {
                GpuProbeKind::NvidiaSmi => GpuProbe::NvidiaSmi {
                    path: args.nvidia_smi.clone(),
                    timeout: positive("gpu-probe-timeout", args.gpu_probe_timeout)?,
                },
                GpuProbeKind::None => GpuProbe::None,
            },
            parallel_slots: args.parallel_slots,
            weight: args.weight,
            warning_weight: args.warning_weight,
            preemptible: args.preemptible,
            drain_timeout: args.drain_timeout,
            preemption_notice,
            poll_interval: positive("poll-interval", args.poll_interval)?,
            gpu_probe_interval: positive("gpu-probe-interval", args.gpu_probe_interval)?,
            meta_min_interval: args.meta_min_interval,
            check_interval: positive("check-interval", args.check_interval)?,
            check_timeout: positive("check-timeout", args.check_timeout)?,
            heartbeat_ttl: args.heartbeat_ttl,
            deregister_critical_after: args.deregister_critical_after,
            consul,
            mesh,
            metrics_listen,
        })
    }

    /// One line per setting for the start-up log. Holds no secrets: the Consul token is not in it.
    pub fn summary(&self) -> String {
        format!(
            "instance {} of service {:?}; Ollama {}; advertised as {}:{}; consul {}{}; gpu probe {}; \
             {} slot(s) per model; weight {}; poll every {:?}; drain timeout {:?}; preemption notice {}; \
             mesh {}; metrics {}",
            self.instance_id,
            self.service_name,
            self.ollama_url,
            self.advertise_host,
            self.advertise_port,
            self.consul.address,
            if self.consul.token.is_some() { " (with ACL token)" } else { "" },
            match &self.gpu_probe {
                GpuProbe::NvidiaSmi { path, .. } => path.display().to_string(),
                GpuProbe::None => "none".into(),
            },
            self.parallel_slots,
            self.weight.map_or("slots × GPUs".to_owned(), |w| w.to_string()),
            self.poll_interval,
            self.drain_timeout,
            self.preemption_notice.as_ref().map_or("off", |(url, _)| url.as_str()),
            self.mesh.as_ref().map_or("off".to_owned(), |mesh| format!("on {}", mesh.listen)),
            self.metrics_listen.map_or("off".to_owned(), |addr| format!("http://{addr}/metrics")),
        )
    }
}

/// Mesh mode's settings. Ollama must be reachable on loopback only: anything else could reach
/// it around the mesh, and an Ollama on loopback is also where the agent's HTTP check on the
/// same host finds it.
fn mesh_config(
    args: &Args,
    ollama_host: &str,
    ollama_port: u16,
) -> Result<MeshConfig, ConfigError> {
    if !is_loopback(ollama_host) {
        return Err(invalid(
            "ollama-url",
            format!(
                "{ollama_host:?} is not a loopback address: in mesh mode Ollama must listen on \
                 loopback only, or clients could bypass the mesh; set OLLAMA_HOST=127.0.0.1:11434 \
                 for Ollama and --ollama-url http://127.0.0.1:11434 here"
            ),
        ));
    }
    let listen = parse_listen_addr("mesh-listen", &args.mesh_listen)?;
    if listen.port() == 0 {
        return Err(invalid(
            "mesh-listen",
            "needs a fixed port: it is the port registered in Consul",
        ));
    }
    Ok(MeshConfig {
        listen,
        ollama_host: ollama_host.to_owned(),
        ollama_port,
    })
}

/// Whether `host` (an IP address or a name, as in a URL) is this host's loopback.
pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Parses a listen address, `IP:PORT` (`[::]:PORT` for IPv6).
fn parse_listen_addr(field: &'static str, addr: &str) -> Result<SocketAddr, ConfigError> {
    addr.parse().map_err(|_| {
        invalid(
            field,
            format!("{addr:?} is not an address to listen on (IP:PORT, e.g. 0.0.0.0:11444)"),
        )
    })
}

/// Parses an `http://host:port` URL; returns it without a trailing slash, its host and port.
fn parse_http_url(field: &'static str, url: &str) -> Result<(String, String, u16), ConfigError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| invalid(field, format!("{url:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid(
            field,
            format!("{url:?}: only http:// URLs are supported"),
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| invalid(field, format!("{url:?} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    Ok((url.trim_end_matches('/').to_owned(), host, port))
}

/// The address this node reaches Consul from: what a remote router can most likely reach too.
/// Falls back to Ollama's own host when Consul is on a Unix socket or cannot be resolved.
fn default_advertise_host(consul: &ConsulAddress, ollama_host: &str) -> String {
    let ConsulAddress::Tcp { host, port, .. } = consul else {
        return ollama_host.to_owned();
    };
    let local = UdpSocket::bind(("0.0.0.0", 0))
        .and_then(|socket| {
            socket.connect((host.as_str(), *port))?;
            socket.local_addr()
        })
        .map(|addr| addr.ip());
    match local {
        Ok(ip) if !ip.is_unspecified() => ip.to_string(),
        _ => ollama_host.to_owned(),
    }
}

#[cfg(test)]
mod tests;
