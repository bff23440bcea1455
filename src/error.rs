//! The one error type of docker-idpb.
//!
//! Every failure the user can cause or meet (a bad flag, an unreadable file, a registry that says no) becomes
//! one `Error` variant whose `Display` is the single line printed before the process exits: it names the
//! thing at fault (a path, a host, a reference, a `.dockerignore` line) and, where there is one, the fix.
//! Variants are per failure class rather than per call site, so callers build them with the small
//! constructors below and `main` only has to print and pick an exit code. Secrets never reach an `Error`:
//! credentials are kept out of messages by construction (registry errors carry status, code and message
//! from the response body, never request headers).
//!
//! Registry failures carry data as well as their line: a [`RegistryError`] says whether it was an HTTP
//! status (with the registry's error codes), a transport failure (DNS, refused, reset, timeout) or a
//! protocol violation, and [`Error::is_transient`] reads that data, so the retry policy never guesses from
//! a message. Two conditions are not failures at all but signals between the registry client and the
//! pipeline ([`Restart`]: the upload session was lost, or chunked upload is refused); the pipeline acts on
//! them and users only see them as a registry error when acting on them did not help.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A signal from the registry client to whoever produces a blob's bytes: start over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// The registry lost the upload session (e.g. after a dropped acknowledgement): send the blob again
    /// from its first byte.
    UploadLost(String),
    /// The registry refused chunked upload (PATCH): send the blob as one PUT of known digest.
    ChunkedRefused(String),
}

impl Restart {
    pub fn reason(&self) -> &str {
        match self {
            Restart::UploadLost(m) | Restart::ChunkedRefused(m) => m,
        }
    }
}

/// A registry failure: what kind (for decisions), the line the user sees, and how many attempts were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError {
    pub kind: RegistryErrorKind,
    /// One line naming the operation, the host and the registry's own words; never a credential.
    pub message: String,
    /// Attempts made before giving up (1 = no retry).
    pub attempts: u32,
}

/// What went wrong with a registry, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryErrorKind {
    /// The registry answered with an HTTP status it should not have, with its error codes
    /// (`BLOB_UNKNOWN`, `DENIED`...).
    Status { status: u16, codes: Vec<String> },
    /// The request did not get an answer.
    Transport(TransportKind),
    /// The registry answered something that breaks the protocol (a bad Location, an oversized or invalid
    /// body, a digest that does not match): sending the same request again would not help.
    Protocol,
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The host name does not resolve: permanent, not retried (as skopeo and Docker do).
    Dns,
    /// Connection refused.
    Refused,
    /// Connection reset or closed mid-exchange.
    Reset,
    /// No answer within the time allowed.
    Timeout,
    /// The server answered a TLS handshake in plain HTTP: permanent for this scheme.
    PlainHttp,
    /// Any other I/O failure on the way.
    Other,
}

/// Statuses worth another attempt: timeouts, rate limits, and server or proxy trouble.
pub fn transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 499 | 500 | 502 | 503 | 504 | 522)
}

