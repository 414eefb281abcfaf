//! The TCP servers the sidecar runs beside its main loop (the mesh listener, `/metrics`): bound
//! at start so a taken port fails the sidecar at once with the flag's name, and stopped with
//! every connection they opened when dropped, so nothing outlives [`crate::Sidecar::run`].

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use ollama_mesh_daemon::AbortOnDrop;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::SidecarError;

/// Pause after a failed accept (out of file descriptors, usually) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr`, the value of flag `--{flag}`.
pub(crate) async fn bind(
    flag: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, SidecarError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SidecarError::Listen { flag, addr, source })
}

/// A running server. Dropping it stops accepting and ends its open connections.
pub(crate) struct Server {
    _task: AbortOnDrop<()>,
}

impl Server {
    /// Accepts on `listener` and runs `handle` for each connection in a task of its own.
    /// `name` tells the servers apart in logs.
    pub(crate) fn spawn<F, Fut>(listener: TcpListener, name: &'static str, handle: F) -> Self
    where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            _task: AbortOnDrop::spawn(accept_loop(listener, name, handle)),
        }
    }
}

async fn accept_loop<F, Fut>(listener: TcpListener, name: &'static str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Owned here so that aborting this task aborts every connection with it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(handle(stream, peer));
                }
                Err(error) => {
                    tracing::warn!(server = name, %error, "cannot accept a connection; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reaps finished connections so the set does not grow.
            Some(finished) = connections.join_next() => {
                if let Err(error) = finished {
                    tracing::error!(server = name, %error, "a connection task failed");
                }
            }
        }
    }
}
