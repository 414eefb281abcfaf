//! The sidecar's main loop: observe Ollama and the GPUs, keep the Consul registration true,
//! follow the operator's drain key and the preemption notice, and drain on shutdown.
//!
//! In mesh mode it also runs the Connect mTLS listener in front of Ollama, and registers only
//! once the node holds a certificate.
//!
//! It never exits because Consul or Ollama is down: it keeps observing, retries Consul with
//! backoff, and logs once per change of state rather than once per failed attempt.

use std::future::Future;
use std::time::Duration;

use ollama_mesh_consul::contract::{kv as layout, NodeMeta};
use ollama_mesh_consul::kv::KvPair;
use ollama_mesh_consul::watch::{Watch, WatchConfig};
use ollama_mesh_consul::{Client, Error as ConsulError};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::SidecarConfig;
use crate::listener::Server;
use crate::mesh::Mesh;
use crate::metrics_endpoint;
use crate::registration::{self, Heartbeat, Observation, SummaryCopy};
use crate::{gpu, SidecarError};
use ollama_mesh_daemon::Notifier;
use ollama_mesh_ollama_client::NodeClient;

/// Backoff between registration attempts while Consul fails; capped low so a returning agent
/// sees the node again within seconds.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Longest one reading of Ollama (its three GETs, made at once) may take.
const OLLAMA_TIMEOUT: Duration = Duration::from_secs(5);

/// A configured sidecar, ready to run.
pub struct Sidecar {
    config: SidecarConfig,
    consul: Client,
    /// Reads the local Ollama.
    ollama: NodeClient,
    notifier: Notifier,
}

/// The registration as the sidecar believes the agent holds it.
struct Consul {
    client: Client,
    /// The Meta last registered, and when; `None` until registered (or after the agent lost it).
    registered: Option<(NodeMeta, Instant)>,
    /// How far the heartbeat's summary has got towards the catalog the Consul UI reads.
    summary: SummaryCopy,
    /// The maintenance reason the operator's drain key asks for.
    wanted_maintenance: Option<String>,
    /// The maintenance reason the agent has.
    applied_maintenance: Option<String>,
    reachable: bool,
    retry_at: Instant,
    retry_delay: Duration,
}

/// The servers beside the main loop; they serve through the drain period and stop when
/// [`Sidecar::run`] returns and drops them.
struct Listeners {
    mesh: Option<Mesh>,
    _metrics: Option<Server>,
}

