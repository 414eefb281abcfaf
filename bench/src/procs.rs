//! Child processes of the benchmark: spawned pinned to their share of the cores, measured from
//! `/proc` (memory and CPU time summed over the whole process tree), and never left behind.
//!
//! The bench runs the system under test, the load generator and the simulated fleet on the same
//! 2 cores, so each gets a fixed CPU set (`taskset -c`); otherwise the scheduler would hand a
//! proxy whatever the load generator leaves, and the comparison would measure the scheduler.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http_body_util::Full;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use ollama_mesh_ollama_client::{Answer, AskError, NodeClient};
use tokio::process::{Child, Command};

/// Why a child could not be started or did not come up.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The program could not be executed (missing, not executable, no log file).
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program as given.
        program: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The URL is not a plain `http://HOST:PORT/PATH` one.
    #[error("cannot probe {0}: only http://HOST:PORT/PATH URLs are supported")]
    BadUrl(String),
    /// The URL did not answer 200 before the deadline.
    #[error("{url} did not answer 200 within {waited:?} (last: {last})")]
    NotReady {
        /// The URL probed.
        url: String,
        /// How long it was probed.
        waited: Duration,
        /// The last answer or connection error seen.
        last: String,
    },
}

/// `program` under `taskset -c CPUS`, pinned from its first instruction (and so are the
/// processes and threads it starts); the plain program when taskset is not installed, which
/// [`Pinned::spawn`] then notes in the log.
pub fn pinned_command(program: &Path, cpus: &str) -> Command {
    match taskset() {
        Some(taskset) => {
            let mut command = Command::new(taskset);
            command.arg("-c").arg(cpus).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// taskset's path, looked up once.
fn taskset() -> Option<&'static Path> {
    static TASKSET: OnceLock<Option<PathBuf>> = OnceLock::new();
    TASKSET.get_or_init(|| find_program("taskset")).as_deref()
}

/// `name` on PATH or in the sbin directories (Debian puts nginx and HAProxy there, and they are
/// not on every user's PATH).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A running child pinned to a CPU set, in its own process group; the whole group (nginx's
/// workers, uvicorn's processes) is killed on drop, so no process outlives a failed run.
#[derive(Debug)]
pub struct Pinned {
    child: Child,
    pid: u32,
}

impl Pinned {
    /// Spawns `command` (its stdio as the caller set it up) pinned to `cpus`, a `taskset -c`
    /// list such as `"0"` or `"0,1"`.
    ///
    /// A command from [`pinned_command`] is pinned from exec on. Any other is pinned right after
    /// the spawn with `taskset -a -p`, which covers every thread it has by then; a process it
    /// forks within that first millisecond would escape, so multi-process programs should come
    /// from [`pinned_command`]. Without taskset the child runs unpinned, with a warning: the
    /// numbers are then noisier, not wrong, which beats no run at all.
    pub fn spawn(mut command: Command, cpus: &str) -> Result<Self, ProcError> {
        let program = command.as_std().get_program().to_owned();
        let pinned_at_exec = taskset().is_some_and(|taskset| program == taskset.as_os_str());
        let child = command
            // Its own group, so one signal reaches every process it forks.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcError::Spawn {
                program: program.to_string_lossy().into_owned(),
                source,
            })?;
        let pid = child.id().ok_or_else(|| ProcError::Spawn {
            program: program.to_string_lossy().into_owned(),
            source: std::io::Error::other("the child exited before its pid was read"),
        })?;
        let pinned = Self { child, pid };
        if !pinned_at_exec {
            pin_running(pid, cpus, &program);
        }
        Ok(pinned)
    }

    /// The child's pid (taskset execs the program, so this is the program's own).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child, e.g. to take a piped stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// `Some(status)` once the child has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Resident memory of the child and all its descendants, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid)
    }

    /// CPU time (user + system) of the child and all its descendants, seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid)
    }

    /// SIGTERM to the group, up to `grace` for the child to exit, then SIGKILL to whatever of
    /// the group is left.
    pub async fn stop(mut self, grace: Duration) {
        self.signal(Signal::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(pid = self.pid, ?grace, "child ignored SIGTERM: killing it");
        }
        self.kill_group().await;
    }

    /// SIGKILL to the group at once, and waits for the child.
    pub async fn kill(mut self) {
        self.kill_group().await;
    }

    async fn kill_group(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait().await;
    }

    fn signal(&self, signal: Signal) {
        let Ok(pid) = i32::try_from(self.pid) else {
            return;
        };
        // ESRCH (the group is gone) is the expected outcome after a clean exit.
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// Pins every thread of a running process with `taskset -a -p -c`, or warns why it could not.
fn pin_running(pid: u32, cpus: &str, program: &OsStr) {
    let Some(taskset) = taskset() else {
        tracing::warn!(?program, cpus, "taskset is not installed: running unpinned");
        return;
    };
    let status = std::process::Command::new(taskset)
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !status.as_ref().is_ok_and(std::process::ExitStatus::success) {
        tracing::warn!(
            ?program,
            pid,
            cpus,
            ?status,
            "taskset could not pin: running unpinned"
        );
    }
}

/// The last `lines` lines of a file, or a note that it could not be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(no log at {}: {err})", path.display()),
    }
}

