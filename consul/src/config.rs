//! Where Consul is and how to talk to it, read the way Consul's own CLI and API library read it
//! (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, …), so an operator's existing environment just works.
//!
//! [`ConsulSettings`] is what people write (environment, flags); [`ClientConfig`] is the
//! validated result. Validation reads the files it names, so a bad path fails at start with the
//! setting's name rather than at the first request.

use std::path::PathBuf;
use std::time::Duration;

/// Consul's default HTTP address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";

/// The settings as written, each optional. Later sources override earlier ones field by field
/// ([`ConsulSettings::overridden_by`]): environment first, then flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsulSettings {
    /// `CONSUL_HTTP_ADDR`: `host:port`, `http://…`, `https://…` or `unix:///path`.
    pub http_addr: Option<String>,
    /// `CONSUL_HTTP_TOKEN`: ACL token.
    pub token: Option<String>,
    /// `CONSUL_HTTP_TOKEN_FILE`: file holding the ACL token; wins over `token`, as in Consul.
    pub token_file: Option<PathBuf>,
    /// `CONSUL_HTTP_SSL`: use HTTPS for a bare `host:port` address.
    pub ssl: Option<String>,
    /// `CONSUL_HTTP_SSL_VERIFY`: `false` disables certificate verification (testing only).
    pub ssl_verify: Option<String>,
    /// `CONSUL_CACERT`: PEM file of CA certificates to trust.
    pub ca_cert: Option<PathBuf>,
    /// `CONSUL_CAPATH`: directory of PEM CA certificates to trust.
    pub ca_path: Option<PathBuf>,
    /// `CONSUL_CLIENT_CERT`: PEM client certificate for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// `CONSUL_CLIENT_KEY`: PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
    /// `CONSUL_TLS_SERVER_NAME`: name to verify the server's certificate against.
    pub tls_server_name: Option<String>,
}

/// A setting that cannot be used, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The environment variable (or its flag's) name.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Validated client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Where the agent listens.
    pub address: ConsulAddress,
    /// ACL token sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// TLS settings, for `https` addresses.
    pub tls: Option<TlsSettings>,
    /// Time limit for non-blocking requests.
    pub request_timeout: Duration,
}

/// Where the Consul HTTP API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsulAddress {
    /// TCP, plain or TLS.
    Tcp {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
        /// Whether to speak TLS.
        https: bool,
    },
    /// A Unix domain socket.
    Unix(PathBuf),
}

impl std::fmt::Display for ConsulAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp { host, port, https } => {
                let scheme = if *https { "https" } else { "http" };
                if host.contains(':') {
                    write!(f, "{scheme}://[{host}]:{port}")
                } else {
                    write!(f, "{scheme}://{host}:{port}")
                }
            }
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// TLS settings for an `https` Consul address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Verify the server certificate (`CONSUL_HTTP_SSL_VERIFY`, default true).
    pub verify: bool,
    /// CA certificate files to trust; the system store when empty.
    pub ca_files: Vec<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Name to verify the server certificate against; the address's host when `None`.
    pub server_name: Option<String>,
}