impl RegistryError {
    pub fn is_transient(&self) -> bool {
        match &self.kind {
            RegistryErrorKind::Status { status, .. } => transient_status(*status),
            RegistryErrorKind::Transport(kind) => !matches!(kind, TransportKind::Dns | TransportKind::PlainHttp),
            RegistryErrorKind::Protocol => false,
        }
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if self.attempts > 1 {
            write!(f, " (gave up after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

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
    /// Images asked for by name that the local store does not hold: the names, what it holds instead
    /// (every NAME:TAG), where it is, and what to do.
    NotInStore { wanted: Vec<String>, held: Vec<String>, store: PathBuf, hint: String },
    /// A registry answered with an error, could not be reached, or broke the protocol.
    Registry(Box<RegistryError>),
    /// Authentication failed or credentials could not be obtained.
    Auth(String),
    /// TLS setup or verification failed.
    Tls(String),
    /// Not a failure: the blob must be sent again another way (see [`Restart`]).
    Restart(Restart),
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

    /// A registry broke the protocol (permanent): `message` is the line the user sees.
    pub fn protocol(message: impl Into<String>) -> Error {
        Error::registry(RegistryErrorKind::Protocol, message)
    }

    /// A registry error of `kind` after one attempt.
    pub fn registry(kind: RegistryErrorKind, message: impl Into<String>) -> Error {
        Error::Registry(Box::new(RegistryError { kind, message: message.into(), attempts: 1 }))
    }

    /// Whether trying the same thing again may succeed: decided from the error's data, never its text.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Registry(e) => e.is_transient(),
            _ => false,
        }
    }

    /// The same error, noting that `attempts` attempts were made (registry errors only).
    pub fn with_attempts(self, attempts: u32) -> Error {
        match self {
            Error::Registry(mut e) => {
                e.attempts = e.attempts.max(attempts);
                Error::Registry(e)
            }
            other => other,
        }
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
                // Paths are shown escaped: a file name cannot forge output or drive the terminal.
                let path = crate::progress::escaped(&path.display().to_string());
                if source.kind() == io::ErrorKind::NotFound {
                    write!(f, "cannot {action} {path}{hint}")
                } else {
                    write!(f, "cannot {action} {path}: {}{hint}", strip_os_error(source))
                }
            }
            Error::Context(m) => write!(f, "{m}"),
            Error::Ignore { file, line, message } => write!(f, "{file}:{line}: {message}"),
            Error::Reference { input, message } => {
                write!(f, "invalid reference {input:?}: {message}")
            }
            Error::Layout(m) | Error::Auth(m) | Error::Tls(m) => {
                write!(f, "{m}")
            }
            Error::NotInStore { wanted, held, store, hint } => {
                let wanted: Vec<String> = wanted.iter().map(|w| crate::progress::escaped(w)).collect();
                let store = crate::progress::escaped(&store.display().to_string());
                let plural = if wanted.len() == 1 { "image" } else { "images" };
                write!(f, "no {plural} {} in the local store {store}; ", wanted.join(", "))?;
                // One line however full the store is: the first few names, then a count.
                const SHOWN: usize = 10;
                match held.len() {
                    0 => write!(f, "it is empty")?,
                    n => {
                        let names: Vec<String> = held.iter().take(SHOWN).map(|h| crate::progress::escaped(h)).collect();
                        write!(f, "it holds {}", names.join(", "))?;
                        if n > SHOWN {
                            write!(f, " and {} more", n - SHOWN)?;
                        }
                    }
                }
                write!(f, "; {hint}")
            }
            Error::Registry(e) => write!(f, "{e}"),
            Error::Restart(r) => write!(f, "{}", r.reason()),
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
    fn not_in_store_lists_what_the_store_holds_on_one_line() {
        let e = |wanted: &[&str], held: Vec<String>| Error::NotInStore {
            wanted: wanted.iter().map(|w| w.to_string()).collect(),
            held,
            store: PathBuf::from("/s"),
            hint: "see `docker-idpb images`".into(),
        };
        assert_eq!(
            e(&["x:1"], vec!["a:1".into(), "b:latest".into()]).to_string(),
            "no image x:1 in the local store /s; it holds a:1, b:latest; see `docker-idpb images`"
        );
        assert_eq!(
            e(&["x:1", "y:2"], vec![]).to_string(),
            "no images x:1, y:2 in the local store /s; it is empty; see `docker-idpb images`"
        );
        let many = e(&["x\n:1"], (0..25).map(|i| format!("app:{i}")).collect()).to_string();
        assert!(many.contains("app:9 and 15 more;") && !many.contains("app:10") && !many.contains('\n'), "{many}");
        assert_eq!(e(&["x"], vec![]).exit_code(), 1);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Error::Cancelled.exit_code(), 130);
        assert_eq!(Error::usage("x").exit_code(), 2);
        assert_eq!(Error::Context("x".into()).exit_code(), 1);
    }

    #[test]
    fn transience_is_read_from_data() {
        let status = |s| Error::registry(RegistryErrorKind::Status { status: s, codes: vec![] }, "x");
        assert!(status(503).is_transient() && status(429).is_transient() && status(408).is_transient());
        assert!(!status(404).is_transient() && !status(401).is_transient() && !status(400).is_transient());
        let transport = |k| Error::registry(RegistryErrorKind::Transport(k), "x");
        assert!(transport(TransportKind::Refused).is_transient() && transport(TransportKind::Timeout).is_transient());
        assert!(!transport(TransportKind::Dns).is_transient());
        assert!(!Error::protocol("bad Location").is_transient());
        assert!(!Error::Tls("x".into()).is_transient() && !Error::Cancelled.is_transient());
        assert_eq!(Error::protocol("m").with_attempts(3).to_string(), "m (gave up after 3 attempts)");
    }
}
