//! A watchdog on every attempt's connection to its node: the first-byte deadline, the longest
//! gap in a stream, and Consul's verdict on the node, each of which ends an attempt that would
//! otherwise wait for `--read-timeout`.
//!
//! # Why a wrapper
//!
//! Pingora gives a session one read timeout (`HttpPeer`'s `read_timeout`) for every read from
//! the node: the wait for the response head, which includes a model load, and each gap
//! between two chunks cannot differ, and nothing outside the request's own task can end a read
//! in progress. So the router makes its connections to the nodes itself
//! (`PeerOptions::custom_l4`: [`NodeConnector`]) and hands Pingora each TCP stream wrapped in a
//! `VirtualSocket` ([`WatchedSocket`]). Every read on it looks up the attempt its task is
//! running — a registry keyed by the tokio task ID, since Pingora reads a node's response on
//! the task of the request, while a pooled connection is polled from the pool's own task,
//! which finds no attempt and reads straight through — and fails with a timeout error once the
//! attempt is [`Cut`]: its first-byte deadline passed, the stream stalled, or the node was
//! declared down (or drained or deregistered, before its first byte) by [`Watchdog::judge`],
//! which runs on every new backend set. TLS (`--backend-tls` and the mesh) runs over the wrapped stream, so
//! the same holds there.
//!
//! Pingora pools only connections with a real file descriptor (it checks the descriptor's peer
//! address before reusing one), so watched connections are not pooled: each attempt connects
//! anew and asks the node to close after its answer (`Connection: close`, so the closed
//! connections wait out TIME_WAIT on the node, not on the router's ports). A connect costs
//! well under a millisecond on a LAN and, in the mesh, one TLS handshake, against answers that
//! take seconds; the deadlines are worth it.
//!
//! Pingora then sees an upstream read error. Before the response head, `error_while_proxy`
//! retries the request on another node within the retry budget, or `fail_to_proxy` answers
//! in the caller's dialect; after it, the stream ends with an error chunk (an NDJSON
//! `{"error":…}` line, or an SSE `data: {"error":…}` event for OpenAI clients).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use ollama_mesh_consul::contract::RoutingState;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task;
use tokio::time::{Instant, Sleep};

use crate::backend_set::BackendSet;
use crate::schedule::candidates::candidates;
use crate::Fleet;

/// Why the router ended an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    /// The node sent no response head before the attempt's deadline.
    FirstByte {
        /// How long it had.
        waited: Duration,
    },
    /// A stream went silent for longer than `--stream-idle-timeout`.
    Stalled {
        /// The limit.
        gap: Duration,
    },
    /// Consul says the node is down: a check is critical.
    NodeGone {
        /// Why, as Consul says it.
        reason: String,
    },
    /// The node is draining and the request had not had its first byte: it moves to another
    /// node.
    NodeDraining,
    /// The node left the Consul catalog and the request had not had its first byte: it moves.
    /// Its streams go on: a sidecar deregisters only after its drain, and an agent restarted
    /// empty lists its instances again as their sidecars register anew.
    NodeLeft,
}

impl Cut {
    /// What the caller is told, naming `node`.
    pub fn message(&self, node: &str) -> String {
        match self {
            Self::FirstByte { waited } => format!(
                "instance {node} sent nothing for {} (the first-byte deadline, --first-byte-timeout plus the expected time there)",
                humantime::format_duration(round(*waited))
            ),
            Self::Stalled { gap } => format!(
                "instance {node} stopped sending mid-answer for {} (--stream-idle-timeout)",
                humantime::format_duration(*gap)
            ),
            Self::NodeGone { reason } => format!("instance {node} went down: {reason}"),
            Self::NodeDraining => format!("instance {node} is draining"),
            Self::NodeLeft => format!("instance {node} left the Consul catalog"),
        }
    }

    /// The status the caller gets when the attempt cannot be retried before its first byte.
    pub fn status(&self) -> u16 {
        match self {
            Self::FirstByte { .. } | Self::Stalled { .. } => 504,
            Self::NodeGone { .. } | Self::NodeLeft => 502,
            Self::NodeDraining => 503,
        }
    }

    /// Whether the node is to blame (a drain or a deregistration is an operator's or Consul's
    /// doing, not a failure of the node).
    pub fn is_node_failure(&self) -> bool {
        !matches!(self, Self::NodeDraining | Self::NodeLeft)
    }

    /// The metric and retry label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::FirstByte { .. } => "first_byte",
            Self::Stalled { .. } => "stalled",
            Self::NodeGone { .. } => "node_gone",
            Self::NodeDraining => "node_draining",
            Self::NodeLeft => "node_left",
        }
    }
}