/// Kernel clock ticks per second (`getconf CLK_TCK`, 100 when getconf is unavailable, which is
/// what Linux uses on every common architecture).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces and
/// parentheses, so the split is at the last `)`): index 0 is field 3 (`state`).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Field `n` (1-based, as in proc(5)) of a [`stat_fields`] result.
fn stat_field(fields: &[String], n: usize) -> Option<u64> {
    fields.get(n.checked_sub(3)?)?.parse().ok()
}

/// `pid` and every live descendant, found by one scan of `/proc`'s parent links.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let parent = stat_fields(child).and_then(|fields| stat_field(&fields, 4));
            if let Some(parent) = parent.and_then(|p| u32::try_from(p).ok()) {
                children.entry(parent).or_default().push(child);
            }
        }
    }
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&current) = tree.get(next) {
        tree.extend(children.get(&current).into_iter().flatten());
        next += 1;
    }
    tree
}

/// Resident memory (VmRSS) of `pid` and its descendants, KiB; `None` when `pid` is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let own = vm_rss_kib(pid)?;
    Some(
        own + process_tree(pid)
            .into_iter()
            .skip(1)
            .filter_map(vm_rss_kib)
            .sum::<u64>(),
    )
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// CPU seconds (utime + stime, plus cutime + cstime for children already reaped) of `pid` and
/// its live descendants; `None` when `pid` is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let ticks = |pid: u32| -> Option<u64> {
        let fields = stat_fields(pid)?;
        // utime, stime, cutime, cstime.
        (14..=17).map(|n| stat_field(&fields, n)).sum()
    };
    let own = ticks(pid)?;
    let rest: u64 = process_tree(pid)
        .into_iter()
        .skip(1)
        .filter_map(ticks)
        .sum();
    // Tick counts stay far below 2^52, where f64 would start to round them.
    #[allow(clippy::cast_precision_loss)]
    Some((own + rest) as f64 / clock_ticks())
}

/// Probes `url` with `GET` (and `headers`) until it answers 200, every 50 ms, for up to
/// `within`; the error carries the last answer or connection error, which is what explains a
/// peer that never came up.
pub async fn wait_http_ok(
    url: &str,
    headers: &[(&str, &str)],
    within: Duration,
) -> Result<(), ProcError> {
    let uri = http_uri(url)?;
    let started = Instant::now();
    let mut last = String::from("no attempt");
    while started.elapsed() < within {
        match http_get(&uri, headers).await {
            Ok(answer) if answer.status == http::StatusCode::OK => return Ok(()),
            Ok(Answer { status, body }) => {
                let body = String::from_utf8_lossy(&body);
                last = format!("{status} {}", body.chars().take(200).collect::<String>());
            }
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ProcError::NotReady {
        url: url.to_owned(),
        waited: started.elapsed(),
        last,
    })
}

/// [`wait_http_ok`] without headers: a ready or health endpoint (`/readyz`, `/api/version`).
pub async fn wait_ready(url: &str, within: Duration) -> Result<(), ProcError> {
    wait_http_ok(url, &[], within).await
}

/// The body of a `GET url` that answers 200, as text; `None` on any other answer or error.
/// For polling status endpoints, where a miss just means "ask again".
pub async fn get_text(url: &str) -> Option<String> {
    let uri = http_uri(url).ok()?;
    match http_get(&uri, &[]).await {
        Ok(Answer { status, body }) if status == http::StatusCode::OK => {
            Some(String::from_utf8_lossy(&body).into_owned())
        }
        _ => None,
    }
}

fn http_uri(url: &str) -> Result<http::Uri, ProcError> {
    let uri: http::Uri = url.parse().map_err(|_| ProcError::BadUrl(url.to_owned()))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(ProcError::BadUrl(url.to_owned()));
    }
    Ok(uri)
}

