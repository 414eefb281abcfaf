//! The fleet page (`GET /` on the ops listener) in a real browser: headless Chromium loads it
//! from a router in front of three simulated nodes, lets its script refresh from
//! `/v1/mesh/nodes`, and the test reads the resulting DOM and checks the screenshot.
//!
//! Chromium comes from `scripts/ensure-chromium` (Debian's `chromium` package), which
//! `scripts/test` runs; `CHROMIUM_BIN` names the binary, else `chromium` on PATH is used. A
//! missing browser fails the test: CI installs it, so a skip would only hide a broken setup.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{entry, post, settings, Dir, FixedFleet, Router};
use ollama_mesh_consul::contract::{ModelList, NodeMeta};
use ollama_mesh_consul::health::{CheckStatus, HealthCheck, ServiceEntry};
use ollama_mesh_router::backend::MeshPolicy;
use ollama_mesh_router::metrics::Metrics;
use ollama_mesh_router::{ops, BackendSet, Fleet};
use ollama_mesh_test_support::SimNode;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::process::Command;

/// The requested window, which the screenshot must match.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 800;

/// One simulated node and how the fleet describes it.
struct Node {
    id: &'static str,
    host: &'static str,
    gpu: &'static str,
    on_disk: &'static [&'static str],
    loaded: &'static [&'static str],
}

const NODES: [Node; 3] = [
    Node {
        id: "gpu-a-11434",
        host: "gpu-a.lab",
        gpu: "NVIDIA GeForce RTX 4090",
        on_disk: &["llama3.2:3b", "qwen2.5:7b"],
        loaded: &["llama3.2:3b"],
    },
    Node {
        id: "gpu-b-11434",
        host: "gpu-b.lab",
        gpu: "NVIDIA A100-SXM4-80GB",
        on_disk: &["mistral-nemo:12b"],
        loaded: &[],
    },
    Node {
        id: "gpu-c-11434",
        host: "gpu-c.lab",
        gpu: "AMD Radeon RX 7900 XTX",
        on_disk: &["nomic-embed-text"],
        loaded: &[],
    },
];

/// The registration of `node` served at `addr`, with `checks` deciding its state.
fn registered(node: &Node, addr: SocketAddr, checks: Vec<HealthCheck>) -> ServiceEntry {
    let mut entry = entry(node.id, addr, &[], &[], 4);
    entry.node.node = node.host.into();
    entry.service.meta = NodeMeta {
        gpu_name: Some(node.gpu.into()),
        gpu_count: 1,
        gpu_vram_mib: 24_576,
        parallel_slots: 4,
        models_on_disk: ModelList::new(node.on_disk.iter().copied()),
        models_loaded: ModelList::new(node.loaded.iter().copied()),
        ollama_version: Some("0.17.4".into()),
        sidecar_version: "test".into(),
        ..NodeMeta::default()
    }
    .to_consul_meta();
    entry.checks.extend(checks);
    entry
}

/// Three nodes: the first active, the second in maintenance (draining), the third with a
/// failing heartbeat (out).
fn fleet(addrs: [SocketAddr; 3]) -> Arc<dyn Fleet> {
    let maintenance = HealthCheck {
        check_id: format!("_service_maintenance:{}", NODES[1].id),
        name: "Service Maintenance Mode".into(),
        notes: "replacing fan".into(),
        status: CheckStatus::Critical,
        ..HealthCheck::default()
    };
    let heartbeat = HealthCheck {
        check_id: format!("{}:heartbeat", NODES[2].id),
        name: "sidecar heartbeat".into(),
        output: "TTL expired".into(),
        status: CheckStatus::Critical,
        ..HealthCheck::default()
    };
    let entries = vec![
        registered(&NODES[0], addrs[0], Vec::new()),
        registered(&NODES[1], addrs[1], vec![maintenance]),
        registered(&NODES[2], addrs[2], vec![heartbeat]),
    ];
    let set = BackendSet::build(&entries, &[], &BackendSet::default(), MeshPolicy::default());
    Arc::new(FixedFleet(Arc::new(set)))
}

/// The ops listener over `fleet` on a free loopback port, for the rest of the test.
async fn serve_ops(fleet: Arc<dyn Fleet>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ops::serve(
        listener,
        fleet.clone(),
        ollama_mesh_router::Scheduler::new(fleet, Default::default()),
        Metrics::new(),
        None,
        std::future::pending(),
    ));
    addr
}