impl Listeners {
    /// Binds every configured listener, so a taken port fails the start before registering.
    async fn start(config: &SidecarConfig, consul: &Client) -> Result<Self, SidecarError> {
        let mesh = match &config.mesh {
            Some(mesh) => Some(
                Mesh::start(
                    mesh,
                    &config.service_name,
                    &config.advertise_host,
                    consul.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let metrics = match config.metrics_listen {
            Some(addr) => Some(metrics_endpoint::start(addr).await?),
            None => None,
        };
        Ok(Self {
            mesh,
            _metrics: metrics,
        })
    }

    /// Resolves once this node has its first Connect certificate; never outside mesh mode.
    async fn mesh_ready(&self) {
        match &self.mesh {
            Some(mesh) => mesh.ready().await,
            None => std::future::pending().await,
        }
    }
}

impl Sidecar {
    /// A sidecar for `config`, reporting to systemd through `notifier`.
    pub fn new(config: SidecarConfig, notifier: Notifier) -> Result<Self, SidecarError> {
        let consul = Client::new(&config.consul)?;
        let ollama = NodeClient::http();
        Ok(Self {
            config,
            consul,
            ollama,
            notifier,
        })
    }

    /// Runs until `shutdown` resolves (with a reason for the maintenance note) or a preemption
    /// notice arrives, then drains and deregisters.
    pub async fn run(self, shutdown: impl Future<Output = String>) -> Result<(), SidecarError> {
        let config = &self.config;
        let listeners = Listeners::start(config, &self.consul).await?;
        let mesh_ready = listeners.mesh_ready();
        let drain_key = layout::drain_key(&config.instance_id);
        let drain_watch = watch_key(self.consul.clone(), drain_key.clone());
        let mut drain_updates = drain_watch.subscribe();
        let preemption = preemption_notice(config.preemption_notice.clone());
        tokio::pin!(shutdown, preemption, mesh_ready);

        let mut poll = tokio::time::interval(config.poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watchdog = tokio::time::interval(
            self.notifier
                .watchdog_interval()
                .unwrap_or(Duration::from_secs(3600)),
        );
        let mut consul = Consul {
            client: self.consul.clone(),
            registered: None,
            summary: SummaryCopy::default(),
            wanted_maintenance: None,
            applied_maintenance: None,
            reachable: true,
            retry_at: Instant::now(),
            retry_delay: RETRY_INITIAL,
        };
        let mut observed = Observation::default();
        let mut next_gpu_probe = Instant::now();
        let mut ready = false;
        // In mesh mode the node is registered only once it has a Connect certificate: before,
        // every router's handshake with it would fail.
        let mut may_register = listeners.mesh.is_none();

        loop {
            tokio::select! {
                _ = poll.tick() => {
                    self.observe(&mut observed, &mut next_gpu_probe).await;
                    if may_register {
                        consul.sync(config, &observed).await;
                    }
                    if !ready && consul.registered.is_some() {
                        self.notifier.ready();
                        ready = true;
                    }
                }
                () = &mut mesh_ready, if !may_register => {
                    may_register = true;
                    poll.reset_immediately();
                }
                Ok(()) = drain_updates.changed() => {
                    let snapshot = drain_updates.borrow_and_update().clone();
                    if let Some(pair) = snapshot {
                        consul.wanted_maintenance = Option::as_ref(&pair).map(|pair| operator_drain_reason(&drain_key, pair));
                        consul.apply_maintenance(config).await;
                    }
                }
                reason = &mut shutdown => {
                    return self.drain_and_leave(&mut consul, &reason).await;
                }
                () = &mut preemption => {
                    return self.drain_and_leave(&mut consul, "preemption notice received").await;
                }
                _ = watchdog.tick() => self.notifier.watchdog(),
            }
        }
    }

    /// Reads Ollama every poll and the GPUs when due, keeping the last good readings.
    async fn observe(&self, observed: &mut Observation, next_gpu_probe: &mut Instant) {
        let (ollama, gpu) = tokio::join!(
            self.ollama
                .read_state(&self.config.ollama_url, OLLAMA_TIMEOUT),
            async {
                if Instant::now() < *next_gpu_probe {
                    return None;
                }
                *next_gpu_probe = Instant::now() + self.config.gpu_probe_interval;
                Some(gpu::probe(&self.config.gpu_probe).await)
            }
        );
        match ollama {
            Ok(state) => {
                if observed.ollama_error.take().is_some() {
                    tracing::info!(ollama = %self.config.ollama_url, "Ollama is reachable again");
                }
                observed.ollama = Some(state);
            }
            Err(error) => {
                if observed.ollama_error.is_none() {
                    tracing::warn!(%error, "cannot read Ollama; heartbeat goes critical");
                }
                observed.ollama_error = Some(error.to_string());
            }
        }
        match gpu {
            None => {}
            Some(Ok(info)) => {
                if observed.gpu_error.take().is_some() {
                    tracing::info!("GPU probe works again");
                }
                observed.gpu = Some(info);
            }
            Some(Err(error)) => {
                if observed.gpu_error.is_none() {
                    tracing::warn!(%error, "GPU probe failed; heartbeat goes to warning and keeps the last GPU facts");
                }
                observed.gpu_error = Some(error.to_string());
            }
        }
    }

    /// Maintenance on (routers stop sending new work), wait for running requests, deregister.
    async fn drain_and_leave(&self, consul: &mut Consul, reason: &str) -> Result<(), SidecarError> {
        let config = &self.config;
        tracing::info!(reason, drain_timeout = ?config.drain_timeout, "draining");
        self.notifier.stopping();
        consul.wanted_maintenance = Some(format!("draining: {reason}"));
        consul.apply_maintenance(config).await;
        // Ollama does not report running requests, so the drain waits the configured period;
        // routers stop sending new work as soon as they see the maintenance check.
        tokio::time::sleep(config.drain_timeout).await;
        match consul
            .client
            .deregister_service(config.instance_id.as_str())
            .await
        {
            Ok(()) => tracing::info!(instance = %config.instance_id, "deregistered"),
            Err(error) => {
                tracing::warn!(%error, "could not deregister; Consul removes the instance once its heartbeat has been critical long enough")
            }
        }
        Ok(())
    }
}

impl Consul {
    /// Makes the agent's registration match what was observed: registers when it is missing,
    /// reports the heartbeat, registers again when Meta changed or the catalog lags the
    /// heartbeat's summary (at most once per `meta_min_interval`, but at once after a
    /// registration from scratch), and applies the wanted maintenance state.
    async fn sync(&mut self, config: &SidecarConfig, observed: &Observation) {
        if Instant::now() < self.retry_at {
            return;
        }
        let meta = registration::node_meta(config, observed);
        let heartbeat = registration::heartbeat(observed);
        if self.registered.is_none() && !self.register(config, meta.clone(), observed).await {
            return;
        }
        // Reported before any new registration, which then carries this summary to the catalog.
        if self.report(config, &meta, observed, &heartbeat).await
            && self.registration_due(config, &meta)
        {
            self.register(config, meta, observed).await;
        }
        self.apply_maintenance(config).await;
    }

    /// Reports the heartbeat; registers again first when the agent lost the registration.
    async fn report(
        &mut self,
        config: &SidecarConfig,
        meta: &NodeMeta,
        observed: &Observation,
        heartbeat: &Heartbeat,
    ) -> bool {
        let check = registration::heartbeat_check_id(config);
        let mut result = self
            .client
            .update_ttl_check(&check, heartbeat.status, &heartbeat.output)
            .await;
        // The agent answered but does not know the check: it lost the registration (a
        // restarted dev agent, a wiped data dir). Register again at once.
        if let Err(error) = &result {
            if error.status().is_some() {
                tracing::warn!(%error, "the Consul agent lost this registration; registering again");
                self.registered = None;
                self.applied_maintenance = None;
                if !self.register(config, meta.clone(), observed).await {
                    return false;
                }
                result = self
                    .client
                    .update_ttl_check(&check, heartbeat.status, &heartbeat.output)
                    .await;
            }
        }
        match result {
            Ok(()) => {
                self.succeeded();
                self.summary.reported(heartbeat);
                true
            }
            Err(error) => {
                self.failed(error);
                false
            }
        }
    }

    /// Whether the registration must be written again: Meta changed, or the catalog shows an
    /// older summary than the agent (which the agent would copy only minutes later).
    fn registration_due(&self, config: &SidecarConfig, meta: &NodeMeta) -> bool {
        let Some((registered, at)) = &self.registered else {
            return true;
        };
        let changed = registered != meta || self.summary.catalog_lags();
        // A new node's first summary shows at once; later changes wait out the interval.
        let allowed = at.elapsed() >= config.meta_min_interval || self.summary.catalog_unknown();
        changed && allowed
    }

    async fn register(
        &mut self,
        config: &SidecarConfig,
        meta: NodeMeta,
        observed: &Observation,
    ) -> bool {
        let service = registration::service(config, &meta, observed);
        match self.client.register_service(&service).await {
            Ok(()) => {
                let anew = self.registered.is_none();
                if anew
                    || self
                        .registered
                        .as_ref()
                        .is_some_and(|(old, _)| *old != meta)
                {
                    tracing::info!(
                        instance = %config.instance_id,
                        models_loaded = ?meta.models_loaded.names(),
                        models_on_disk = meta.models_on_disk.total(),
                        weight = service.weights.passing,
                        "registered in Consul"
                    );
                } else {
                    tracing::debug!(
                        "registered again to bring the heartbeat's summary to the catalog"
                    );
                }
                self.summary.registered(anew);
                self.registered = Some((meta, Instant::now()));
                self.succeeded();
                true
            }
            Err(error) => {
                self.failed(error);
                false
            }
        }
    }

    /// Brings the agent's maintenance state to the wanted one.
    async fn apply_maintenance(&mut self, config: &SidecarConfig) {
        if self.registered.is_none() || self.wanted_maintenance == self.applied_maintenance {
            return;
        }
        let id = config.instance_id.as_str();
        let result = match &self.wanted_maintenance {
            Some(reason) => self.client.set_service_maintenance(id, true, reason).await,
            None => self.client.set_service_maintenance(id, false, "").await,
        };
        match result {
            Ok(()) => {
                match &self.wanted_maintenance {
                    Some(reason) => {
                        tracing::info!(reason, "maintenance on: routers send no new work")
                    }
                    None => tracing::info!("maintenance off: back in service"),
                }
                self.applied_maintenance = self.wanted_maintenance.clone();
            }
            Err(error) => self.failed(error),
        }
    }

    fn succeeded(&mut self) {
        if !self.reachable {
            tracing::info!(consul = %self.client.address(), "Consul is reachable again");
            self.reachable = true;
        }
        self.retry_delay = RETRY_INITIAL;
    }

    fn failed(&mut self, error: ConsulError) {
        if self.reachable {
            tracing::warn!(%error, "Consul request failed; retrying with backoff");
            self.reachable = false;
        } else {
            tracing::debug!(%error, "Consul still failing");
        }
        self.retry_at = Instant::now() + self.retry_delay;
        self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
    }
}

/// The maintenance note for an operator's drain key.
fn operator_drain_reason(key: &str, pair: &KvPair) -> String {
    let reason = pair.value_str().map(str::trim).unwrap_or_default();
    if reason.is_empty() {
        format!("drained by an operator ({key})")
    } else {
        format!("drained by an operator ({key}): {reason}")
    }
}

/// Follows one KV key: `Some(None)` once it is known to be absent.
fn watch_key(client: Client, key: String) -> Watch<Option<KvPair>> {
    let config = WatchConfig {
        wait: Duration::from_secs(60),
        ..WatchConfig::default()
    };
    Watch::spawn(format!("kv/{key}"), config, move |options| {
        let client = client.clone();
        let key = key.clone();
        async move { client.kv_get(&key, &options).await }
    })
}

/// Resolves when the cloud's metadata endpoint announces preemption (answers 200); never when
/// no URL is configured.
async fn preemption_notice(notice: Option<(String, Duration)>) {
    let Some((url, interval)) = notice else {
        return std::future::pending().await;
    };
    let http = NodeClient::http();
    let timeout = interval.max(Duration::from_secs(1));
    let mut failing = false;
    loop {
        match http.get(&url, timeout).await {
            Ok(answer) if answer.status.is_success() => {
                tracing::warn!(%url, "preemption notice received");
                return;
            }
            Ok(_) => failing = false,
            Err(error) => {
                if !failing {
                    tracing::warn!(%url, %error, "cannot read the preemption notice URL");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}
