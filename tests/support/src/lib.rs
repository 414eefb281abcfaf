//! Test harnesses shared by ollama-mesh's integration tests.
//!
//! # Layout
//!
//! * [`consul_dev`]: a real `consul agent -dev` on free loopback ports, stopped on drop.
//! * [`fake_consul`]: a scripted HTTP server for what a real agent cannot do on demand
//!   (an index going backwards, 429s, stalls, truncated bodies).
//! * [`sim_node`]: an in-process Ollama simulator on a free loopback port.
//! * [`http`]: a minimal HTTP/1.1 GET used to probe servers without pulling in a client crate.
//!
//! [`workspace_binary`] finds the workspace's binaries for tests that run them.

pub mod consul_dev;
pub mod fake_consul;
pub mod http;
pub mod sim_node;

pub use consul_dev::ConsulDev;
pub use fake_consul::{FakeConsul, Reply, SeenRequest};
pub use sim_node::SimNode;

use std::net::{SocketAddr, TcpListener};

/// A loopback port that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr: SocketAddr| addr.port())
        .expect("cannot bind a loopback port")
}

/// A binary of the workspace, from the profile directory the running test was built into
/// (`target/<profile>`, honouring `CARGO_TARGET_DIR`), which `cargo test --workspace` (and so
/// `scripts/test`) fills with every binary before any test runs. Panics, saying how to build
/// it, when it is missing.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test binary>
    let binary = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .join(name);
    assert!(
        binary.is_file(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, or run \
         `cargo test --workspace`, which builds them)",
        binary.display()
    );
    binary
}

/// The workspace root, for scripts and binaries the tests use.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}
