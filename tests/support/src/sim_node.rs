//! A simulated Ollama node served in-process on a loopback port, stopped on drop.

use std::net::SocketAddr;

use ollama_mesh_daemon::AbortOnDrop;
use ollama_mesh_sim::{NodeSpec, Simulator};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running simulator.
pub struct SimNode {
    addr: SocketAddr,
    sim: Simulator,
    stop: Option<oneshot::Sender<()>>,
    task: AbortOnDrop<()>,
}

impl SimNode {
    /// Serves `spec` on a free loopback port.
    pub async fn start(spec: NodeSpec) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("loopback address"), spec).await
    }

    /// A node with `models` on disk, answering instantly (time scale 0).
    pub async fn with_models(models: &[&str]) -> Self {
        Self::start(
            NodeSpec::default()
                .models(models.iter().copied())
                .time_scale(0.0),
        )
        .await
    }

    /// Serves `spec` on `addr` (e.g. the address of a node stopped a moment ago).
    pub async fn start_on(addr: SocketAddr, spec: NodeSpec) -> Self {
        let sim = Simulator::new(spec.build().expect("valid simulator spec"));
        let listener = TcpListener::bind(addr).await.expect("bind simulator");
        let addr = listener.local_addr().expect("simulator address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = sim.clone();
        let task = AbortOnDrop::spawn(async move {
            let _ = server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            sim,
            stop: Some(stop),
            task,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The simulator, for its ground-truth statistics and fault injection.
    pub fn sim(&self) -> &Simulator {
        &self.sim
    }

    /// Stops serving (dropping every connection) and returns the freed address.
    pub async fn stop(mut self) -> SocketAddr {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.addr
    }
}
