//! Cancellation: Ctrl-C, SIGTERM, and (later) the docker CLI closing the plugin socket.
//!
//! Cancellation is a process-wide flag rather than a channel because the pipeline is synchronous: the tar
//! writer and the uploader check it between blocks and return `Error::Cancelled`, which unwinds through the
//! normal error path so open upload sessions are deleted and temp files removed by the code that owns them.
//! A second signal means the user is not willing to wait for that clean-up: the process exits at once with
//! 130.

use std::sync::atomic::{AtomicBool, Ordering};

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Installs the SIGINT/SIGTERM handler. Safe to call once; later calls are ignored.
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if CANCELLED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

/// Whether the run was cancelled.
pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::Relaxed)
}

/// Marks the run cancelled (used by the plugin-socket watcher and by tests).
pub fn cancel() {
    CANCELLED.store(true, Ordering::SeqCst);
}
