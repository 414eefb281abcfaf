//! The Nomad job specs in `nomad/` parse as HCL2 and hold the invariants a safe deployment
//! depends on: the GPU job drains and deregisters a node before anything kills it, and the
//! router job rolls over without dropping requests. Nomad itself cannot be built here, so the
//! specs are evaluated with `hcl-rs` from their variables' defaults (plus values for the
//! required ones), which is what `nomad job plan` would do with the same `-var`s; operators
//! validate against their own cluster with `nomad job validate` / `nomad job plan`
//! (docs/operations.md).

use std::collections::BTreeMap;
use std::time::Duration;

use hcl::eval::{Context, Evaluate};
use hcl::{Block, Body, Expression, Value};
use ollama_mesh_deploy_tests::{flag_variables, parse_env_file, parse_time_span, workspace_root};

const GPU_JOB: &str = "nomad/ollama-gpu.nomad.hcl";
const ROUTER_JOB: &str = "nomad/ollama-mesh-router.nomad.hcl";

/// A job file with the values of its variables.
struct Job {
    path: String,
    body: Body,
    vars: BTreeMap<String, Value>,
}

impl Job {
    /// Parses `path` and takes each variable's default; `required` gives values to the
    /// variables without one (a required variable left out is an error, as in Nomad).
    fn load(path: &str, required: &[(&str, Value)]) -> Self {
        let text = std::fs::read_to_string(workspace_root().join(path))
            .unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        let body = hcl::parse(&text).unwrap_or_else(|e| panic!("{path} is not valid HCL: {e}"));
        let mut vars = BTreeMap::new();
        for variable in body.blocks().filter(|b| b.identifier() == "variable") {
            let name = label(variable);
            let value = match attribute(variable.body(), "default") {
                Some(expr) => expr
                    .evaluate(&Context::new())
                    .unwrap_or_else(|e| panic!("{path}: default of {name}: {e}")),
                None => required
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("{path}: variable {name} has no default"))
                    .1
                    .clone(),
            };
            assert!(
                attribute(variable.body(), "description").is_some(),
                "{path}: variable {name} needs a description (`nomad job plan` shows it)"
            );
            vars.insert(name.to_owned(), value);
        }
        Self {
            path: path.to_owned(),
            body,
            vars,
        }
    }

    /// The same job with `name` set to `value`, as `-var name=value` would.
    fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        assert!(
            self.vars.contains_key(name),
            "{}: no variable {name}",
            self.path
        );
        self.vars.insert(name.to_owned(), value.into());
        self
    }

    fn job(&self) -> &Block {
        let jobs: Vec<_> = self
            .body
            .blocks()
            .filter(|b| b.identifier() == "job")
            .collect();
        assert_eq!(jobs.len(), 1, "{}: one job per file", self.path);
        jobs[0]
    }

    /// Evaluates `expr` with `var.*` set; runtime interpolations (`${NOMAD_…}`, `${node.…}`)
    /// cannot be evaluated here, so callers only evaluate attributes that use variables.
    fn eval(&self, expr: &Expression) -> Value {
        let mut context = Context::new();
        context.declare_var(
            "var",
            Value::Object(self.vars.clone().into_iter().collect()),
        );
        expr.evaluate(&context)
            .unwrap_or_else(|e| panic!("{}: cannot evaluate {expr}: {e}", self.path))
    }

    /// The evaluated attribute `key` of `block`.
    fn value(&self, block: &Block, key: &str) -> Value {
        let expr = attribute(block.body(), key).unwrap_or_else(|| {
            panic!(
                "{}: {} {:?} has no {key}",
                self.path,
                block.identifier(),
                block.labels()
            )
        });
        self.eval(expr)
    }

    fn string(&self, block: &Block, key: &str) -> String {
        match self.value(block, key) {
            Value::String(s) => s,
            other => panic!("{}: {key} is {other}, not a string", self.path),
        }
    }

    fn duration(&self, block: &Block, key: &str) -> Duration {
        let text = self.string(block, key);
        parse_time_span(&text).unwrap_or_else(|e| panic!("{}: {key} = {text:?}: {e}", self.path))
    }

    /// The environment a task gets from its `env` block (only the attributes that evaluate
    /// here) and from its `template` blocks with `env = true`.
    fn task_env(&self, task: &Block) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for block in blocks(task.body(), "env") {
            for attr in block.body().attributes() {
                let mut context = Context::new();
                context.declare_var(
                    "var",
                    Value::Object(self.vars.clone().into_iter().collect()),
                );
                // Runtime interpolations stay Nomad's; a variable-only value must evaluate.
                if let Ok(value) = attr.expr().evaluate(&context) {
                    env.insert(attr.key().to_owned(), scalar(&value));
                }
            }
        }
        for template in blocks(task.body(), "template") {
            if self.value(template, "env") != Value::Bool(true) {
                continue;
            }
            let data = self.string(template, "data");
            let variables = parse_env_file(&data)
                .unwrap_or_else(|e| panic!("{}: env template: {e}\n{data}", self.path));
            for (key, value) in variables {
                assert!(
                    !value.is_empty(),
                    "{}: {key} is empty in the env template; ollama-mesh rejects empty values",
                    self.path
                );
                env.insert(key, value);
            }
        }
        env
    }
}

