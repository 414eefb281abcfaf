//! The `ollama-sim` binary: flags, the first stdout line, abrupt exit, and the fake nvidia-smi.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Sim {
    child: Child,
    addr: String,
}

impl Sim {
    fn start(args: &[&str]) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ollama-sim"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("OLLAMA_NUM_PARALLEL")
            .env_remove("OLLAMA_MAX_QUEUE")
            .env_remove("OLLAMA_MAX_LOADED_MODELS")
            .env_remove("OLLAMA_KEEP_ALIVE")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .to_owned();
        Sim { child, addr }
    }

    /// A raw HTTP/1.1 exchange with `Connection: close`.
    fn request(&self, method: &str, path: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        out
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prints_the_bound_address_and_serves_the_models_given() {
    let sim = Sim::start(&[
        "--models",
        "tiny,llama3.1:8b",
        "--time-scale",
        "0",
        "--node-name",
        "n1",
    ]);
    assert!(sim.request("GET", "/", "").ends_with("Ollama is running"));
    let tags = sim.request("GET", "/api/tags", "");
    assert!(
        tags.contains("\"tiny:latest\"") && tags.contains("\"llama3.1:8b\""),
        "{tags}"
    );
    assert!(sim
        .request("GET", "/sim/stats", "")
        .contains("\"node_name\":\"n1\""));
}

#[test]
fn exit_after_requests_kills_the_process_with_137() {
    let mut sim = Sim::start(&[
        "--models",
        "tiny",
        "--time-scale",
        "0",
        "--exit-after-requests",
        "1",
    ]);
    let _ = sim.request("POST", "/api/generate", r#"{"model":"tiny","prompt":"x"}"#);
    let status = sim.child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
}

#[test]
fn invalid_configuration_is_refused_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("ollama-sim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    std::fs::write(&path, "[scheduler]\nmax_queue = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ollama-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--config",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scheduler.max_queue"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fake_nvidia_smi_reports_the_simulated_gpus() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fake-nvidia-smi");
    let args = [
        "--query-gpu=name,memory.total,memory.used,utilization.gpu",
        "--format=csv,noheader,nounits",
    ];
    let sim = Sim::start(&["--models", "llama3.1:8b", "--time-scale", "0"]);
    sim.request("POST", "/api/generate", r#"{"model":"llama3.1:8b"}"#);
    let out = Command::new(script)
        .args(args)
        .env("OLLAMA_SIM_URL", format!("http://{}", sim.addr))
        .output()
        .unwrap();
    assert!(out.status.success());
    let report = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<&str> = report.trim_end().split(", ").collect();
    assert_eq!(fields[..2], ["NVIDIA GeForce RTX 4090", "24564"]);
    assert!(
        fields[2].parse::<u64>().unwrap() > 4_000,
        "the loaded 8b model uses VRAM: {report}"
    );
    let unreachable = Command::new(script)
        .env("OLLAMA_SIM_URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(9));
    let fixed = Command::new(script)
        .env_remove("OLLAMA_SIM_URL")
        .env("OLLAMA_SIM_NVIDIA_SMI", "X, 1, 0, 0")
        .output()
        .unwrap();
    assert_eq!(fixed.stdout, b"X, 1, 0, 0\n");
}
