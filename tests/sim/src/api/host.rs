//! Ollama's Host-header check (routes.go:1776-1839): on a loopback listener, requests whose
//! Host is not local get 403 with an empty body. A router that forwards `Host: x.service.consul`
//! to a loopback Ollama is refused, and the simulator must refuse it too.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

/// The check for one listener.
#[derive(Debug, Clone)]
pub struct HostCheck {
    hostname: Option<String>,
}

impl HostCheck {
    /// The check for a listener bound to `local`: `None` when the address is not loopback.
    pub fn for_listener(local: SocketAddr) -> Option<Self> {
        local.ip().is_loopback().then(|| Self {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_ascii_lowercase()),
        })
    }

    /// Whether a request with these headers may proceed.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let name = strip_port(host).to_ascii_lowercase();
        if let Ok(ip) = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return is_local_ip(ip);
        }
        name.is_empty()
            || name == "localhost"
            || self.hostname.as_deref() == Some(name.as_str())
            || [".localhost", ".local", ".internal"]
                .iter()
                .any(|tld| name.ends_with(tld))
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn is_local_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_unspecified() || v4.is_link_local()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(host: &str) -> bool {
        let check = HostCheck {
            hostname: Some("gpu-box".to_owned()),
        };
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, host.parse().unwrap());
        check.allows(&headers)
    }

    #[test]
    fn local_hosts_pass_and_others_do_not() {
        for ok in [
            "localhost:11434",
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:11434",
            "gpu-box",
            "a.localhost",
            "n.internal",
            "x.local:1",
        ] {
            assert!(allowed(ok), "{ok}");
        }
        for refused in ["example.com", "ollama.service.consul:11434", "8.8.8.8"] {
            assert!(!allowed(refused), "{refused}");
        }
        assert!(HostCheck::for_listener("0.0.0.0:1".parse().unwrap()).is_none());
    }
}
