//! The units in `examples/systemd/` pass `systemd-analyze verify` and hold the settings the
//! binaries' behaviour depends on: `Type=notify` with a watchdog, ordering after Consul (and
//! Ollama), a stop timeout above the drain or grace period from their env files, hardening,
//! and env files that name only variables the binaries read.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ollama_mesh_deploy_tests::{
    flag_variables, parse_env_file, parse_time_span, read_env_file, workspace_root, Unit,
};

/// A unit with its env file and the setting its stop timeout must outlast.
struct Example {
    unit: &'static str,
    env: &'static str,
    crate_dir: &'static str,
    /// The variable holding the drain (sidecar) or grace (router) period, and its default.
    stop_period: (&'static str, Duration),
    /// Units that must be running before this one (and so are stopped after it).
    after: &'static [&'static str],
}

const EXAMPLES: [Example; 2] = [
    Example {
        unit: "ollama-mesh-sidecar.service",
        env: "sidecar.env",
        crate_dir: "sidecar",
        stop_period: ("OLLAMA_MESH_DRAIN_TIMEOUT", Duration::from_secs(30)),
        after: &["network-online.target", "consul.service", "ollama.service"],
    },
    Example {
        unit: "ollama-mesh-router.service",
        env: "router.env",
        crate_dir: "router",
        stop_period: ("OLLAMA_MESH_GRACE_PERIOD", Duration::from_secs(30)),
        after: &["network-online.target", "consul.service"],
    },
];

/// Consul's own variables, which both binaries read.
const CONSUL_VARIABLES: [&str; 10] = [
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_SSL_VERIFY",
    "CONSUL_CACERT",
    "CONSUL_CAPATH",
    "CONSUL_CLIENT_CERT",
    "CONSUL_CLIENT_KEY",
    "CONSUL_TLS_SERVER_NAME",
];

fn dir() -> PathBuf {
    workspace_root().join("examples/systemd")
}

