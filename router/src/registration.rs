//! Optional self-registration (`--register`): the router registers itself in the local Consul
//! agent as [`contract::ROUTER_SERVICE_NAME`], so routers show in the Consul UI, in Consul DNS
//! (`ollama-mesh-router.service.consul`) and to Prometheus' Consul service discovery (the ops
//! port is in Meta as `ops_port`, for relabelling the scrape target).
//!
//! The agent runs an HTTP check on the ops `/healthz`. The registration is checked
//! periodically and written again if the agent forgot it (a restarted dev agent, a wiped data
//! directory), and removed on shutdown.
//!
//! Off by default: under Nomad, the job registers its services itself.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ollama_mesh_consul::agent::{CheckDefinition, CheckKind, ServiceRegistration, Weights};
use ollama_mesh_consul::contract::{self, InstanceId, InvalidInstanceId};
use ollama_mesh_consul::Client;
use ollama_mesh_daemon::{host_name, AbortOnDrop};
use tokio::sync::oneshot;

/// The Meta key holding the ops listener's port.
pub const OPS_PORT_META: &str = "ops_port";
/// The Meta key holding the router's version.
pub const VERSION_META: &str = "router_version";

/// Backoff while the agent cannot be reached; capped low so a returning agent lists the router
/// again within seconds.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// How the router describes itself to Consul.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterService {
    /// `ollama-mesh-router-<host>-<port>`.
    pub id: InstanceId,
    /// The client listener as bound (its port is the service port).
    pub listen: SocketAddr,
    /// The ops listener as bound (its port goes in Meta; the agent checks its `/healthz`).
    pub ops_listen: SocketAddr,
    /// How often the agent checks `/healthz`.
    pub check_interval: Duration,
    /// How long one check may take.
    pub check_timeout: Duration,
    /// Consul removes a registration whose check has been critical this long, so a router
    /// that died without deregistering does not stay listed forever (at least one minute).
    pub deregister_critical_after: Duration,
    /// How often the router makes sure the agent still has its registration.
    pub resync_interval: Duration,
}

impl RouterService {
    /// The description for a router on this host, listening on `listen` and `ops_listen` (the
    /// bound addresses, so port 0 has been resolved).
    pub fn new(listen: SocketAddr, ops_listen: SocketAddr) -> Result<Self, InvalidInstanceId> {
        Self::on_host(&host_name(), listen, ops_listen)
    }

    /// The description for a router on `host`.
    pub fn on_host(
        host: &str,
        listen: SocketAddr,
        ops_listen: SocketAddr,
    ) -> Result<Self, InvalidInstanceId> {
        Ok(Self {
            id: InstanceId::for_node(contract::ROUTER_SERVICE_NAME, host, listen.port())?,
            listen,
            ops_listen,
            check_interval: Duration::from_secs(10),
            check_timeout: Duration::from_secs(2),
            deregister_critical_after: Duration::from_secs(600),
            resync_interval: Duration::from_secs(10),
        })
    }

    /// The service definition sent to the agent.
    pub fn definition(&self) -> ServiceRegistration {
        // An unspecified listen address means "every interface": let Consul advertise the
        // node's address. A specific one is what clients must use.
        let address = if self.listen.ip().is_unspecified() {
            String::new()
        } else {
            self.listen.ip().to_string()
        };
        let meta = BTreeMap::from([
            (OPS_PORT_META.to_owned(), self.ops_listen.port().to_string()),
            (
                VERSION_META.to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
        ]);
        ServiceRegistration {
            id: self.id.to_string(),
            name: contract::ROUTER_SERVICE_NAME.to_owned(),
            tags: Vec::new(),
            address,
            port: self.listen.port(),
            meta,
            weights: Weights::default(),
            checks: vec![CheckDefinition {
                check_id: format!("{}:healthz", self.id),
                name: "router /healthz".to_owned(),
                notes: "The local Consul agent polls the router's ops /healthz.".to_owned(),
                kind: CheckKind::Http {
                    url: format!("http://{}/healthz", reachable_locally(self.ops_listen)),
                    interval: self.check_interval,
                    timeout: self.check_timeout,
                },
                status: None,
                deregister_critical_after: Some(self.deregister_critical_after),
            }],
            connect: None,
        }
    }
}

/// The address the local agent reaches a listener on: loopback for a wildcard bind.
fn reachable_locally(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// The running registration: kept in the agent until [`SelfRegistration::stop`].
pub struct SelfRegistration {
    stop: Option<oneshot::Sender<()>>,
    task: AbortOnDrop<()>,
}

impl SelfRegistration {
    /// Registers `service` through `client` (the local agent) in the background, retrying
    /// while the agent is unreachable, and keeps it registered.
    pub fn start(client: Client, service: RouterService) -> Self {
        let (stop, stopped) = oneshot::channel();
        Self {
            stop: Some(stop),
            task: AbortOnDrop::spawn(keep_registered(client, service, stopped)),
        }
    }

    /// Deregisters and stops. Returns once the agent answered (or could not be reached: the
    /// check then goes critical and Consul removes the registration after
    /// [`RouterService::deregister_critical_after`]).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            // The task only ends early if it panicked; then there is nothing to tell.
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Registers, then checks at every resync that the agent still has the registration, until
/// told to stop; then deregisters.
async fn keep_registered(client: Client, service: RouterService, mut stop: oneshot::Receiver<()>) {
    let id = service.id.to_string();
    let definition = service.definition();
    let mut registered = false;
    let mut reachable = true;
    let mut retry_delay = RETRY_INITIAL;
    loop {
        let result = if registered {
            match client.agent_service(&id).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => {
                    tracing::warn!(instance = %id, "the Consul agent lost the router's registration; registering again");
                    registered = false;
                    client.register_service(&definition).await
                }
                Err(error) => Err(error),
            }
        } else {
            client.register_service(&definition).await
        };
        let wait = match result {
            Ok(()) => {
                if !registered {
                    tracing::info!(instance = %id, service = contract::ROUTER_SERVICE_NAME, "registered in Consul");
                    registered = true;
                }
                if !reachable {
                    tracing::info!(consul = client.address(), "Consul is reachable again");
                    reachable = true;
                }
                retry_delay = RETRY_INITIAL;
                service.resync_interval
            }
            Err(error) => {
                if reachable {
                    tracing::warn!(%error, "cannot keep the router registered in Consul; retrying with backoff");
                    reachable = false;
                }
                let wait = retry_delay;
                retry_delay = (retry_delay * 2).min(RETRY_MAX);
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = &mut stop => break,
        }
    }
    match client.deregister_service(&id).await {
        Ok(()) => tracing::info!(instance = %id, "deregistered from Consul"),
        Err(error) => {
            tracing::warn!(%error, instance = %id, "could not deregister; Consul removes the registration once its check has been critical long enough")
        }
    }
}

#[cfg(test)]
mod tests;
