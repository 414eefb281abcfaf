//! The LiteLLM proxy (`litellm[proxy]` from PyPI) with its `least-busy` routing strategy: every
//! node is one deployment of a single model group named like the model, so clients send the same
//! model name to LiteLLM as to every other peer. OpenAI routes only; no native `/api/*`.

use std::path::Path;
use std::time::Duration;

use super::{Launch, PeerError, PeerSetup, READ_TIMEOUT_SECS};

/// The master key LiteLLM insists on (it refuses to start without one); clients send it as a
/// bearer token. A fixed value is fine: the proxy listens on loopback only.
const MASTER_KEY: &str = "sk-ollama-mesh-bench";

pub(super) fn launch(setup: &PeerSetup, dir: &Path, port: u16) -> Result<Launch, PeerError> {
    let program = super::python_binary("litellm")?;
    let conf = dir.join("litellm.yaml");
    // Asking the venv's Python is instant; `litellm --version` imports the whole proxy first.
    let python = program.with_file_name("python");
    Ok(Launch {
        args: vec![
            "--config".into(),
            conf.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--num_workers".into(),
            setup.workers.to_string(),
        ],
        version_command: vec![
            python.display().to_string(),
            "-c".into(),
            "import importlib.metadata as m; print('litellm', m.version('litellm'))".into(),
        ],
        program,
        env: vec![
            ("LITELLM_MASTER_KEY", MASTER_KEY.to_owned()),
            // Errors only: its default logs every request.
            ("LITELLM_LOG", "ERROR".to_owned()),
        ],
        files: vec![(conf, config(setup))],
        port,
        // Authenticated, and 200 only once the config (the model group) is loaded.
        ready_path: "/v1/models",
        bearer: Some(MASTER_KEY.to_owned()),
        // About 7 s on an idle machine; pinned to one busy core it can take several times that.
        ready_within: Duration::from_secs(90),
    })
}

/// Two model groups over every node: `setup.model`, and `*` (wildcard routing), which sends any
/// other model name to the nodes as `ollama_chat/<name>`, so multi-model scenarios work too.
/// `ollama_chat/` is LiteLLM's provider for Ollama's `/api/chat`; plain `ollama/` goes through
/// `/api/generate` and flattens the messages into one prompt.
fn config(setup: &PeerSetup) -> String {
    let mut deployments = String::new();
    for (group, model) in [(setup.model.as_str(), setup.model.as_str()), ("\"*\"", "*")] {
        for url in super::backend_urls(setup) {
            deployments.push_str(&format!(
                "  - model_name: {group}\n    litellm_params:\n      model: ollama_chat/{model}\n      api_base: {url}\n"
            ));
        }
    }
    format!(
        "model_list:\n{deployments}\
router_settings:\n  routing_strategy: least-busy\n\
litellm_settings:\n  request_timeout: {READ_TIMEOUT_SECS}\n\
general_settings:\n  disable_spend_logs: true\n"
    )
}