fn unit(example: &Example) -> Unit {
    Unit::read(&dir().join(example.unit)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn units_run_as_notify_services_that_outlast_their_drain() {
    for example in &EXAMPLES {
        let name = example.unit;
        let unit = unit(example);
        let service = |key: &str| unit.get("Service", key);
        assert_eq!(
            service("Type"),
            Some("notify"),
            "{name}: READY=1 comes by sd_notify"
        );
        assert_eq!(service("Restart"), Some("on-failure"), "{name}");
        assert_eq!(
            service("KillSignal"),
            Some("SIGTERM"),
            "{name}: the drain starts on SIGTERM"
        );
        let watchdog = unit.duration("Service", "WatchdogSec").unwrap();
        assert!(
            watchdog >= Duration::from_secs(2),
            "{name}: WatchdogSec={watchdog:?}"
        );

        let words = |section: &str, key: &str| -> Vec<String> {
            unit.all(section, key)
                .iter()
                .flat_map(|v| v.split_whitespace())
                .map(str::to_owned)
                .collect()
        };
        for needed in example.after {
            assert!(
                words("Unit", "After").iter().any(|w| w == needed),
                "{name}: After={needed}"
            );
        }
        for wanted in ["network-online.target", "consul.service"] {
            assert!(
                words("Unit", "Wants").iter().any(|w| w == wanted),
                "{name}: Wants={wanted}"
            );
        }

        // The stop timeout must exceed the period the binary waits for running requests, as
        // set in its env file (or the binary's default), or systemd kills it mid-drain.
        let env_file = service("EnvironmentFile").expect("an EnvironmentFile=");
        assert_eq!(
            Path::new(env_file).file_name().and_then(|f| f.to_str()),
            Some(example.env),
            "{name}: EnvironmentFile= is examples/systemd/{} installed",
            example.env
        );
        let env = read_env_file(&dir().join(example.env)).unwrap();
        let (variable, default) = example.stop_period;
        let period = env
            .get(variable)
            .map(|v| parse_time_span(v).unwrap_or_else(|e| panic!("{variable}={v}: {e}")))
            .unwrap_or(default);
        let stop = unit.duration("Service", "TimeoutStopSec").unwrap();
        assert!(
            stop >= period + Duration::from_secs(10),
            "{name}: TimeoutStopSec={stop:?} must exceed {variable}={period:?} with room to deregister"
        );

        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("LimitNOFILE", "65536"),
        ] {
            assert_eq!(service(key), Some(value), "{name}: {key}");
        }
        assert!(
            service("DynamicUser") == Some("yes") || service("User").is_some(),
            "{name}: never root"
        );
        assert_eq!(
            service("CapabilityBoundingSet"),
            Some(""),
            "{name}: no capabilities"
        );
    }
}

#[test]
fn env_files_name_only_variables_the_binaries_read() {
    for example in &EXAMPLES {
        let text = std::fs::read_to_string(dir().join(example.env)).unwrap();
        let known = flag_variables(example.crate_dir);
        // Commented-out examples too: an operator uncomments them as they are.
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with("OLLAMA_MESH_") || rest.starts_with("CONSUL_") => {
                    rest
                }
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let variables =
            parse_env_file(&uncommented).unwrap_or_else(|e| panic!("{}: {e}", example.env));
        assert!(!variables.is_empty(), "{}", example.env);
        for (key, value) in variables {
            assert!(
                known.contains(&key) || CONSUL_VARIABLES.contains(&key.as_str()),
                "{}: {} does not read {key}",
                example.env,
                example.crate_dir
            );
            assert!(
                !value.is_empty(),
                "{}: {key} is empty; the binaries reject empty values",
                example.env
            );
        }
        let unit = unit(example);
        for (key, _) in unit.environment().unwrap() {
            assert!(
                known.contains(&key) || CONSUL_VARIABLES.contains(&key.as_str()),
                "{}: Environment={key} is not read by {}",
                example.unit,
                example.crate_dir
            );
        }
    }
}

/// `systemd-analyze`, installed by `scripts/ensure-systemd-tools` when missing. `None` (with a
/// loud message) only when it cannot be installed here, e.g. not root and no sudo.
fn systemd_analyze() -> Option<PathBuf> {
    let script = workspace_root().join("scripts/ensure-systemd-tools");
    let output = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    if !output.status.success() {
        eprintln!(
            "\n\
             ********************************************************************\n\
             SKIPPED: systemd-analyze is missing and {} could not install it;\n\
             examples/systemd/*.service were NOT verified. Install the Debian\n\
             package `systemd` (as root) and run the tests again.\n\
             ********************************************************************\n",
            script.display()
        );
        return None;
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Some(PathBuf::from(stdout.lines().last().expect("a path").trim()))
}

/// `systemd-analyze verify` in a throwaway root: the host's own unit directory (for the targets
/// the units reference), the example units in /etc/systemd/system, and an executable at every
/// path their Exec lines name (verify checks that these exist). Any warning fails the test:
/// verify exits 0 for unknown keys and misspelt values, which are exactly the mistakes to catch.
#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let system_units = Path::new("/usr/lib/systemd/system");
    let unit_dir = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&unit_dir).unwrap();
    let copied = Command::new("cp")
        .arg("-a")
        .arg(system_units)
        .arg(&unit_dir)
        .status();
    assert!(
        copied.is_ok_and(|s| s.success()),
        "cannot copy {}",
        system_units.display()
    );
    let etc = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();

    for example in &EXAMPLES {
        std::fs::copy(dir().join(example.unit), etc.join(example.unit)).unwrap();
        let unit = unit(example);
        let program = &unit.exec_start().unwrap()[0];
        let placed = root.path().join(program.trim_start_matches('/'));
        std::fs::create_dir_all(placed.parent().unwrap()).unwrap();
        std::fs::write(&placed, "#!/bin/sh\n").unwrap();
        let mut permissions = std::fs::metadata(&placed).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&placed, permissions).unwrap();
    }

    for example in &EXAMPLES {
        let output = Command::new(&tool)
            .arg("verify")
            .arg(format!("--root={}", root.path().display()))
            .arg(format!("/etc/systemd/system/{}", example.unit))
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {}: {}\n{said}",
            example.unit,
            output.status
        );
    }
}