impl ConsulSettings {
    /// Reads Consul's environment variables.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (environment-like: name → value). Empty values count
    /// as unset, as in Consul.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let path = |name: &str| get(name).map(PathBuf::from);
        Self {
            http_addr: get("CONSUL_HTTP_ADDR"),
            token: get("CONSUL_HTTP_TOKEN"),
            token_file: path("CONSUL_HTTP_TOKEN_FILE"),
            ssl: get("CONSUL_HTTP_SSL"),
            ssl_verify: get("CONSUL_HTTP_SSL_VERIFY"),
            ca_cert: path("CONSUL_CACERT"),
            ca_path: path("CONSUL_CAPATH"),
            client_cert: path("CONSUL_CLIENT_CERT"),
            client_key: path("CONSUL_CLIENT_KEY"),
            tls_server_name: get("CONSUL_TLS_SERVER_NAME"),
        }
    }

    /// These settings with every field that `overrides` sets replaced (flags over environment).
    pub fn overridden_by(self, overrides: ConsulSettings) -> Self {
        Self {
            http_addr: overrides.http_addr.or(self.http_addr),
            token: overrides.token.or(self.token),
            token_file: overrides.token_file.or(self.token_file),
            ssl: overrides.ssl.or(self.ssl),
            ssl_verify: overrides.ssl_verify.or(self.ssl_verify),
            ca_cert: overrides.ca_cert.or(self.ca_cert),
            ca_path: overrides.ca_path.or(self.ca_path),
            client_cert: overrides.client_cert.or(self.client_cert),
            client_key: overrides.client_key.or(self.client_key),
            tls_server_name: overrides.tls_server_name.or(self.tls_server_name),
        }
    }

    /// Validates the settings, reading the token file and listing the CA directory.
    pub fn validate(&self) -> Result<ClientConfig, ConfigError> {
        let force_https = parse_bool("CONSUL_HTTP_SSL", self.ssl.as_deref())?.unwrap_or(false);
        let address = parse_address(
            self.http_addr.as_deref().unwrap_or(DEFAULT_HTTP_ADDR),
            force_https,
        )?;
        let token = match &self.token_file {
            Some(file) => Some(read_token_file(file)?),
            None => self.token.clone(),
        };
        let https = matches!(address, ConsulAddress::Tcp { https: true, .. });
        let tls = https.then(|| self.tls_settings()).transpose()?;
        Ok(ClientConfig {
            address,
            token,
            tls,
            request_timeout: Duration::from_secs(10),
        })
    }

    fn tls_settings(&self) -> Result<TlsSettings, ConfigError> {
        let verify =
            parse_bool("CONSUL_HTTP_SSL_VERIFY", self.ssl_verify.as_deref())?.unwrap_or(true);
        let mut ca_files = Vec::new();
        if let Some(file) = &self.ca_cert {
            ca_files.push(readable_file("CONSUL_CACERT", file)?);
        }
        if let Some(dir) = &self.ca_path {
            ca_files.extend(pem_files_in("CONSUL_CAPATH", dir)?);
        }
        let client_identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((
                readable_file("CONSUL_CLIENT_CERT", cert)?,
                readable_file("CONSUL_CLIENT_KEY", key)?,
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "CONSUL_CLIENT_KEY",
                    "is required when CONSUL_CLIENT_CERT is set",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "CONSUL_CLIENT_CERT",
                    "is required when CONSUL_CLIENT_KEY is set",
                ))
            }
        };
        Ok(TlsSettings {
            verify,
            ca_files,
            client_identity,
            server_name: self.tls_server_name.clone(),
        })
    }
}

/// Parses a Consul address the way Consul's API library does.
fn parse_address(addr: &str, force_https: bool) -> Result<ConsulAddress, ConfigError> {
    const FIELD: &str = "CONSUL_HTTP_ADDR";
    if let Some(path) = addr.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(ConfigError::new(FIELD, "unix:// needs a socket path"));
        }
        return Ok(ConsulAddress::Unix(PathBuf::from(path)));
    }
    let (https, rest) = if let Some(rest) = addr.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = addr.strip_prefix("http://") {
        (force_https, rest)
    } else if addr.contains("://") {
        return Err(ConfigError::new(
            FIELD,
            format!("{addr:?}: scheme must be http, https or unix"),
        ));
    } else {
        (force_https, addr)
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(ConfigError::new(
            FIELD,
            format!("{addr:?}: expected host:port without a path"),
        ));
    }
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| ConfigError::new(FIELD, format!("{addr:?}: expected host:port")))?;
    let port = match port {
        Some(port) => port
            .parse()
            .map_err(|_| ConfigError::new(FIELD, format!("{addr:?}: invalid port {port:?}")))?,
        None if https => 8501,
        None => 8500,
    };
    Ok(ConsulAddress::Tcp {
        host: host.to_owned(),
        port,
        https,
    })
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    (!host.is_empty() && !host.contains(':')).then_some((host, port))
}

/// Go's `strconv.ParseBool`, which Consul uses for its boolean variables.
fn parse_bool(field: &'static str, value: Option<&str>) -> Result<Option<bool>, ConfigError> {
    match value {
        None => Ok(None),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
        Some(other) => Err(ConfigError::new(
            field,
            format!("{other:?} is not a boolean (use true or false)"),
        )),
    }
}

fn read_token_file(file: &PathBuf) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigError::new(
            "CONSUL_HTTP_TOKEN_FILE",
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::new(
            "CONSUL_HTTP_TOKEN_FILE",
            format!("{} is empty", file.display()),
        ));
    }
    Ok(token.to_owned())
}

fn readable_file(field: &'static str, file: &PathBuf) -> Result<PathBuf, ConfigError> {
    std::fs::File::open(file)
        .map(|_| file.clone())
        .map_err(|e| ConfigError::new(field, format!("cannot read {}: {e}", file.display())))
}

fn pem_files_in(field: &'static str, dir: &PathBuf) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::new(field, format!("cannot list {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests;
