//! Running the binary on a terminal, and reading back what that terminal would show.
//!
//! [`Terminal`] runs a command under a pseudo-terminal made by util-linux `script` (`script -qfec CMD
//! /dev/null`), so the binary sees a TTY on stdout and stderr as it does for a user at a shell, on a
//! terminal [`COLUMNS`] wide; both come back as one transcript, with the terminal's `\r\n` line ends. The
//! inner command writes its own pid to a file first (then `exec`s), so a test can signal the binary alone,
//! as `kill -INT PID` or a Ctrl-C that only it receives would. [`replay`] turns a transcript into the
//! screen a terminal would show after it: it applies printable text, `\r`, `\n` (a line feed: the
//! terminal's own `\r` comes with it), erase-line (`ESC[K`, `ESC[0K`, `ESC[2K`), erase-below (`ESC[J`) and
//! cursor up/down (`ESC[nA`, `ESC[nB`), and ignores other escape sequences, so a progress display that
//! redraws in place can be checked for what is left on screen (no half-drawn or duplicated lines) rather
//! than for the bytes it wrote.

use super::TempDir;
use super::process::{DEFAULT_TIMEOUT, IdpbCommand, Output, require_tool};
use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The width of the terminal: wider than the 80 columns assumed when a terminal does not say, so a row has
/// room for every field.
pub const COLUMNS: usize = 120;

/// A command running under a pseudo-terminal; killed on drop if still running.
pub struct Terminal {
    child: Child,
    command: String,
    transcript: Option<JoinHandle<Vec<u8>>>,
    pid_file: PathBuf,
    _dir: TempDir,
}

/// `'word'` for `sh -c`.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

impl Terminal {
    /// Starts `cmd` (its program, arguments, environment and directory) under `script`. Keep `cmd` alive
    /// while it runs: it owns the temp dirs its environment points at.
    pub fn spawn(cmd: &mut IdpbCommand) -> Terminal {
        let dir = TempDir::new("terminal");
        let pid_file = dir.join("pid");
        let inner = cmd.command();
        let mut words = vec![inner.get_program().to_string_lossy().into_owned()];
        words.extend(inner.get_args().map(|a| a.to_string_lossy().into_owned()));
        let command = words.join(" ");
        let line = format!(
            "stty cols {COLUMNS} rows 40; echo $$ > {}; exec {}",
            quote(&pid_file.to_string_lossy()),
            words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
        );
        let mut script = Command::new(require_tool("script"));
        script.args(["-qfec", &line, "/dev/null"]);
        for (key, value) in inner.get_envs() {
            match value {
                Some(v) => script.env(key, v),
                None => script.env_remove(key),
            };
        }
        if let Some(d) = inner.get_current_dir() {
            script.current_dir(d);
        }
        // `script` runs the line with $SHELL.
        script.env("SHELL", "/bin/sh");
        script.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = script.spawn().unwrap_or_else(|e| panic!("cannot start `script` for `{command}`: {e}"));
        let mut out = child.stdout.take();
        let transcript = thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(out) = out.as_mut() {
                let _ = out.read_to_end(&mut bytes);
            }
            bytes
        });
        Terminal { child, command, transcript: Some(transcript), pid_file, _dir: dir }
    }

    /// Runs `cmd` under a terminal to completion (within [`DEFAULT_TIMEOUT`]); `stdout` of the result is
    /// the terminal's transcript (stdout and stderr together), `stderr` what `script` itself said.
    pub fn run(cmd: &mut IdpbCommand) -> Output {
        Terminal::spawn(cmd).finish(DEFAULT_TIMEOUT)
    }

    /// The pid of the command itself (not of `script` or a shell), once it has started.
    pub fn pid(&self, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pid) = fs::read_to_string(&self.pid_file).ok().and_then(|s| s.trim().parse().ok()) {
                return pid;
            }
            assert!(Instant::now() < deadline, "`{}` did not start within {timeout:?}", self.command);
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit (`script -e` passes the command's exit code on); panics with the transcript
    /// (after killing it) when it outlives `timeout`.
    pub fn finish(&mut self, timeout: Duration) -> Output {
        let status = super::process::wait_or_kill(&mut self.child, &self.command, timeout);
        let transcript = self.transcript.take().and_then(|t| t.join().ok()).unwrap_or_default();
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let output = Output {
            command: format!("script -qfec '{}'", self.command),
            code: status.and_then(|s| s.code()),
            stdout: String::from_utf8_lossy(&transcript).into_owned(),
            stderr,
        };
        assert!(status.is_some(), "still running after {timeout:?}, killed: {output}");
        output
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The lines a terminal shows after `transcript` (see the module doc for what is interpreted), with
/// trailing spaces removed and trailing empty lines dropped. Lines do not wrap.
pub fn replay(transcript: &str) -> Vec<String> {
    let mut screen: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = transcript.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => {
                row += 1;
                if screen.len() <= row {
                    screen.push(Vec::new());
                }
            }
            '\u{1b}' => {
                if chars.peek() != Some(&'[') {
                    // A two-character escape (`ESC 7`...): ignored.
                    chars.next();
                    continue;
                }
                chars.next();
                let mut param = String::new();
                let mut last = None;
                for p in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&p) {
                        last = Some(p);
                        break;
                    }
                    param.push(p);
                }
                let n = param.parse::<usize>().unwrap_or(0);
                match last {
                    Some('A') => row = row.saturating_sub(n.max(1)),
                    Some('B') => {
                        row += n.max(1);
                        while screen.len() <= row {
                            screen.push(Vec::new());
                        }
                    }
                    Some('K') if param.is_empty() || param == "0" => screen[row].truncate(col),
                    Some('K') if param == "2" => screen[row].clear(),
                    Some('J') if param.is_empty() || param == "0" => {
                        screen[row].truncate(col);
                        screen.truncate(row + 1);
                    }
                    _ => {}
                }
            }
            c if c.is_control() => {}
            c => {
                let line = &mut screen[row];
                while line.len() < col {
                    line.push(' ');
                }
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    let mut lines: Vec<String> =
        screen.into_iter().map(|l| l.into_iter().collect::<String>().trim_end().to_string()).collect();
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}
