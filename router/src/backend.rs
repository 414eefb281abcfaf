//! One Ollama instance as the router sees it: where to connect, whether it takes new work, what
//! it says about itself in Meta, and how many requests this router has in flight on it.
//!
//! A [`Backend`] is immutable: a change in Consul builds a new one. Only its in-flight counter
//! moves, and that counter is shared with the [`Backend`] built for the same instance from the
//! next snapshot, so requests started before a change are still counted after it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ollama_mesh_consul::contract::{routing_state, MetaError, NodeMeta, RoutingState};
use ollama_mesh_consul::health::ServiceEntry;

/// Requests this router has sent to one instance and not yet finished.
///
/// Cloning shares the count: that is how it survives snapshot rebuilds.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// The current count.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one more request. Paired with [`InFlight::release`] by [`InFlightGuard`], never
    /// called on its own.
    pub(crate) fn acquire(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request as finished.
    pub(crate) fn release(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one request on a backend for as long as it lives, so every way a request ends
/// (success, error, client gone, panic) releases the count.
#[derive(Debug)]
pub struct InFlightGuard {
    backend: Arc<Backend>,
}

impl InFlightGuard {
    /// Counts a request on `backend`.
    pub fn new(backend: Arc<Backend>) -> Self {
        backend.in_flight().acquire();
        Self { backend }
    }

    /// The backend the request is counted on.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.backend.in_flight().release();
    }
}

/// Whether this router speaks Consul Connect, and to which nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshPolicy {
    /// The router runs with `--mesh`.
    pub mesh: bool,
    /// With the mesh, nodes registered without Connect are still reached over plain HTTP.
    pub allow_plain: bool,
}

impl MeshPolicy {
    /// How an instance registered with (`connect_native`) or without Connect is reached.
    /// A Connect-native node listens for mTLS only, so plain HTTP to it cannot work; a plain
    /// node is reached from the mesh only when the operator allows it (a migration).
    pub fn reach(self, connect_native: bool) -> Reach {
        match (self.mesh, connect_native) {
            (true, true) => Reach::Mesh,
            (false, false) => Reach::Direct,
            (false, true) => Reach::Skipped(
                "the node is in the service mesh (Connect-native); start the router with --mesh",
            ),
            (true, false) if self.allow_plain => Reach::Direct,
            (true, false) => Reach::Skipped(
                "the node is registered without Connect; --mesh-allow-plain reaches it over plain \
                 HTTP",
            ),
        }
    }
}

/// How the router reaches one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// HTTP, or HTTPS with `--backend-tls`.
    Direct,
    /// Consul Connect mutual TLS.
    Mesh,
    /// Not at all, for the reason given; the instance gets no work.
    Skipped(&'static str),
}

/// An immutable view of one service instance, built from its health entry.
#[derive(Debug)]
pub struct Backend {
    id: Arc<str>,
    node: String,
    address: String,
    /// `address` resolved when the backend was built, so requests never wait on DNS; `None`
    /// when it does not resolve (the instance is then skipped).
    socket_address: Option<SocketAddr>,
    state: RoutingState,
    reach: Reach,
    meta: Result<NodeMeta, MetaError>,
    in_flight: InFlight,
}

impl Backend {
    /// Reads one health entry. `drain_reason` is the value of the instance's drain key, if it
    /// has one; `in_flight` is the counter of the same instance in the previous set (or a new
    /// one); `mesh` decides how it is reached.
    ///
    /// Meta that does not parse (an Ollama registered by hand or by another tool under the
    /// same service name, or a newer schema) does not drop the instance: it is kept with the
    /// error, so the operator can see why it gets no model traffic, and it still serves
    /// requests that name no model.
    pub(crate) fn from_entry(
        entry: &ServiceEntry,
        drain_reason: Option<&str>,
        in_flight: InFlight,
        mesh: MeshPolicy,
    ) -> Self {
        let service = &entry.service;
        let address = socket_address(entry.address(), service.port);
        let resolved = resolve(&address);
        let reach = match resolved {
            Some(_) => mesh.reach(service.connect.native),
            None => Reach::Skipped("the instance's address does not resolve"),
        };
        Self {
            id: service.id.as_str().into(),
            node: entry.node.node.clone(),
            address,
            socket_address: resolved,
            state: routing_state(&entry.checks, service.weights, drain_reason),
            reach,
            meta: NodeMeta::from_consul_meta(&service.meta),
            in_flight,
        }
    }