/// Durations in messages to the millisecond.
fn round(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// One attempt of a request on one node, as its connection's reads see it.
#[derive(Debug)]
pub struct Attempt {
    node: Arc<str>,
    /// The model, to tell whether another node could take the request when this one drains.
    model: Option<String>,
    /// Nodes the request has been tried on, this one included.
    tried: Vec<Arc<str>>,
    /// Whether the request has a retry left, so a drain may move it.
    may_move: bool,
    started: Instant,
    first_byte_deadline: Instant,
    stream_idle: Duration,
    state: Mutex<AttemptState>,
}

#[derive(Debug)]
struct AttemptState {
    /// The response head has arrived: from now on the stream's gaps count.
    head: bool,
    last_read: Instant,
    cut: Option<Cut>,
    /// The task waiting in a read, woken when the attempt is cut.
    waker: Option<Waker>,
}

/// What an attempt is watched for.
#[derive(Debug, Clone)]
pub struct AttemptSpec {
    /// The node.
    pub node: Arc<str>,
    /// The request's model.
    pub model: Option<String>,
    /// Nodes tried, this one included.
    pub tried: Vec<Arc<str>>,
    /// Whether a retry is left.
    pub may_move: bool,
    /// How long the node has for the response head.
    pub first_byte: Duration,
    /// The longest gap in a stream.
    pub stream_idle: Duration,
}

impl Attempt {
    fn new(spec: AttemptSpec) -> Self {
        let now = Instant::now();
        Self {
            node: spec.node,
            model: spec.model,
            tried: spec.tried,
            may_move: spec.may_move,
            started: now,
            first_byte_deadline: now + spec.first_byte,
            stream_idle: spec.stream_idle,
            state: Mutex::new(AttemptState {
                head: false,
                last_read: now,
                cut: None,
                waker: None,
            }),
        }
    }

    /// Notes that the response head arrived.
    pub fn head_arrived(&self) {
        self.lock().head = true;
    }

    /// Why the attempt was cut, if it was.
    pub fn cut(&self) -> Option<Cut> {
        self.lock().cut.clone()
    }

    /// The node.
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// Ends the attempt for `cut` and wakes its read. The first reason stands: returns
    /// whether this call ended it, and the reason that stands.
    fn end(&self, cut: Cut) -> (bool, Cut) {
        let mut state = self.lock();
        if let Some(standing) = &state.cut {
            return (false, standing.clone());
        }
        state.cut = Some(cut.clone());
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        (true, cut)
    }

    /// When the current read must have returned.
    fn deadline(&self, state: &AttemptState) -> Instant {
        if state.head {
            state.last_read + self.stream_idle
        } else {
            self.first_byte_deadline
        }
    }

    /// What Consul's `set` means for the attempt, if it must end.
    fn verdict(&self, set: &BackendSet) -> Option<Cut> {
        let Some(backend) = set.get(&self.node) else {
            return self.move_if_waiting(set, Cut::NodeLeft);
        };
        match backend.state() {
            RoutingState::Out { reason } => Some(Cut::NodeGone {
                reason: reason.clone(),
            }),
            RoutingState::Draining { .. } => self.move_if_waiting(set, Cut::NodeDraining),
            RoutingState::Active { .. } => None,
        }
    }

    /// `cut` when the attempt is still waiting for its first byte and another node of `set`
    /// could take the request.
    fn move_if_waiting(&self, set: &BackendSet, cut: Cut) -> Option<Cut> {
        let movable = self.may_move
            && !self.lock().head
            && candidates(set, self.model.as_deref(), &self.tried).is_ok();
        movable.then_some(cut)
    }

    fn lock(&self) -> MutexGuard<'_, AttemptState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Every attempt in flight, by the task running it.
#[derive(Debug, Clone, Default)]
pub struct Watchdog {
    attempts: Arc<Mutex<HashMap<task::Id, Arc<Attempt>>>>,
    metrics: crate::metrics::Metrics,
}

impl Watchdog {
    /// A watchdog that judges attempts on every backend set `fleet` publishes, for as long as
    /// both live.
    pub fn following(fleet: &Arc<dyn Fleet>) -> Self {
        let watchdog = Self::default();
        if let Some(mut changes) = fleet.changes() {
            let fleet = Arc::downgrade(fleet);
            let attempts: Weak<_> = Arc::downgrade(&watchdog.attempts);
            let metrics = watchdog.metrics;
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    let (Some(fleet), Some(attempts)) = (fleet.upgrade(), attempts.upgrade())
                    else {
                        return;
                    };
                    Self { attempts, metrics }.judge(&fleet.backends());
                }
            });
        }
        watchdog
    }

    /// Watches `spec`'s attempt for the current task's request until the guard is dropped.
    pub fn watch(&self, spec: AttemptSpec) -> AttemptGuard {
        let attempt = Arc::new(Attempt::new(spec));
        if let Some(id) = task::try_id() {
            self.lock().insert(id, attempt.clone());
        }
        AttemptGuard {
            watchdog: self.clone(),
            attempt,
        }
    }

    /// Ends every attempt on a node that `set` says is down, and every attempt still waiting
    /// for its first byte from a draining or deregistered node when another node could take
    /// it.
    pub fn judge(&self, set: &BackendSet) {
        let attempts: Vec<Arc<Attempt>> = self.lock().values().cloned().collect();
        for attempt in attempts {
            if let Some(cut) = attempt.verdict(set) {
                let reason = cut.reason();
                if attempt.end(cut).0 {
                    self.metrics.attempt_cut(reason);
                    tracing::info!(instance = %attempt.node, reason, "Consul's verdict ends an attempt in flight");
                }
            }
        }
    }

    /// The connector for attempts on `node`.
    pub fn connector(&self, node: Arc<str>, connect_timeout: Duration) -> Arc<NodeConnector> {
        Arc::new(NodeConnector {
            watchdog: self.clone(),
            node,
            connect_timeout,
        })
    }

    /// The attempt the current task runs, if any.
    fn current(&self) -> Option<Arc<Attempt>> {
        let id = task::try_id()?;
        self.lock().get(&id).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<task::Id, Arc<Attempt>>> {
        self.attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An attempt being watched; dropping it stops the watch.
#[derive(Debug)]
pub struct AttemptGuard {
    watchdog: Watchdog,
    attempt: Arc<Attempt>,
}

impl AttemptGuard {
    /// The attempt.
    pub fn attempt(&self) -> &Attempt {
        &self.attempt
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        let mut attempts = self.watchdog.lock();
        attempts.retain(|_, attempt| !Arc::ptr_eq(attempt, &self.attempt));
    }
}

/// Connects to one node for Pingora and wraps the stream in a [`WatchedSocket`].
#[derive(Debug)]
pub struct NodeConnector {
    watchdog: Watchdog,
    node: Arc<str>,
    connect_timeout: Duration,
}

#[async_trait]
impl L4Connect for NodeConnector {
    async fn connect(&self, address: &SocketAddr) -> Result<Stream> {
        let SocketAddr::Inet(address) = address else {
            return Error::e_explain(ErrorType::ConnectError, "nodes are reached over TCP");
        };
        let tcp =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(error)) => {
                    let kind = match error.kind() {
                        io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                        _ => ErrorType::ConnectError,
                    };
                    return Err(Error::because(
                        kind,
                        format!("cannot connect to {address}"),
                        error,
                    ));
                }
                Err(_) => {
                    return Error::e_explain(
                        ErrorType::ConnectTimedout,
                        format!(
                            "no connection to {address} within {} (--connect-timeout)",
                            humantime::format_duration(self.connect_timeout)
                        ),
                    )
                }
            };
        tcp.set_nodelay(true)
            .map_err(|e| Error::because(ErrorType::ConnectError, "set TCP_NODELAY", e))?;
        let socket = WatchedSocket {
            tcp,
            node: self.node.clone(),
            watchdog: self.watchdog.clone(),
            timer: None,
        };
        Ok(Stream::from(VirtualSocketStream::new(Box::new(socket))))
    }
}

