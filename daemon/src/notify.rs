//! systemd's `sd_notify` protocol: `READY=1`, `STOPPING=1` and `WATCHDOG=1` datagrams to
//! `$NOTIFY_SOCKET`. A no-op when not started by systemd.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where to send notifications, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<String>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`.
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0)
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// How often to send `WATCHDOG=1` (half the watchdog timeout), when systemd asks for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    /// The service is up (first registration done).
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// The service is draining.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// The main loop is alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        let Some(path) = &self.socket else {
            return;
        };
        let sent = UnixDatagram::unbound().and_then(|socket| match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)
            }
            None => socket.send_to(message.as_bytes(), path),
        });
        if let Err(error) = sent {
            tracing::warn!(%error, socket = %path, message, "sd_notify failed");
        }
    }
}
