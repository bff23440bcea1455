//! The one error type of docker-idpb.
//!
//! Every failure the user can cause or meet (a bad flag, an unreadable file, a registry that says no) becomes
//! one `Error` variant whose `Display` is the single line printed before the process exits: it names the
//! thing at fault (a path, a host, a reference, a `.dockerignore` line) and, where there is one, the fix.
//! Variants are per failure class rather than per call site, so callers build them with the small
//! constructors below and `main` only has to print and pick an exit code. Secrets never reach an `Error`:
//! credentials are kept out of messages by construction (registry errors carry status, code and message
//! from the response body, never request headers).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, one line each.
#[derive(Debug)]
pub enum Error {
    /// A command-line value or combination is wrong; the message says which and how to fix it.
    Usage(String),
    /// A file or directory could not be read or written.
    Io { path: PathBuf, action: &'static str, source: io::Error },
    /// The build context is unusable (missing, not a directory, changed while read).
    Context(String),
    /// A `.dockerignore` line could not be parsed.
    Ignore { file: String, line: usize, message: String },
    /// An image reference (name, tag, digest) is malformed.
    Reference { input: String, message: String },
    /// An OCI layout or local store is missing something or malformed.
    Layout(String),
    /// A registry answered with an error or could not be reached.
    Registry(String),
    /// Authentication failed or credentials could not be obtained.
    Auth(String),
    /// TLS setup or verification failed.
    Tls(String),
    /// A registry lost an upload session (e.g. after a dropped acknowledgement); the blob must be sent again
    /// from its first byte. The pipeline handles it; users see it only when it keeps happening.
    UploadLost(String),
    /// A registry refused chunked upload (PATCH); the blob must be sent as one PUT of known digest.
    ChunkedRefused(String),
    /// The user interrupted the run (Ctrl-C, SIGTERM, or the docker CLI closed the plugin socket).
    Cancelled,
}

impl Error {
    /// A usage error with the given message.
    pub fn usage(msg: impl Into<String>) -> Error {
        Error::Usage(msg.into())
    }

    /// An I/O error on `path` while doing `action` ("read", "create", ...).
    pub fn io(path: impl AsRef<Path>, action: &'static str, source: io::Error) -> Error {
        Error::Io { path: path.as_ref().to_path_buf(), action, source }
    }

    /// The process exit code for this error: 130 for cancellation, 2 for usage (flags, names), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Cancelled => 130,
            Error::Usage(_) | Error::Reference { .. } => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m}"),
            Error::Io { path, action, source } => {
                let hint = match source.kind() {
                    io::ErrorKind::PermissionDenied => " (check its permissions)",
                    io::ErrorKind::NotFound => " (no such file or directory)",
                    _ => "",
                };
                // NotFound's own text repeats the hint; keep one of them.
                if source.kind() == io::ErrorKind::NotFound {
                    write!(f, "cannot {action} {}{hint}", path.display())
                } else {
                    write!(f, "cannot {action} {}: {}{hint}", path.display(), strip_os_error(source))
                }
            }
            Error::Context(m) => write!(f, "{m}"),
            Error::Ignore { file, line, message } => write!(f, "{file}:{line}: {message}"),
            Error::Reference { input, message } => {
                write!(f, "invalid reference {input:?}: {message}")
            }
            Error::Layout(m) | Error::Registry(m) | Error::Auth(m) | Error::Tls(m) => {
                write!(f, "{m}")
            }
            Error::UploadLost(m) | Error::ChunkedRefused(m) => write!(f, "{m}"),
            Error::Cancelled => write!(f, "cancelled"),
        }
    }
}

/// `io::Error`'s Display appends " (os error 13)"; the user does not need the errno.
fn strip_os_error(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_names_path_and_hint() {
        let e = Error::io("/x/y", "read", io::Error::from_raw_os_error(13));
        let s = e.to_string();
        assert!(s.starts_with("cannot read /x/y: "), "{s}");
        assert!(s.ends_with("(check its permissions)"), "{s}");
        assert!(!s.contains("os error"), "{s}");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Error::Cancelled.exit_code(), 130);
        assert_eq!(Error::usage("x").exit_code(), 2);
        assert_eq!(Error::Context("x".into()).exit_code(), 1);
    }
}