/// The browser: `CHROMIUM_BIN`, else `chromium` on PATH.
fn chromium() -> PathBuf {
    let found = match std::env::var_os("CHROMIUM_BIN") {
        Some(bin) => Some(PathBuf::from(bin)).filter(|bin| bin.is_file()),
        None => std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("chromium"))
                .find(|bin| bin.is_file())
        }),
    };
    found.unwrap_or_else(|| {
        panic!(
            "Chromium not found (CHROMIUM_BIN or `chromium` on PATH): run scripts/ensure-chromium, \
             which installs Debian's chromium package (scripts/test runs it, as CI does)"
        )
    })
}

/// Runs headless Chromium on `url` with `output` (`--dump-dom` or `--screenshot=…`), in a
/// fresh profile, letting the page's timers run for 3 s of virtual time (the script refreshes
/// after 2 s). Returns its stdout.
async fn browse(profile: &Path, url: &str, output: &str) -> String {
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--window-size={WIDTH},{HEIGHT}"),
            "--virtual-time-budget=3000",
            output,
            url,
        ])
        .kill_on_drop(true);
    let run = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("chromium finishes within 2 minutes")
        .expect("chromium starts");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "chromium {output} failed ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}

/// The `data-refreshes` count on `<body>`: how many times the script re-rendered from
/// `/v1/mesh/nodes`.
fn refreshes(dom: &str) -> u32 {
    let start = dom.find("data-refreshes=\"").expect("the page's body") + 16;
    let len = dom[start..].find('"').unwrap();
    dom[start..start + len].parse().unwrap()
}

#[tokio::test]
async fn chromium_shows_the_fleet_live() {
    let mut sims = Vec::new();
    for node in &NODES {
        sims.push(SimNode::with_models(node.on_disk).await);
    }
    let addrs = [sims[0].addr(), sims[1].addr(), sims[2].addr()];
    let fleet = fleet(addrs);
    let router = Router::with_fleet(fleet.clone(), settings()).await;
    // A request through the router, so the page shows a fleet that has served traffic.
    let answer = post(
        &router.url("/api/generate"),
        json!({"model": "llama3.2:3b", "prompt": "hi", "stream": false}),
    )
    .await;
    assert_eq!(answer.status, 200);
    let ops = serve_ops(fleet).await;
    let url = format!("http://{ops}/");
    let dir = Dir::new("fleet-page");

    let dom = browse(&dir.0.join("profile-dom"), &url, "--dump-dom").await;
    assert!(
        refreshes(&dom) >= 1,
        "the script refreshed from /v1/mesh/nodes:\n{dom}"
    );
    assert!(dom.contains("live · updated"), "{dom}");
    for node in &NODES {
        for text in [node.host, node.id, node.gpu]
            .iter()
            .chain(node.on_disk)
            .chain(node.loaded)
        {
            assert!(dom.contains(text), "{text} missing from the page:\n{dom}");
        }
    }
    for state in [
        r#"<span class="badge active">active</span>"#,
        r#"<span class="badge draining">draining</span>"#,
        r#"<span class="badge out">out</span>"#,
        "replacing fan",
        "TTL expired",
        "3 instances (1 active, 1 draining, 1 out)",
    ] {
        assert!(dom.contains(state), "{state} missing from the page:\n{dom}");
    }

    let screenshot = dir.0.join("page.png");
    browse(
        &dir.0.join("profile-png"),
        &url,
        &format!("--screenshot={}", screenshot.display()),
    )
    .await;
    let (width, height, colours) = picture(&screenshot);
    assert_eq!(
        (width, height),
        (WIDTH, HEIGHT),
        "the requested window size"
    );
    assert!(
        colours >= 16,
        "a rendered table has text and coloured badges, the screenshot has {colours} colours"
    );
    router.stop().await;
}

/// The size of the PNG at `path` and how many distinct colours it has.
fn picture(path: &Path) -> (u32, u32, usize) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).expect("PNG pixels");
    let channels = frame.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = pixels[..frame.buffer_size()]
        .chunks_exact(channels)
        .collect();
    (frame.width, frame.height, colours.len())
}
