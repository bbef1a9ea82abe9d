//! systemd integration without linking libsystemd: `sd_notify` datagrams to `$NOTIFY_SOCKET`
//! (READY, RELOADING, STOPPING, WATCHDOG, STATUS), the watchdog interval from `$WATCHDOG_USEC`,
//! and whether stderr is the journal (`$JOURNAL_STREAM`). Signals: SIGINT/SIGTERM ask to stop,
//! SIGHUP asks to reload; handlers only set flags.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Sends state changes to systemd; does nothing when not started by systemd with `Type=notify`.
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
            .and_then(|path| UnixDatagram::unbound().ok().map(|s| (s, path)));
        Notifier { socket }
    }

    /// Sends `state` (newline-separated `KEY=VALUE`). A failure is logged, never fatal: the
    /// service keeps working, and systemd's start timeout reports a lost READY.
    pub fn notify(&self, state: &str) {
        let Some((sock, path)) = &self.socket else { return };
        let r = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        } else {
            sock.send_to(state.as_bytes(), path)
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, socket = %path, "sd_notify failed");
        }
    }

    pub fn status(&self, text: &str) {
        self.notify(&format!("STATUS={}", text.replace('\n', " ")));
    }
}

/// How often systemd expects WATCHDOG=1 (`WatchdogSec=`), if it does for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Whether stderr is connected to the journal (systemd sets `JOURNAL_STREAM=dev:inode`).
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.split_once(':') else { return false };
    let Ok(meta) = rustix::fs::fstat(rustix::stdio::stderr()) else { return false };
    #[allow(clippy::unnecessary_cast)] // dev_t / ino_t widths differ between targets
    let same =
        dev.parse::<u64>().ok() == Some(meta.st_dev as u64) && ino.parse::<u64>().ok() == Some(meta.st_ino as u64);
    same
}

static STOP: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_reload(_: i32) {
    RELOAD.store(true, Ordering::SeqCst);
}

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// Installs the handlers (SIGINT/SIGTERM: stop; SIGHUP: reload).
pub fn install_signal_handlers(reload: bool) -> anyhow::Result<()> {
    let mut sigs: Vec<(i32, extern "C" fn(i32))> = vec![(SIGINT, on_stop), (SIGTERM, on_stop)];
    if reload {
        sigs.push((SIGHUP, on_reload));
    }
    for (sig, handler) in sigs {
        // SAFETY: the handlers only store to atomics, which is async-signal-safe.
        if unsafe { signal(sig, handler) } == usize::MAX {
            anyhow::bail!("cannot install a handler for signal {sig}");
        }
    }
    Ok(())
}

/// Whether SIGINT/SIGTERM arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Whether SIGHUP arrived since the last call.
pub fn take_reload() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}