fn label(block: &Block) -> &str {
    block
        .labels()
        .first()
        .map(|l| l.as_str())
        .unwrap_or_else(|| panic!("{} block without a label", block.identifier()))
}

fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

fn blocks<'a>(body: &'a Body, identifier: &'a str) -> impl Iterator<Item = &'a Block> {
    body.blocks().filter(move |b| b.identifier() == identifier)
}

fn only<'a>(body: &'a Body, identifier: &str, what: &str) -> &'a Block {
    let found: Vec<_> = body
        .blocks()
        .filter(|b| b.identifier() == identifier)
        .collect();
    assert_eq!(found.len(), 1, "expected one {identifier} block in {what}");
    found[0]
}

/// A value as Nomad puts it in an environment variable.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => panic!("{other} is not an environment value"),
    }
}

fn tasks(group: &Block) -> Vec<&Block> {
    blocks(group.body(), "task").collect()
}

/// The task running `binary` (by its docker `command`).
fn task_running<'a>(job: &Job, group: &'a Block, binary: &str) -> &'a Block {
    tasks(group)
        .into_iter()
        .find(|task| {
            blocks(task.body(), "config").any(|config| {
                attribute(config.body(), "command").is_some_and(|_| {
                    job.string(config, "command")
                        .ends_with(&format!("/{binary}"))
                })
            })
        })
        .unwrap_or_else(|| panic!("{}: no task runs {binary}", job.path))
}

fn gpu_job() -> Job {
    Job::load(
        GPU_JOB,
        &[("sidecar_image", "registry.example/ollama-mesh:test".into())],
    )
}

fn router_job() -> Job {
    Job::load(
        ROUTER_JOB,
        &[("router_image", "registry.example/ollama-mesh:test".into())],
    )
}

#[test]
fn gpu_job_is_a_system_job_on_nvidia_nodes() {
    let job = gpu_job();
    assert_eq!(job.string(job.job(), "type"), "system");
    // Updates go one node at a time: every replaced node drains first.
    let update = only(job.job().body(), "update", "the GPU job");
    assert_eq!(job.value(update, "max_parallel"), Value::from(1));
    let group = only(job.job().body(), "group", "the GPU job");
    let ollama = task_running_image(&job, group, "ollama_image");
    let resources = only(ollama.body(), "resources", "the Ollama task");
    let device = only(resources.body(), "device", "Ollama's resources");
    assert!(
        label(device).starts_with("nvidia/gpu") || label(device) == "nvidia",
        "Ollama must ask for NVIDIA GPUs, not {:?}",
        label(device)
    );
    let count = job.value(device, "count");
    assert!(
        matches!(&count, Value::Number(n) if n.as_u64().is_some_and(|n| n >= 1)),
        "device count {count}"
    );
    // The sidecar registers the node itself: a Nomad service block would add a second,
    // `_nomad-task-` registration that is not in the fleet's contract.
    assert_eq!(blocks(group.body(), "service").count(), 0);
    for task in tasks(group) {
        assert_eq!(blocks(task.body(), "service").count(), 0);
    }
}

/// The Ollama task: the one whose image is the `ollama_image` variable.
fn task_running_image<'a>(job: &Job, group: &'a Block, variable: &str) -> &'a Block {
    let image = scalar(&job.vars[variable]);
    tasks(group)
        .into_iter()
        .find(|task| {
            blocks(task.body(), "config").any(|config| job.string(config, "image") == image)
        })
        .unwrap_or_else(|| panic!("{}: no task runs var.{variable}", job.path))
}