/// A connection to a node whose reads end when the attempt using it is cut.
#[derive(Debug)]
pub struct WatchedSocket {
    tcp: TcpStream,
    node: Arc<str>,
    watchdog: Watchdog,
    timer: Option<Pin<Box<Sleep>>>,
}

impl WatchedSocket {
    fn cut_error(cut: &Cut, node: &str) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, cut.message(node))
    }
}

impl VirtualSocket for WatchedSocket {
    fn set_socket_option(&self, option: VirtualSockOpt) -> io::Result<()> {
        match option {
            VirtualSockOpt::NoDelay => self.tcp.set_nodelay(true),
            // The router sets no keepalive on node connections.
            _ => Ok(()),
        }
    }
}

impl AsyncRead for WatchedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let attempt = this
            .watchdog
            .current()
            .filter(|attempt| attempt.node == this.node);
        let Some(attempt) = attempt else {
            this.timer = None;
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        };
        let deadline = {
            let mut state = attempt.lock();
            if let Some(cut) = &state.cut {
                return Poll::Ready(Err(Self::cut_error(cut, &this.node)));
            }
            // Registered before reading, so a cut that comes meanwhile wakes this task.
            state.waker = Some(cx.waker().clone());
            attempt.deadline(&state)
        };
        let filled = buf.filled().len();
        if let Poll::Ready(result) = Pin::new(&mut this.tcp).poll_read(cx, buf) {
            if buf.filled().len() > filled {
                attempt.lock().last_read = Instant::now();
            }
            return Poll::Ready(result);
        }
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let cut = if attempt.lock().head {
            Cut::Stalled {
                gap: attempt.stream_idle,
            }
        } else {
            Cut::FirstByte {
                waited: Instant::now().saturating_duration_since(attempt.started),
            }
        };
        let reason = cut.reason();
        let (ended_here, cut) = attempt.end(cut);
        if ended_here {
            this.watchdog.metrics.attempt_cut(reason);
        }
        Poll::Ready(Err(Self::cut_error(&cut, &this.node)))
    }
}

impl AsyncWrite for WatchedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}
