//! Serving a simulator on a listener: one hyper HTTP/1.1 connection task per client.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::api::{self, HostCheck};
use crate::app::App;
use crate::config::SimConfig;
use crate::faults::{FaultSpec, Faults};

/// How [`Simulator::serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeExit {
    /// The shutdown future completed.
    Shutdown,
    /// A fault killed the node (`POST /sim/exit` or `exit_after_requests`); every connection
    /// was dropped mid-flight. The binary exits with status 137 on this.
    Killed,
}

/// A simulated Ollama node.
#[derive(Debug, Clone)]
pub struct Simulator {
    app: Arc<App>,
}

impl Simulator {
    /// A node with nothing loaded.
    pub fn new(config: SimConfig) -> Self {
        Self {
            app: Arc::new(App::new(config)),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &SimConfig {
        &self.app.config
    }

    /// Its live fault state, for tests that inject faults without HTTP.
    pub fn faults(&self) -> &Faults {
        &self.app.faults
    }

    /// Changes the faults `spec` names, like `POST /sim/faults`.
    pub fn set_faults(&self, spec: &FaultSpec) {
        self.app.faults.apply(spec);
    }

    /// The same JSON as `GET /sim/stats`.
    pub fn stats(&self) -> Value {
        api::stats_json(&self.app)
    }

    /// Serves HTTP on `listener` until `shutdown` completes or a fault kills the node. Either
    /// way open connections are dropped, as when a node goes away. Several listeners may serve
    /// the same simulator.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<ServeExit> {
        let host = HostCheck::for_listener(listener.local_addr()?).map(Arc::new);
        let killed = self.app.faults.killed();
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown, killed);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(ServeExit::Shutdown),
                () = &mut killed => return Ok(ServeExit::Killed),
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(serve_connection(Arc::clone(&self.app), host.clone(), stream));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
    }
}

async fn serve_connection(app: Arc<App>, host: Option<Arc<HostCheck>>, stream: TcpStream) {
    // Streams write one small chunk per token; Nagle would batch them.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let app = Arc::clone(&app);
        let host = host.clone();
        async move { Ok::<_, Infallible>(api::handle(app, host.as_deref(), req).await) }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