#[test]
fn the_sidecar_leads_and_outlives_its_drain() {
    // The defaults, and drain periods from short to very long: kill_timeout follows the drain.
    for drain in [None, Some(1), Some(30), Some(600), Some(3600)] {
        let mut job = gpu_job();
        if let Some(seconds) = drain {
            job = job.with("drain_timeout_seconds", seconds);
        }
        let group = only(job.job().body(), "group", "the GPU job");
        let sidecar = task_running(&job, group, "ollama-mesh-sidecar");
        let leaders: Vec<_> = tasks(group)
            .into_iter()
            .filter(|task| {
                attribute(task.body(), "leader")
                    .is_some_and(|_| job.value(task, "leader") == Value::Bool(true))
            })
            .collect();
        assert_eq!(leaders.len(), 1, "exactly one leader task");
        assert_eq!(
            label(leaders[0]),
            label(sidecar),
            "the sidecar must be the leader, so Nomad stops it (and it drains) first"
        );

        let env = job.task_env(sidecar);
        let drain_timeout = parse_time_span(
            env.get("OLLAMA_MESH_DRAIN_TIMEOUT")
                .expect("the sidecar's drain timeout is set explicitly"),
        )
        .unwrap();
        if let Some(seconds) = drain {
            assert_eq!(drain_timeout, Duration::from_secs(seconds));
        }
        let kill_timeout = job.duration(sidecar, "kill_timeout");
        assert!(
            kill_timeout > drain_timeout,
            "sidecar kill_timeout {kill_timeout:?} must exceed its drain timeout {drain_timeout:?}"
        );
        assert!(
            ["SIGTERM", "SIGINT"].contains(&job.string(sidecar, "kill_signal").as_str()),
            "the sidecar drains on SIGTERM or SIGINT"
        );
        // Ollama is stopped after the sidecar; it must not be killed mid-generation either.
        let ollama = task_running_image(&job, group, "ollama_image");
        assert!(job.duration(ollama, "kill_timeout") > drain_timeout);
    }
}

#[test]
fn mesh_mode_puts_ollama_on_loopback_behind_the_sidecar() {
    for mesh in [false, true] {
        let job = gpu_job().with("mesh", mesh);
        let group = only(job.job().body(), "group", "the GPU job");
        let ollama_env = job.task_env(task_running_image(&job, group, "ollama_image"));
        let sidecar_env = job.task_env(task_running(&job, group, "ollama-mesh-sidecar"));
        let host = &ollama_env["OLLAMA_HOST"];
        assert_eq!(
            host.starts_with("127.0.0.1:"),
            mesh,
            "OLLAMA_HOST={host} with mesh={mesh}"
        );
        assert_eq!(sidecar_env["OLLAMA_MESH_MESH"], mesh.to_string());
        let port = host.rsplit(':').next().unwrap();
        assert_eq!(
            sidecar_env["OLLAMA_MESH_OLLAMA_URL"],
            format!("http://127.0.0.1:{port}"),
            "the sidecar reads Ollama on loopback (mesh mode requires it)"
        );
        assert_eq!(
            sidecar_env["OLLAMA_MESH_PARALLEL_SLOTS"], ollama_env["OLLAMA_NUM_PARALLEL"],
            "the sidecar must announce Ollama's real parallelism"
        );
    }
}

#[test]
fn optional_sidecar_settings_are_written_only_when_set() {
    let job = gpu_job();
    let group = only(job.job().body(), "group", "the GPU job");
    let env = job.task_env(task_running(&job, group, "ollama-mesh-sidecar"));
    assert!(!env.contains_key("OLLAMA_MESH_PREEMPTION_NOTICE_URL"));

    let url = "http://169.254.169.254/latest/meta-data/spot/instance-action";
    let job = gpu_job()
        .with("preemption_notice_url", url)
        .with("preemptible", true);
    let group = only(job.job().body(), "group", "the GPU job");
    let env = job.task_env(task_running(&job, group, "ollama-mesh-sidecar"));
    assert_eq!(env["OLLAMA_MESH_PREEMPTION_NOTICE_URL"], url);
    assert_eq!(env["OLLAMA_MESH_PREEMPTIBLE"], "true");
}

