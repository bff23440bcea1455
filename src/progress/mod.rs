//! What the user sees on stderr while a command runs.
//!
//! stdout is reserved for results (a digest, a JSON object, a path list) so scripts can capture it; every
//! note, warning and progress line goes to stderr through this one type, which `-q` silences (warnings
//! included, errors never: those are printed by `main`). On a terminal a blob's progress is one line
//! redrawn in place at most a few times per second; elsewhere (CI logs) each blob gets a line when it
//! starts and one when it ends, so logs stay short and readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Progress and notes for one run.
#[derive(Debug)]
pub struct Progress {
    quiet: bool,
    tty: bool,
    current: Option<Transfer>,
}

#[derive(Debug)]
struct Transfer {
    label: String,
    started: Instant,
    last_draw: Instant,
    bytes: u64,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress { quiet, tty: std::io::stderr().is_terminal(), current: None }
    }

    /// A line of information.
    pub fn note(&mut self, msg: &str) {
        if !self.quiet {
            self.clear_line();
            eprintln!("{msg}");
        }
    }

    /// A warning (something was left out or done differently than asked).
    pub fn warn(&mut self, msg: &str) {
        if !self.quiet {
            self.clear_line();
            eprintln!("warning: {msg}");
        }
    }

    /// A blob transfer starts.
    pub fn start(&mut self, label: &str) {
        let now = Instant::now();
        self.current = Some(Transfer { label: label.to_string(), started: now, last_draw: now, bytes: 0 });
        if !self.quiet && !self.tty {
            eprintln!("{label}: started");
        }
    }

    /// `n` more bytes of the current blob were sent.
    pub fn advance(&mut self, n: u64) {
        let Some(t) = self.current.as_mut() else {
            return;
        };
        t.bytes += n;
        if self.quiet || !self.tty || t.last_draw.elapsed() < Duration::from_millis(200) {
            return;
        }
        t.last_draw = Instant::now();
        let secs = t.started.elapsed().as_secs_f64().max(0.001);
        eprint!("\r\x1b[2K{}: {} ({}/s)", t.label, human(t.bytes), human((t.bytes as f64 / secs) as u64));
        let _ = std::io::stderr().flush();
    }

    /// The current blob is done; `what` says how ("pushed 12.3 MB", "exists").
    pub fn done(&mut self, what: &str) {
        let Some(t) = self.current.take() else { return };
        if self.quiet {
            return;
        }
        let secs = t.started.elapsed().as_secs_f64();
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{}: {what} in {secs:.1}s", t.label);
    }

    fn clear_line(&self) {
        if self.tty && self.current.is_some() {
            eprint!("\r\x1b[2K");
        }
    }
}

/// Bytes in human units (decimal, as docker prints them).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_units() {
        assert_eq!(super::human(999), "999 B");
        assert_eq!(super::human(1_500), "1.5 kB");
        assert_eq!(super::human(20_000_000), "20.0 MB");
    }
}

/// `s` with control characters escaped as `ls -b` does (`\n`, `\t`, `\033`...) and backslashes doubled, so a
/// file name cannot move the cursor, clear the screen or forge a line of output.
pub fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:03o}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod escape_tests {
    #[test]
    fn control_characters_are_escaped_like_ls_b() {
        assert_eq!(super::escaped("plain name.txt"), "plain name.txt");
        assert_eq!(super::escaped("a\nb"), "a\\nb");
        assert_eq!(super::escaped("\u{1b}[2Jx"), "\\033[2Jx");
        assert_eq!(super::escaped("back\\slash\t"), "back\\\\slash\\t");
        assert_eq!(super::escaped("\u{7f}"), "\\177");
        assert_eq!(super::escaped("caf\u{e9}"), "caf\u{e9}");
    }
}
