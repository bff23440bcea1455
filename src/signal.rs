//! Cancellation: Ctrl-C, SIGTERM, and the docker CLI closing the plugin socket.
//!
//! A [`Cancel`] is a value passed down to whatever may wait (a registry exchange, a retry's sleep, a
//! credential helper, the tar writer), which checks it between blocks and returns `Error::Cancelled`; that
//! unwinds through the normal error path, so open upload sessions are deleted and temp files removed by the
//! code that owns them. The binary's signal handler sets the process-wide one ([`Cancel::process`]); a unit
//! test makes its own with [`Cancel::new`] and cancels one operation without touching the rest of the
//! process. A second signal means the user will not wait for the clean-up: the handler exits at once with
//! 130. Run by the docker CLI without a terminal, the plugin is told to stop by the CLI closing the
//! abstract unix socket named in `DOCKER_CLI_PLUGIN_SOCKET`: a thread connects to it and treats EOF as a
//! cancel. That EOF is not counted as a signal: one interruption often brings both (`timeout -s INT`
//! signals docker's whole process group, plugin included, and docker then closes the socket), and it
//! must stay the first, clean cancel, which deletes the upload session, rather than pass for a second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A cancellation flag shared by everything one run (or one test) does.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A fresh flag, not cancelled, independent of the process's.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// The process-wide flag that signals and the plugin socket set.
    pub fn process() -> Cancel {
        static PROCESS: OnceLock<Cancel> = OnceLock::new();
        PROCESS.get_or_init(Cancel::new).clone()
    }

    /// Cancels; returns whether it was cancelled already (a second request).
    pub fn cancel(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() { Err(Error::Cancelled) } else { Ok(()) }
    }

    /// Sleeps `d`, waking every 20 ms to return `Err(Cancelled)` as soon as the flag is set.
    pub fn sleep(&self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        loop {
            self.check()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }
}

/// Whether the run was cancelled (the process-wide flag).
pub fn cancelled() -> bool {
    Cancel::process().is_cancelled()
}

/// Marks the run cancelled; returns whether it was already (used by the signal handler and tests).
pub fn cancel() -> bool {
    Cancel::process().cancel()
}

/// Handles SIGINT, SIGTERM and SIGHUP for the process: the first cancels the run (the clean stop), a
/// second exits at once with 130. Only signals count towards the second (see the module doc).
pub fn handle_signals() -> std::result::Result<(), ctrlc::Error> {
    let signalled = AtomicBool::new(false);
    ctrlc::set_handler(move || {
        cancel();
        if signalled.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
}

/// Watches `DOCKER_CLI_PLUGIN_SOCKET` (set by the docker CLI for plugins): EOF on it means cancel.
pub fn watch_plugin_socket() {
    let Some(name) = std::env::var_os("DOCKER_CLI_PLUGIN_SOCKET").filter(|v| !v.is_empty()) else { return };
    let name = name.to_string_lossy().into_owned();
    std::thread::spawn(move || {
        let Some(stream) = connect(&name) else { return };
        let mut stream = stream;
        let mut buf = [0u8; 64];
        loop {
            match std::io::Read::read(&mut stream, &mut buf) {
                Ok(0) | Err(_) => {
                    cancel();
                    return;
                }
                Ok(_) => {}
            }
        }
    });
}

/// Connects to the socket: an abstract name when it starts with `@` (as docker creates it), else a path.
fn connect(name: &str) -> Option<std::os::unix::net::UnixStream> {
    use std::os::unix::net::{SocketAddr, UnixStream};
    match name.strip_prefix('@') {
        Some(abs) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = SocketAddr::from_abstract_name(abs.as_bytes()).ok()?;
            UnixStream::connect_addr(&addr).ok()
        }
        None => UnixStream::connect(name).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_value_is_independent_of_the_process() {
        let c = Cancel::new();
        assert!(c.check().is_ok());
        let started = Instant::now();
        let other = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.cancel();
        });
        assert!(matches!(c.sleep(Duration::from_secs(10)), Err(Error::Cancelled)));
        assert!(started.elapsed() < Duration::from_secs(2));
        t.join().unwrap();
        assert!(!Cancel::new().is_cancelled());
    }
}