    /// The instance ID as registered in Consul (the key of its drain flag).
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The Consul node the instance runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Where to connect, as `host:port` (IPv6 hosts in brackets).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Where to connect, resolved; `None` when the address does not resolve, and then
    /// [`Backend::reach`] is [`Reach::Skipped`].
    pub fn socket_address(&self) -> Option<SocketAddr> {
        self.socket_address
    }

    /// Whether and how much the instance takes new work, by the contract's rules.
    pub fn state(&self) -> &RoutingState {
        &self.state
    }

    /// How the router reaches the instance.
    pub fn reach(&self) -> Reach {
        self.reach
    }

    /// The `Host` header for requests to the instance. Through the mesh, Ollama listens on
    /// loopback and refuses foreign hosts, so it is told `localhost`; directly, its own address.
    pub fn host_header(&self) -> &str {
        match self.reach {
            Reach::Mesh => "localhost",
            Reach::Direct | Reach::Skipped(_) => &self.address,
        }
    }

    /// Whether the instance takes new work: by its routing state, and only if this router can
    /// reach it at all.
    pub fn accepts_new_work(&self) -> bool {
        self.state.accepts_new_work() && !matches!(self.reach, Reach::Skipped(_))
    }

    /// What the node says about itself, or why its Meta could not be read.
    pub fn meta(&self) -> Result<&NodeMeta, &MetaError> {
        self.meta.as_ref()
    }

    /// Whether the node has `model` on disk (`x` and `x:latest` are the same model).
    pub fn has_model(&self, model: &str) -> bool {
        self.meta
            .as_ref()
            .is_ok_and(|meta| meta.models_on_disk.contains(model))
    }

    /// Whether the node has more models on disk than its Meta could list, so a model it does
    /// not list may still be there.
    pub fn is_model_list_truncated(&self) -> bool {
        self.meta
            .as_ref()
            .is_ok_and(|meta| meta.models_on_disk.is_truncated())
    }

    /// Whether the node has `model` loaded in memory, ready to answer without a load.
    pub fn has_loaded(&self, model: &str) -> bool {
        self.meta
            .as_ref()
            .is_ok_and(|meta| meta.models_loaded.contains(model))
    }

    /// Requests one loaded model serves at once there (Ollama's `OLLAMA_NUM_PARALLEL`, Meta's
    /// `parallel_slots`), at least one (Meta that does not say still serves one at a time).
    pub fn slots(&self) -> usize {
        let slots = self.meta.as_ref().map_or(0, |meta| meta.parallel_slots);
        usize::try_from(slots).unwrap_or(usize::MAX).max(1)
    }

    /// Requests the node serves at once: its parallel slots per GPU times its GPUs, at least
    /// one (a CPU node, or Meta that does not say, still serves one at a time).
    pub fn capacity(&self) -> usize {
        let (slots, gpus) = self
            .meta
            .as_ref()
            .map_or((0, 0), |meta| (meta.parallel_slots, meta.gpu_count));
        let capacity = u64::from(slots) * u64::from(gpus.max(1));
        usize::try_from(capacity).unwrap_or(usize::MAX).max(1)
    }

    /// Whether this router already has as many requests in flight on the node as it serves
    /// at once, so a new one would queue there.
    pub fn is_at_capacity(&self) -> bool {
        self.in_flight.get() >= self.capacity()
    }

    /// Requests this router has in flight on the instance.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }
}

/// The first address `address` (`host:port`) resolves to. An IP literal is parsed without any
/// I/O; a host name is looked up once here, as the set is built, never per request.
fn resolve(address: &str) -> Option<SocketAddr> {
    match address.to_socket_addrs() {
        Ok(mut addresses) => addresses.next(),
        Err(error) => {
            // Sets are rebuilt often; `discovery` logs the skipped instance once, as it appears.
            tracing::debug!(address, %error, "an instance's address does not resolve");
            None
        }
    }
}

/// `host:port`, with an IPv6 literal in brackets so it parses back as a socket address.
fn socket_address(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests;
