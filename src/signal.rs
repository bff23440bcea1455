//! Cancellation: Ctrl-C, SIGTERM, and the docker CLI closing the plugin socket.
//!
//! Cancellation is a process-wide flag rather than a channel because the pipeline is synchronous: the tar
//! writer and the uploader check it between blocks and return `Error::Cancelled`, which unwinds through the
//! normal error path so open upload sessions are deleted and temp files removed by the code that owns them.
//! A second signal means the user is not willing to wait for that clean-up: the process exits at once with
//! 130. Run by the docker CLI without a terminal, the plugin is told to stop by the CLI closing the
//! abstract unix socket named in `DOCKER_CLI_PLUGIN_SOCKET`: a thread connects to it and treats EOF as a
//! cancel request, and a second EOF-free cancel is not needed because the CLI then waits for our exit.

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