/// One `GET` on a fresh connection, at most [`PROBE_TIMEOUT`] in all. A fresh connection each
/// time on purpose: a probe must not ride on a pooled connection to a previous process.
async fn http_get(uri: &http::Uri, headers: &[(&str, &str)]) -> Result<Answer, AskError> {
    let mut request = http::Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::default())
        .map_err(|source| AskError::Request {
            url: uri.to_string(),
            source,
        })?;
    NodeClient::fresh_connections()
        .send(request, PROBE_TIMEOUT)
        .await
}

/// The longest one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The open-files limit children start with: this process's soft limit, first raised to its
/// hard limit (once) so that peers which do not raise their own still get every descriptor the
/// machine allows. Where the hard limit is low (20 000 on this project's machines, with no
/// CAP_SYS_RESOURCE to lift it) it caps how many concurrent streams a proxy can carry, since each
/// holds two descriptors: the client's and the node's.
pub fn nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
            return 1024;
        };
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            hard
        } else {
            soft
        }
    })
}

/// A free loopback port, found by binding port 0 and letting it go. The peer binds it a moment
/// later; another process taking it in between is possible but shows as a clear start failure.
pub fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// `program` followed by its arguments, shell-quoted where needed, for the report.
pub fn command_line<I, S>(program: &Path, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    std::iter::once(program.as_os_str().to_owned())
        .chain(args.into_iter().map(|a| a.as_ref().to_owned()))
        .map(|word| {
            let word = word.to_string_lossy().into_owned();
            if !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c))
            {
                word
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Cpus_allowed_list` of a process, e.g. `"0"`.
    fn allowed_cpus(pid: u32) -> String {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_owned()
    }

    #[tokio::test]
    async fn pins_measures_a_process_tree_and_kills_it_on_drop() {
        let sh = find_program("sh").expect("sh");
        let mut command = pinned_command(&sh, "0");
        // A parent with a child, the parent busy for a moment then waiting.
        command
            .arg("-c")
            .arg("sleep 30 & i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; wait")
            .stdout(Stdio::null());
        let mut proc = Pinned::spawn(command, "0").unwrap();
        let pid = proc.pid();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(proc.exited().is_none());
        let tree = process_tree(pid);
        assert!(tree.len() >= 2, "{tree:?}");
        if taskset().is_some() {
            for &pid in &tree {
                assert_eq!(allowed_cpus(pid), "0", "{pid}");
            }
        }
        let rss = proc.rss_kib().unwrap();
        assert!(
            rss > vm_rss_kib(pid).unwrap(),
            "the child's memory counts too"
        );
        assert!(proc.cpu_seconds().unwrap() >= 0.0);
        drop(proc);
        tokio::time::sleep(Duration::from_millis(200)).await;
        for pid in tree {
            let state = stat_fields(pid).and_then(|f| f.first().cloned());
            // Gone, or a zombie waiting for its (also killed) parent's reaper.
            assert!(
                matches!(state.as_deref(), None | Some("Z")),
                "{pid}: {state:?}"
            );
        }
    }

    #[tokio::test]
    async fn pins_a_command_after_spawn_and_keeps_its_stdio() {
        let mut command = Command::new(find_program("sh").expect("sh"));
        command
            .args(["-c", "echo hello; exec sleep 30"])
            .stdout(Stdio::piped());
        let mut proc = Pinned::spawn(command, "0").unwrap();
        let mut stdout = proc.child_mut().stdout.take().unwrap();
        let mut line = [0u8; 6];
        tokio::io::AsyncReadExt::read_exact(&mut stdout, &mut line)
            .await
            .unwrap();
        assert_eq!(&line, b"hello\n");
        if taskset().is_some() {
            assert_eq!(allowed_cpus(proc.pid()), "0");
        }
        let pid = proc.pid();
        proc.kill().await;
        assert!(stat_fields(pid).is_none());
    }

    #[tokio::test]
    async fn waits_for_a_200_and_reports_the_last_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for (status, body) in [("503 Service Unavailable", "busy"), ("200 OK", "ok")] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await.unwrap();
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        wait_ready(&format!("http://{addr}/ready"), Duration::from_secs(5))
            .await
            .unwrap();
        let err = wait_ready(&format!("http://{addr}/"), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not answer 200"), "{err}");
        assert!(get_text(&format!("http://{addr}/")).await.is_none());
        assert!(matches!(
            wait_ready("https://x/", Duration::from_millis(10)).await,
            Err(ProcError::BadUrl(_))
        ));
    }

    #[test]
    fn quotes_command_lines_for_the_report() {
        assert_eq!(
            command_line(Path::new("/bin/x"), ["-c", "a b", "it's", "k=v,w"]),
            r"/bin/x -c 'a b' 'it'\''s' k=v,w"
        );
    }
}
