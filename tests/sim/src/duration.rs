//! Go-style durations and Ollama's `keep_alive` values.
//!
//! `keep_alive` arrives as a JSON number of seconds or a Go duration string (`"5m"`, `"1h30m"`,
//! `"-1"` is invalid in Go but `"-1s"` is not); any negative value means "keep forever"
//! (api/types.go). The same parser reads durations in the simulator's config file so that the
//! values operators copy from `OLLAMA_KEEP_ALIVE` mean the same thing.

use std::time::Duration;

use serde_json::Value;

/// How long a model stays loaded after its last request finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Never expire (a negative keep-alive).
    Forever,
    /// Expire this long after the model goes idle; zero unloads it as soon as it is idle.
    For(Duration),
}

impl KeepAlive {
    /// Ollama's `OLLAMA_KEEP_ALIVE` default.
    pub const DEFAULT: KeepAlive = KeepAlive::For(Duration::from_secs(300));

    /// Whether the model must be unloaded as soon as it goes idle.
    pub fn is_zero(self) -> bool {
        self == KeepAlive::For(Duration::ZERO)
    }

    /// Parses a Go duration string; negative durations mean forever.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let (negative, duration) = parse_go_duration(text)?;
        Ok(if negative && !duration.is_zero() {
            KeepAlive::Forever
        } else {
            KeepAlive::For(duration)
        })
    }

    /// Reads a JSON `keep_alive`: a number of seconds or a duration string.
    pub fn from_json(value: &Value) -> Result<Self, KeepAliveError> {
        match value {
            Value::Number(n) => {
                let secs = n.as_f64().unwrap_or(0.0);
                Ok(if secs < 0.0 {
                    KeepAlive::Forever
                } else {
                    KeepAlive::For(Duration::from_secs_f64(secs.min(1e12)))
                })
            }
            Value::String(s) => Ok(KeepAlive::parse(s)?),
            // Ollama names the Go type its JSON decoder produced.
            Value::Bool(_) => Err(KeepAliveError::UnsupportedType("bool")),
            Value::Array(_) => Err(KeepAliveError::UnsupportedType("[]interface {}")),
            Value::Object(_) => Err(KeepAliveError::UnsupportedType("map[string]interface {}")),
            Value::Null => Err(KeepAliveError::UnsupportedType("<nil>")),
        }
    }

    /// The duration used to sort eviction candidates: forever sorts last.
    pub fn sort_key(self) -> Duration {
        match self {
            KeepAlive::Forever => Duration::MAX,
            KeepAlive::For(d) => d,
        }
    }
}

/// A `keep_alive` Ollama refuses, worded as Ollama words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeepAliveError {
    /// A string that is not a Go duration.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// Neither a number nor a string.
    #[error("Unsupported type: '{0}'")]
    UnsupportedType(&'static str),
}

/// A value that is not a Go duration; displays like Go's `time.ParseDuration` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("time: invalid duration \"{0}\"")]
pub struct DurationError(pub String);

/// Parses a Go duration (`"300ms"`, `"1h2m3.5s"`, `"-5m"`, `"0"`), returning its sign separately.
pub fn parse_go_duration(text: &str) -> Result<(bool, Duration), DurationError> {
    let err = || DurationError(text.to_owned());
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok((negative, Duration::ZERO));
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let number: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += number * unit_secs;
    }
    Ok((negative, Duration::from_secs_f64(total.min(1e12))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("5m"),
            Ok((false, Duration::from_secs(300)))
        );
        assert_eq!(
            parse_go_duration("1h30m"),
            Ok((false, Duration::from_secs(5400)))
        );
        assert_eq!(
            parse_go_duration("1.5s"),
            Ok((false, Duration::from_millis(1500)))
        );
        assert_eq!(parse_go_duration("-1s"), Ok((true, Duration::from_secs(1))));
        assert_eq!(parse_go_duration("0"), Ok((false, Duration::ZERO)));
        for bad in ["", "5", "5x", "m", "1.2.3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keep_alive_json() {
        assert_eq!(
            KeepAlive::from_json(&json!(0)),
            Ok(KeepAlive::For(Duration::ZERO))
        );
        assert_eq!(KeepAlive::from_json(&json!(-1)), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::from_json(&json!("-1m")), Ok(KeepAlive::Forever));
        assert_eq!(
            KeepAlive::from_json(&json!("10m")),
            Ok(KeepAlive::For(Duration::from_secs(600)))
        );
        assert_eq!(
            KeepAlive::from_json(&json!("abc")).unwrap_err().to_string(),
            "time: invalid duration \"abc\""
        );
        assert_eq!(
            KeepAlive::from_json(&json!(true)).unwrap_err().to_string(),
            "Unsupported type: 'bool'"
        );
        assert_eq!(
            KeepAlive::from_json(&json!([1])).unwrap_err().to_string(),
            "Unsupported type: '[]interface {}'"
        );
    }
}
