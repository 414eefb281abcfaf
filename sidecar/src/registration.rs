//! What the sidecar writes to Consul: the service definition with its checks and weights, and
//! the heartbeat's status and one-line summary for the operator reading the Consul UI.

use ollama_mesh_consul::agent::{
    CheckDefinition, CheckKind, ConnectSettings, ServiceRegistration, Weights,
};
use ollama_mesh_consul::contract::{self, ModelList, NodeMeta};
use ollama_mesh_consul::health::CheckStatus;
use ollama_mesh_ollama_client::NodeState;

use crate::config::SidecarConfig;
use crate::gpu::GpuInfo;

/// What the sidecar knows about its node right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// The last good reading of Ollama (kept while Ollama is unreachable).
    pub ollama: Option<NodeState>,
    /// Why the latest Ollama reading failed, if it did.
    pub ollama_error: Option<String>,
    /// The last good GPU reading.
    pub gpu: Option<GpuInfo>,
    /// Why the latest GPU probe failed, if it did.
    pub gpu_error: Option<String>,
}

/// The heartbeat check's ID for an instance.
pub fn heartbeat_check_id(config: &SidecarConfig) -> String {
    format!("{}:heartbeat", config.instance_id)
}

/// The agent HTTP check's ID for an instance.
pub fn ollama_check_id(config: &SidecarConfig) -> String {
    format!("{}:ollama", config.instance_id)
}

/// The node's Meta as the contract defines it.
pub fn node_meta(config: &SidecarConfig, observed: &Observation) -> NodeMeta {
    let gpu = observed.gpu.clone().unwrap_or_default();
    let ollama = observed.ollama.clone().unwrap_or_default();
    NodeMeta {
        gpu_name: gpu.name,
        gpu_count: gpu.count,
        gpu_vram_mib: gpu.vram_total_mib,
        parallel_slots: config.parallel_slots,
        models_on_disk: ModelList::new(ollama.models_on_disk),
        models_loaded: ModelList::new(ollama.models_loaded.into_iter().map(|m| m.name)),
        ollama_version: observed.ollama.as_ref().map(|o| o.version.clone()),
        sidecar_version: env!("CARGO_PKG_VERSION").to_owned(),
        preemptible: config.preemptible,
    }
}

/// Weights: the configured one, or capacity (slots × GPUs, at least 1) while passing.
pub fn weights(config: &SidecarConfig, meta: &NodeMeta) -> Weights {
    let capacity = config.parallel_slots.saturating_mul(meta.gpu_count.max(1));
    Weights {
        passing: config.weight.unwrap_or(capacity.max(1)),
        warning: config.warning_weight,
    }
}

/// The full service definition. In mesh mode the instance is Connect-native on the mesh port
/// (already the advertised port), while the agent's HTTP check still goes to Ollama's loopback
/// URL: the agent runs on this host and holds no client certificate.
pub fn service(
    config: &SidecarConfig,
    meta: &NodeMeta,
    observed: &Observation,
) -> ServiceRegistration {
    // Consul starts checks critical and runs an HTTP check first after up to one interval; when
    // the sidecar has just read Ollama, start it passing so the node is routable at once.
    let ollama_answers = observed.ollama.is_some() && observed.ollama_error.is_none();
    ServiceRegistration {
        id: config.instance_id.to_string(),
        name: config.service_name.clone(),
        tags: vec![contract::MESH_TAG.to_owned()],
        address: config.advertise_host.clone(),
        port: config.advertise_port,
        meta: meta.to_consul_meta(),
        weights: weights(config, meta),
        checks: vec![
            CheckDefinition {
                check_id: ollama_check_id(config),
                name: "Ollama API".into(),
                notes: format!(
                    "The Consul agent polls Ollama's /api/version at {} every {:?}.",
                    config.ollama_url, config.check_interval
                ),
                kind: CheckKind::Http {
                    url: format!("{}/api/version", config.ollama_url),
                    interval: config.check_interval,
                    timeout: config.check_timeout,
                },
                status: ollama_answers.then_some(CheckStatus::Passing),
                deregister_critical_after: None,
            },
            CheckDefinition {
                check_id: heartbeat_check_id(config),
                name: "ollama-mesh sidecar heartbeat".into(),
                notes: "Passing while the sidecar reaches Ollama and its model and GPU data is \
                        fresh; warning when GPU probing fails; critical when Ollama is unreachable \
                        or the sidecar stopped reporting."
                    .into(),
                kind: CheckKind::Ttl {
                    ttl: config.heartbeat_ttl,
                },
                // The first heartbeat follows the registration at once; start passing so a
                // healthy node is routable without waiting for it.
                status: Some(CheckStatus::Passing),
                deregister_critical_after: Some(config.deregister_critical_after),
            },
        ],
        connect: config
            .mesh
            .as_ref()
            .map(|_| ConnectSettings { native: true }),
    }
}

