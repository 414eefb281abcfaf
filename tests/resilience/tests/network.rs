//! Network faults between the router and a node, made with a network namespace and a veth
//! pair the test creates for itself (`ip netns`, `tc netem`), on private addresses of its own
//! (10.213.N.0/30), removed when it ends. The node in the namespace and a healthy one on
//! loopback sit behind a router given both as `--backend`s (its own polls judge them).
//! Skipped, saying so, where the kernel or the user may not make namespaces.
//!
//! * delay (100 ms each way, `tc netem`): slower, nothing fails;
//! * loss (20 % of packets, `tc netem`): TCP retransmits, nothing fails;
//! * partition (the link cut): requests waiting for their first byte there move to the healthy
//!   node at the first-byte deadline or when the router's poll marks the node out; nothing
//!   non-streamed fails.
//!
//! Delay and loss are skipped, saying so, on kernels without `sch_netem`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use ollama_mesh_resilience::{
    assert_goals, report, until, Load, LoadSpec, RouterProcess, Sim, PATIENCE,
};
use ollama_mesh_test_support::free_port;

/// The namespace, its veth pair and addresses; removed on drop.
struct Sandbox {
    namespace: String,
    host_link: String,
    node_ip: String,
}

impl Sandbox {
    /// Makes the namespace, or says why it cannot.
    fn make() -> Result<Self, String> {
        let n = std::process::id() % 250;
        let sandbox = Self {
            namespace: format!("om-resilience-{n}"),
            host_link: format!("omr{n}h"),
            node_ip: format!("10.213.{n}.2"),
        };
        let host_ip = sandbox.host_cidr();
        let node_cidr = format!("{}/30", sandbox.node_ip);
        let peer = sandbox.node_link();
        let ns = sandbox.namespace.as_str();
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", ns],
            vec![
                "link",
                "add",
                &sandbox.host_link,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
            vec!["link", "set", &peer, "netns", ns],
            vec!["addr", "add", &host_ip, "dev", &sandbox.host_link],
            vec!["link", "set", &sandbox.host_link, "up"],
            vec!["-n", ns, "addr", "add", &node_cidr, "dev", &peer],
            vec!["-n", ns, "link", "set", &peer, "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let output = Command::new("ip")
                .args(&step)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
        Ok(sandbox)
    }

    /// Puts netem `spec` (`delay 100ms`, `loss 20%`) on both ends of the pair, or says why
    /// it cannot (a kernel without `sch_netem`).
    fn netem(&self, spec: &[&str]) -> Result<(), String> {
        for (namespace, link) in [
            (None, self.host_link.clone()),
            (Some(self.namespace.as_str()), self.node_link()),
        ] {
            let output = tc(namespace)
                .args(["qdisc", "replace", "dev", &link, "root", "netem"])
                .args(spec)
                .output()
                .map_err(|e| format!("cannot run tc: {e}"))?;
            if !output.status.success() {
                return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
            }
        }
        Ok(())
    }

    /// Removes any netem qdisc.
    fn clear(&self) {
        for (namespace, link) in [
            (None, self.host_link.clone()),
            (Some(self.namespace.as_str()), self.node_link()),
        ] {
            let _ = tc(namespace)
                .args(["qdisc", "del", "dev", &link, "root"])
                .output();
        }
    }

    /// Cuts the link (a partition: nothing passes either way), or restores it.
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        let status = Command::new("ip")
            .args(["link", "set", &self.host_link, state])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip link set {} {state}", self.host_link);
        if up {
            let restored = Command::new("ip")
                .args(["addr", "replace", &self.host_cidr(), "dev", &self.host_link])
                .status()
                .expect("run ip");
            assert!(restored.success());
        }
    }

    fn node_link(&self) -> String {
        format!("omr{}n", std::process::id() % 250)
    }

    fn host_cidr(&self) -> String {
        format!("10.213.{}.1/30", std::process::id() % 250)
    }
}

/// `tc`, inside `namespace` when given.
fn tc(namespace: Option<&str>) -> Command {
    match namespace {
        Some(namespace) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", namespace, "tc"]);
            command
        }
        None => Command::new("tc"),
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_loss_and_partition_between_router_and_node_cost_no_request_that_could_move() {
    let sandbox = match Sandbox::make() {
        Ok(sandbox) => sandbox,
        Err(why) => {
            println!("network faults skipped: this machine does not let the test make a network namespace ({why})");
            return;
        }
    };
    let node_addr: SocketAddr = format!("{}:{}", sandbox.node_ip, free_port())
        .parse()
        .unwrap();
    let far = Sim::start_in(&sandbox.namespace, "far", 0.05, node_addr).await;
    let near = Sim::start("near", 0.05).await;
    let router = RouterProcess::start(
        None,
        &[
            "--backend",
            &far.url(),
            "--backend",
            &near.url(),
            "--backend-poll-interval",
            "500ms",
            "--slots",
            "4",
        ],
        2,
    )
    .await;
    for (fault, spec) in [
        ("delay 100 ms", &["delay", "100ms"][..]),
        ("loss 20 %", &["loss", "20%"][..]),
        ("partition", &[][..]),
    ] {
        // The fault comes with requests in flight on the node.
        let load = Load::start(LoadSpec {
            concurrency: 6,
            stream_every: 3,
            tokens: 16,
            limit: 80,
            routers: vec![router.addr],
        });
        load.wait_for(10).await;
        if spec.is_empty() {
            sandbox.link(false);
        } else if let Err(why) = sandbox.netem(spec) {
            println!("network {fault} skipped: tc netem is not available here ({why})");
            drop(load.stop().await);
            continue;
        }
        let started = Instant::now();
        load.wait_for(80).await;
        let tally = load.stop().await;
        report(&format!("network {fault}"), &tally, Some(started.elapsed()));
        // A stream under way when the partition came cannot be saved.
        assert_goals(&tally, spec.is_empty(), &router);
        sandbox.clear();
        sandbox.link(true);
        let healed = until(PATIENCE, || async { router.routable().await == 2 }).await;
        assert!(healed, "the node did not come back after {fault}");
    }
}
