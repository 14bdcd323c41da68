//! The systemd service protocol (`sd_notify`): readiness, stopping and watchdog pings.
//!
//! Under a unit with `Type=notify`, systemd passes the path of a datagram socket in
//! `NOTIFY_SOCKET` (a file path, or `@name` in the abstract namespace) and, with
//! `WatchdogSec=`, the interval in `WATCHDOG_USEC` for the process in `WATCHDOG_PID`.
//! Everything here does nothing when the variables are absent, so the binaries behave
//! the same outside systemd.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where to send notifications, read once from the environment.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<String>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. The watchdog applies
    /// only when `WATCHDOG_PID` is absent or names this process.
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty());
        let pid_ok = std::env::var("WATCHDOG_PID")
            .map(|p| p.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&us| us > 0 && pid_ok)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// The watchdog interval systemd expects pings within, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments). Failures are
    /// returned for logging; they never stop the service.
    ///
    /// # Errors
    /// The socket could not be created or the datagram not sent.
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        let Some(path) = &self.socket else {
            return Ok(());
        };
        let sock = UnixDatagram::unbound()?;
        if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), path)?;
        }
        Ok(())
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.send_logged(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// `WATCHDOG=1`.
    pub fn ping(&self) {
        self.send_logged("WATCHDOG=1");
    }

    fn send_logged(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            // Stderr, not tracing: this crate does not log, and a lost notification
            // is worth a line in the journal.
            eprintln!("cannot notify systemd ({state:?}): {e}");
        }
    }
}

/// Pings the watchdog at half its interval while `alive` says the service works.
/// Returns at once without a watchdog. `alive` is called on the runtime; a check that
/// hangs makes the pings stop, which is what the watchdog is for.
pub async fn watchdog_loop<F, Fut>(n: Notifier, mut alive: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let Some(every) = n.watchdog() else {
        return;
    };
    let mut tick = tokio::time::interval(every / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive().await {
            n.ping();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("heimdall-sdnotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some(path.to_string_lossy().into_owned()),
            watchdog: None,
        };
        n.notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("heimdall-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx2 = UnixDatagram::bind_addr(&addr).unwrap();
        let n2 = Notifier {
            socket: Some(format!("@{name}")),
            watchdog: None,
        };
        n2.notify("WATCHDOG=1").unwrap();
        let len = rx2.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let n = Notifier {
            socket: None,
            watchdog: None,
        };
        n.notify("READY=1").unwrap();
    }
}
