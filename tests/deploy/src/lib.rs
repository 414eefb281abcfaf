//! Readers for the deployment files that `tests/` checks: systemd unit files and the env files
//! they load, as systemd reads them, so that a test can both check their settings and run
//! their `ExecStart=` lines the way systemd would.
//!
//! Only the syntax the project's files use is supported (see each function); anything else is
//! an error rather than a silent misreading, since a test built on a misread file proves
//! nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The workspace root, where `nomad/`, `examples/` and `target/` live.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// The environment variables a binary's flags read: every `env = "…"` in the clap
/// definitions under `<crate_dir>/src`. A deployment file naming any other `OLLAMA_MESH_*`
/// variable has a typo the binary would silently ignore.
pub fn flag_variables(crate_dir: &str) -> Vec<String> {
    fn walk(path: &Path, found: &mut Vec<String>) {
        let entries = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                for piece in text.split("env = \"").skip(1) {
                    if let Some((name, _)) = piece.split_once('"') {
                        found.push(name.to_owned());
                    }
                }
            }
        }
    }
    let mut found = Vec::new();
    walk(&workspace_root().join(crate_dir).join("src"), &mut found);
    assert!(!found.is_empty(), "no flag variables found in {crate_dir}");
    found
}

/// A parsed unit file: its sections in order, each with its `Key=Value` lines in order (keys
/// may repeat, as `Environment=` and `LoadCredential=` do).
#[derive(Debug, Clone, Default)]
pub struct Unit {
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl Unit {
    /// Parses a unit file: `[Section]` headers, `Key=Value` lines, `#`/`;` comments and blank
    /// lines. Line continuations (a trailing backslash) are refused: the project's units do not
    /// use them, and a reader that ignored them would misread the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut unit = Unit::default();
        for (number, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let at = || format!("line {}: {raw:?}", number + 1);
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.ends_with('\\') {
                return Err(format!("{}: line continuations are not supported", at()));
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                unit.sections.push((name.to_owned(), Vec::new()));
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("{}: neither a section nor Key=Value", at()))?;
            let (_, entries) = unit
                .sections
                .last_mut()
                .ok_or_else(|| format!("{}: a setting before any [Section]", at()))?;
            entries.push((key.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(unit)
    }

    /// Reads and parses a unit file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Every value of `key` in `section`, in order.
    pub fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.sections
            .iter()
            .filter(|(name, _)| name == section)
            .flat_map(|(_, entries)| entries)
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The effective value of `key` in `section`: the last one, as systemd takes it for
    /// single-valued settings.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).last().copied()
    }

    /// The variables of the `Environment=` lines of `[Service]`, in order. Each line holds
    /// space-separated `KEY=VALUE` assignments, optionally double-quoted as a whole.
    pub fn environment(&self) -> Result<Vec<(String, String)>, String> {
        let mut variables = Vec::new();
        for line in self.all("Service", "Environment") {
            for word in split_words(line)? {
                let (key, value) = word
                    .split_once('=')
                    .ok_or_else(|| format!("Environment={line}: {word:?} is not KEY=VALUE"))?;
                variables.push((key.to_owned(), value.to_owned()));
            }
        }
        Ok(variables)
    }

    /// The command line of `ExecStart=`: the program and its arguments. Prefixes (`-`, `@`,
    /// `+`, `!`, `:`) and `$VARIABLE` expansion are refused, as the project's units use neither.
    pub fn exec_start(&self) -> Result<Vec<String>, String> {
        let line = self
            .get("Service", "ExecStart")
            .ok_or("no ExecStart= in [Service]")?;
        let words = split_words(line)?;
        match words.first() {
            None => Err("ExecStart= is empty".to_owned()),
            Some(program) if !program.starts_with('/') => Err(format!(
                "ExecStart={line}: the program must be an absolute path without prefixes"
            )),
            Some(_) if words.iter().any(|w| w.contains('$')) => Err(format!(
                "ExecStart={line}: variable expansion is not supported here"
            )),
            Some(_) => Ok(words),
        }
    }

    /// A time span setting (`TimeoutStopSec=`, `WatchdogSec=`) as a duration.
    pub fn duration(&self, section: &str, key: &str) -> Result<Duration, String> {
        let value = self
            .get(section, key)
            .ok_or_else(|| format!("no {key}= in [{section}]"))?;
        parse_time_span(value).map_err(|e| format!("{key}={value}: {e}"))
    }
}

/// Parses an env file as systemd's `EnvironmentFile=` does for the lines the project uses:
/// `KEY=VALUE` per line, `#` comments, blank lines; a value in double quotes loses them.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut variables = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: {raw:?} is not KEY=VALUE", number + 1))?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "line {}: {key:?} is not a variable name",
                number + 1
            ));
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        variables.push((key.to_owned(), value.to_owned()));
    }
    Ok(variables)
}

/// Reads an env file into a map (a later assignment wins, as in systemd).
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_env_file(&text)
        .map(|variables| variables.into_iter().collect())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A systemd time span or an ollama-mesh duration: `90s`, `1min 30s`, `2m`, `500ms`. A bare
/// number is seconds, as in systemd.
pub fn parse_time_span(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(value).map_err(|e| e.to_string())
}

/// Splits a command or `Environment=` line into words: whitespace separates them, and double
/// quotes group a word with its spaces (the quotes themselves are dropped).
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' | '\'' => {
                return Err(format!(
                    "{line:?}: escapes and single quotes are not supported"
                ))
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(format!("{line:?}: unterminated quote"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sections_repeated_keys_and_the_last_value() {
        let unit = Unit::parse(
            "# c\n[Unit]\nAfter=a b\n\n[Service]\nEnvironment=A=1 \"B=two words\"\nEnvironment=C=3\nExecStart=/usr/bin/x --flag \"a b\"\nTimeoutStopSec=1min 30s\nTimeoutStopSec=90\n",
        )
        .unwrap();
        assert_eq!(unit.get("Unit", "After"), Some("a b"));
        assert_eq!(
            unit.environment().unwrap(),
            [("A", "1"), ("B", "two words"), ("C", "3")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(unit.exec_start().unwrap(), ["/usr/bin/x", "--flag", "a b"]);
        assert_eq!(unit.all("Service", "TimeoutStopSec"), ["1min 30s", "90"]);
        assert_eq!(
            unit.duration("Service", "TimeoutStopSec").unwrap(),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn refuses_what_it_would_misread() {
        assert!(Unit::parse("[Service]\nExecStart=/x \\\n  --y\n").is_err());
        assert!(Unit::parse("Key=before a section\n").is_err());
        let unit = Unit::parse("[Service]\nExecStart=-/x $ARGS\n").unwrap();
        assert!(unit.exec_start().is_err());
        let unit = Unit::parse("[Service]\nExecStart=/x $ARGS\n").unwrap();
        assert!(unit.exec_start().is_err());
        assert!(parse_env_file("not an assignment\n").is_err());
        assert!(parse_env_file("BAD-NAME=1\n").is_err());
    }

    #[test]
    fn env_files_drop_comments_and_quotes() {
        assert_eq!(
            parse_env_file("# c\n\nA=1\nB=\"x y\"\n#C=3\n").unwrap(),
            [("A", "1"), ("B", "x y")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn time_spans() {
        assert_eq!(parse_time_span("90").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_time_span("1min 30s").unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(parse_time_span("60s").unwrap(), Duration::from_secs(60));
        assert!(parse_time_span("soon").is_err());
    }
}
