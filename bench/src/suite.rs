//! The whole benchmark run: the machine's description, the scenarios in order, the goals table
//! and the report.

use std::path::PathBuf;
use std::process::Command;

use crate::report::{Report, ReportError, Table};
use crate::scenarios::{self, Context, Goal, Scenario};

/// Runs `scenarios` with `context` and writes the report into `out`; returns its path.
pub async fn run(
    context: &Context,
    scenarios: &[Scenario],
    out: &std::path::Path,
    command_line: &str,
) -> Result<PathBuf, ReportError> {
    let started = std::time::Instant::now();
    let mut sections = Vec::new();
    let mut goals: Vec<Goal> = Vec::new();
    for &scenario in scenarios {
        tracing::info!(?scenario, "running");
        let findings = scenarios::run(scenario, context).await;
        goals.extend(findings.goals);
        sections.push(findings.section);
    }
    let goals_table = Table {
        columns: ["goal", "this run", "met"].map(String::from).to_vec(),
        rows: goals
            .iter()
            .map(|g| {
                vec![
                    g.goal.to_owned(),
                    g.measured.clone(),
                    if g.met { "yes" } else { "**no**" }.to_owned(),
                ]
            })
            .collect(),
    };
    let preamble = format!(
        "Run on {date}, commit `{commit}`, {mode} mode, in {took}.\n\n\
         **Machine:** {machine}.\n\n\
         **Core split:** the system under test is pinned to core {system}; the load generator \
         and the simulated nodes share core {load} (`taskset`). Each system runs one worker \
         process or thread, so systems compare per core. Absolute numbers on a shared 2-core \
         machine are noise; ratios measured in the same run are not.\n\n\
         **Command:** `{command_line}` (after `bench/setup`, which installs the peers).\n\n\
         ## Goals\n\n{goals}",
        date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        commit = output("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into()),
        mode = if context.quick { "quick" } else { "full" },
        took =
            humantime::format_duration(std::time::Duration::from_secs(started.elapsed().as_secs())),
        machine = machine(),
        system = context.cores.system,
        load = context.cores.load,
        goals = goals_table.to_markdown(),
    );
    Report {
        title: "ollama-mesh benchmarks".to_owned(),
        preamble,
        sections,
    }
    .write(out)
}

/// CPU model, cores, memory and kernel, as `lscpu`, `nproc`, `/proc/meminfo` and `uname` say.
fn machine() -> String {
    let cpu = output("lscpu", &[])
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("Model name:").map(|m| m.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // `--all`: the bench itself runs pinned to one core.
    let cores = output("nproc", &["--all"]).unwrap_or_else(|| "?".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let kib: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(format!("{:.0} GiB", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "? GiB".into());
    let kernel = output("uname", &["-sr"]).unwrap_or_default();
    format!("{cpu}, {} cores, {memory} memory, {kernel}", cores.trim())
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