/// One report of the heartbeat check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// What routers act on.
    pub status: CheckStatus,
    /// The one-line summary the Consul UI shows on the instance page.
    pub output: String,
}

impl Heartbeat {
    fn new(status: CheckStatus, output: impl Into<String>) -> Self {
        Self {
            status,
            output: output.into(),
        }
    }
}

/// The heartbeat's status and the one-line summary shown on the instance page, e.g.
/// `ollama 0.17.4 · 2× NVIDIA GeForce RTX 4090 48 GiB · loaded: llama3.2:3b · 5 models on disk`.
pub fn heartbeat(observed: &Observation) -> Heartbeat {
    if let Some(error) = &observed.ollama_error {
        return Heartbeat::new(
            CheckStatus::Critical,
            format!("Ollama unreachable: {error}"),
        );
    }
    let Some(ollama) = &observed.ollama else {
        return Heartbeat::new(CheckStatus::Critical, "Ollama not read yet");
    };
    let mut parts = vec![format!("ollama {}", ollama.version)];
    match &observed.gpu {
        Some(gpu) if gpu.count > 0 => parts.push(format!(
            "{}× {} {} GiB",
            gpu.count,
            gpu.name.as_deref().unwrap_or("GPU"),
            (gpu.vram_total_mib + 512) / 1024
        )),
        _ => parts.push("no GPU".into()),
    }
    let loaded: Vec<&str> = ollama
        .models_loaded
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    parts.push(if loaded.is_empty() {
        "nothing loaded".into()
    } else {
        format!("loaded: {}", loaded.join(", "))
    });
    parts.push(format!("{} models on disk", ollama.models_on_disk.len()));
    let summary = parts.join(" · ");
    match &observed.gpu_error {
        Some(error) => Heartbeat::new(
            CheckStatus::Warning,
            format!("GPU probe failing ({error}) · {summary}"),
        ),
        None => Heartbeat::new(CheckStatus::Passing, summary),
    }
}

/// Whether the catalog, which the Consul UI reads, shows the heartbeat the agent holds.
///
/// The agent copies a report to the catalog at once only when its status changed; a report that
/// changed the summary alone waits for Consul's `check_update_interval` (2.5 to 7.5 minutes by
/// default). A service registration, though, copies the agent's current heartbeat (status and
/// summary survive it) at once. This tracks both copies so the sidecar knows when a summary
/// needs a registration to get there.
#[derive(Debug, Default)]
pub struct SummaryCopy {
    /// The last report the agent accepted; `None` right after a registration from scratch, when
    /// the agent may hold whatever an earlier run of the sidecar reported.
    agent: Option<Heartbeat>,
    /// What the catalog holds (or is being sent), as far as the sidecar knows.
    catalog: Option<Heartbeat>,
}

impl SummaryCopy {
    /// A registration was written: it copied the agent's heartbeat to the catalog. `anew` when
    /// the sidecar had no registration (its first, or after the agent lost it): then neither
    /// copy is known.
    pub fn registered(&mut self, anew: bool) {
        if anew {
            *self = Self::default();
        } else {
            self.catalog = self.agent.clone();
        }
    }

    /// The agent accepted `report`.
    pub fn reported(&mut self, report: &Heartbeat) {
        let status_changed = self
            .agent
            .as_ref()
            .is_some_and(|agent| agent.status != report.status);
        if status_changed {
            self.catalog = Some(report.clone());
        }
        self.agent = Some(report.clone());
    }

    /// Whether the catalog may show an older summary than the agent holds.
    pub fn catalog_lags(&self) -> bool {
        self.agent.is_some() && self.catalog != self.agent
    }

    /// Whether nothing is known of the catalog's copy: the registration from scratch was just
    /// written and the first report followed it.
    pub fn catalog_unknown(&self) -> bool {
        self.catalog.is_none()
    }
}

#[cfg(test)]
mod tests;