#[test]
fn router_job_rolls_over_without_dropping_requests() {
    for grace in [None, Some(5), Some(600)] {
        let mut job = router_job();
        if let Some(seconds) = grace {
            job = job.with("grace_period_seconds", seconds);
        }
        let spec = job.job();
        assert_eq!(job.string(spec, "type"), "service");
        let group = only(spec.body(), "group", "the router job");

        let count = job.value(group, "count");
        assert!(
            matches!(&count, Value::Number(n) if n.as_u64().is_some_and(|n| n >= 2)),
            "count {count}: at least two routers"
        );
        assert!(
            blocks(group.body(), "constraint")
                .any(|c| job.string(c, "operator") == "distinct_hosts"
                    && job.value(c, "value") == Value::from("true")),
            "routers must run on distinct hosts"
        );

        // Rolling updates gated on the Consul check, rolled back when a version never turns healthy.
        let update = blocks(group.body(), "update")
            .next()
            .unwrap_or_else(|| only(spec.body(), "update", "the router job"));
        assert_eq!(job.value(update, "auto_revert"), Value::Bool(true));
        assert_eq!(job.string(update, "health_check"), "checks");
        assert_eq!(job.value(update, "max_parallel"), Value::from(1));

        // The Consul service is checked on the ops listener's health endpoint.
        let network = only(group.body(), "network", "the router group");
        let ports: Vec<_> = blocks(network.body(), "port").map(label).collect();
        let service = only(group.body(), "service", "the router group");
        assert_eq!(job.string(service, "provider"), "consul");
        assert_eq!(job.string(service, "name"), "ollama-mesh-router");
        let check = only(service.body(), "check", "the router service");
        assert_eq!(job.string(check, "type"), "http");
        assert!(["/healthz", "/readyz"].contains(&job.string(check, "path").as_str()));
        let ops_port = job.string(check, "port");
        assert!(
            ports.contains(&ops_port.as_str()),
            "check port {ops_port} is not in {ports:?}"
        );

        let task = task_running(&job, group, "ollama-mesh-router");
        let env: BTreeMap<_, _> = blocks(task.body(), "env")
            .flat_map(|env| env.body().attributes())
            .map(|a| (a.key().to_owned(), a.expr().to_string()))
            .collect();
        assert!(
            env["OLLAMA_MESH_OPS_LISTEN"].contains(&format!("NOMAD_PORT_{ops_port}")),
            "the ops listener must listen on the checked port, not {}",
            env["OLLAMA_MESH_OPS_LISTEN"]
        );
        let evaluated = job.task_env(task);
        let grace_period = parse_time_span(&evaluated["OLLAMA_MESH_GRACE_PERIOD"]).unwrap();
        if let Some(seconds) = grace {
            assert_eq!(grace_period, Duration::from_secs(seconds));
        }
        assert_eq!(
            evaluated["OLLAMA_MESH_REGISTER"], "false",
            "Nomad registers the service; the router registering too would list it twice"
        );
        let kill_timeout = job.duration(task, "kill_timeout");
        assert!(
            kill_timeout > grace_period,
            "kill_timeout {kill_timeout:?} must exceed the grace period {grace_period:?}"
        );
        assert_eq!(job.string(task, "kill_signal"), "SIGTERM");
        let shutdown_delay = job.duration(group, "shutdown_delay");
        assert!(
            shutdown_delay >= Duration::from_secs(1),
            "shutdown_delay {shutdown_delay:?}: the router leaves Consul before it stops accepting"
        );
    }
}

#[test]
fn job_settings_name_real_flags() {
    let gpu = gpu_job();
    let router = router_job();
    let gpu_group = only(gpu.job().body(), "group", "the GPU job");
    let router_group = only(router.job().body(), "group", "the router job");
    let sidecar_env = gpu.task_env(task_running(&gpu, gpu_group, "ollama-mesh-sidecar"));
    let router_env: Vec<String> = blocks(
        task_running(&router, router_group, "ollama-mesh-router").body(),
        "env",
    )
    .flat_map(|env| env.body().attributes())
    .map(|a| a.key().to_owned())
    .collect();
    let sidecar_known = flag_variables("sidecar");
    let router_known = flag_variables("router");
    for name in sidecar_env.keys().filter(|k| k.starts_with("OLLAMA_MESH_")) {
        assert!(
            sidecar_known.contains(name),
            "{GPU_JOB}: the sidecar has no {name}"
        );
    }
    for name in router_env.iter().filter(|k| k.starts_with("OLLAMA_MESH_")) {
        assert!(
            router_known.contains(name),
            "{ROUTER_JOB}: the router has no {name}"
        );
    }
}
