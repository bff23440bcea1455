//! What the user sees on stderr while a command runs.
//!
//! stdout is reserved for results (a digest, a JSON object, a path list) so scripts can capture it; every
//! note, warning and progress line goes to stderr through this module, which `-q` silences (warnings
//! included, errors never: those are printed by `main`). The pipeline does not draw: it reports events to
//! a [`Progress`] value (a blob starts, with its total when one is known; context bytes and files were
//! read; bytes were sent; the blob ended, and how; a tag was stored), and the display decides what to show
//! from what it knows, so several layers, a base's blobs and several platforms all render the same way.
//!
//! On a terminal it draws as `docker push` does: one row per blob, ending in its state (`Pushed`, `Mounted
//! from REPO`, `Layer already exists`), then the config's, then `TAG: digest: sha256:... size: N` per
//! tag. Rows still moving are redrawn in place at most ten times a second: the cursor stays at the start of
//! the line below them, a redraw goes up over them (`ESC[nA`) and writes each again after an erase-line,
//! so every row always ends in a newline and whatever comes next (a note, a retry line, the error `main`
//! prints after a Ctrl-C) starts on a line of its own. A finished row above the first moving one is never
//! touched again, so the cursor only moves over rows still on screen; a note printed meanwhile goes above
//! the moving rows. Rows are cut to the terminal's width, since a wrapped row would make the redraw move
//! the wrong lines. Elsewhere (CI logs) each blob gets a line when it starts and one when it ends, and a
//! heartbeat with its numbers at most every [`HEARTBEAT`] while its bytes move.
//!
//! Events come from more than one thread (the thread compressing the context reports what it read, the
//! one sending reports what it sent, a base copy counts on the thread that reads it), so the state lives
//! behind one mutex shared by the [`Progress`], the [`Meter`] of each blob and the [`Notices`] a registry
//! connection prints its retry lines through. The hot path (a meter event per block or chunk) takes that
//! uncontended lock, adds, and reads the clock once; it writes only when a redraw or a heartbeat is due.
//! Time decides only what is drawn, never what is stored or printed on stdout.

mod render;

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::sink::BlobOutcome;
use crate::walk::Size;

use render::{Counts, End};
pub use render::{Total, What, Words, ago, human};

/// Rows on a terminal are redrawn at most this often.
const REDRAW: Duration = Duration::from_millis(100);
/// A log gets a line about a moving blob at least this often.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// The width assumed when the terminal does not say.
const DEFAULT_WIDTH: usize = 80;

/// Progress and notes for one run.
pub struct Progress {
    board: Arc<Mutex<Board>>,
    quiet: bool,
}

/// One blob's handle for reporting what moved; cheap to clone and usable from any thread.
#[derive(Clone)]
pub struct Meter {
    board: Option<Arc<Mutex<Board>>>,
    blob: usize,
}

/// Lines from elsewhere (a registry's retry notices), printed above the moving rows.
#[derive(Clone)]
pub struct Notices(Option<Arc<Mutex<Board>>>);

/// Where the display goes and how it is drawn.
enum Mode {
    Quiet,
    Log,
    /// A terminal; `width` asks its current width (`None`: unknown).
    Terminal {
        width: fn() -> Option<usize>,
    },
}

/// What is on stderr and what every blob of the run has done.
struct Board {
    mode: Mode,
    words: Words,
    out: Box<dyn Write + Send>,
    blobs: Vec<Blob>,
    /// Terminal: the rows from the first still moving one down, in screen order; the cursor is at the
    /// start of the line under the last `drawn` of them.
    rows: Vec<usize>,
    drawn: usize,
    last_draw: Option<Instant>,
}

struct Blob {
    what: What,
    /// The short digest, once known.
    id: Option<String>,
    /// The name its first line used (a log's end line repeats it when the id came later).
    first_name: String,
    total: Total,
    read: Size,
    sent: u64,
    started: Instant,
    /// Log: when its last line was printed.
    last_line: Instant,
    end: Option<End>,
}

impl Blob {
    fn name(&self) -> String {
        let label = match self.what {
            What::Layer => "layer".to_string(),
            What::LayerPart(i, n) => format!("layer {i}/{n}"),
            What::Config => "config".to_string(),
            What::Manifest => "manifest".to_string(),
        };
        match (&self.id, self.what) {
            // Layers go by their id, as in docker's output.
            (Some(id), What::Layer | What::LayerPart(..)) => id.clone(),
            (Some(id), _) => format!("{label} {id}"),
            (None, _) => label,
        }
    }

    /// The name for a log's end line: the first line's, with the id if that one had none.
    fn end_name(&self) -> String {
        let name = self.name();
        match &self.id {
            Some(id) if !self.first_name.contains(id.as_str()) => format!("{} {id}", self.first_name),
            _ => name,
        }
    }

    fn counts(&self, now: Instant) -> Counts {
        Counts {
            total: self.total,
            read: self.read,
            sent: self.sent,
            elapsed: now.saturating_duration_since(self.started),
        }
    }
}

/// The 12 hex digits docker shows for a blob.
fn short(digest: &Digest) -> String {
    digest.hex().chars().take(12).collect()
}

fn lock(board: &Mutex<Board>) -> MutexGuard<'_, Board> {
    // A panic elsewhere must not silence the display.
    board.lock().unwrap_or_else(|e| e.into_inner())
}

/// The terminal's width in columns, from stderr.
fn stderr_width() -> Option<usize> {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct it is given, which lives for the call.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

impl Progress {
    /// The display for a run on this process's stderr: a terminal's or a log's, silent with `quiet`.
    pub fn new(quiet: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal { width: stderr_width }
        } else {
            Mode::Log
        };
        Progress::with_mode(mode, Box::new(std::io::stderr()))
    }

    fn with_mode(mode: Mode, out: Box<dyn Write + Send>) -> Progress {
        let quiet = matches!(mode, Mode::Quiet);
        let board =
            Board { mode, words: Words::Push, out, blobs: Vec::new(), rows: Vec::new(), drawn: 0, last_draw: None };
        Progress { board: Arc::new(Mutex::new(board)), quiet }
    }

    /// Speaks of writing (`Writing`, `Written`) instead of pushing: a build into a layout or a tar.
    pub fn writing_to_disk(self) -> Progress {
        lock(&self.board).words = Words::Write;
        self
    }

    /// Whether nothing is shown (so the caller can skip work done only for the display).
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// A line of information.
    pub fn note(&mut self, msg: &str) {
        lock(&self.board).line(msg);
    }

    /// A warning (something was left out or done differently than asked).
    pub fn warn(&mut self, msg: &str) {
        lock(&self.board).line(&format!("warning: {msg}"));
    }

    /// The handle a registry connection prints its retry lines through.
    pub fn notices(&self) -> Notices {
        Notices((!self.quiet).then(|| Arc::clone(&self.board)))
    }

    /// A blob transfer starts: `digest` when it is known before the transfer, `total` when its size is.
    pub fn start(&mut self, what: What, digest: Option<&Digest>, total: Total) -> Meter {
        let now = Instant::now();
        let mut board = lock(&self.board);
        let blob = board.add(what, digest, total, None, now);
        Meter { board: Some(Arc::clone(&self.board)), blob }
    }

    /// The blob `meter` reported on is stored under `digest` (`outcome`: sent, of `size` bytes, or found).
    pub fn finish(&mut self, meter: &Meter, digest: &Digest, size: u64, outcome: &BlobOutcome) {
        let end = match outcome {
            BlobOutcome::Sent => End::Sent(size),
            BlobOutcome::Present => End::Present,
            BlobOutcome::Mounted(from) => End::Mounted(from.clone()),
        };
        lock(&self.board).end(meter.blob, Some(digest), end, Instant::now());
    }

    /// The blob `meter` reported on stopped before its end (an error, a cancel, a lost session).
    pub fn failed(&mut self, meter: &Meter) {
        lock(&self.board).end(meter.blob, None, End::Interrupted, Instant::now());
    }

    /// A blob that needed no transfer (already there, mounted) or went in one small request (a config).
    pub fn stored(&mut self, what: What, digest: &Digest, size: u64, outcome: &BlobOutcome) {
        let now = Instant::now();
        let end = match outcome {
            BlobOutcome::Sent => End::Sent(size),
            BlobOutcome::Present => End::Present,
            BlobOutcome::Mounted(from) => End::Mounted(from.clone()),
        };
        lock(&self.board).add(what, Some(digest), Total::Bytes(size), Some(end), now);
    }

    /// A manifest was stored under `name`: docker's `TAG: digest: sha256:... size: N`.
    pub fn tagged(&mut self, name: &str, digest: &Digest, size: u64) {
        lock(&self.board).line(&format!("{name}: digest: {digest} size: {size}"));
    }
}

impl Drop for Progress {
    /// Rows still moving when the run ends (an error, Ctrl-C) are marked as stopped, so the screen says
    /// where the transfer was and the error line comes after it.
    fn drop(&mut self) {
        let now = Instant::now();
        let mut board = lock(&self.board);
        let moving: Vec<usize> = (0..board.blobs.len()).filter(|i| board.blobs[*i].end.is_none()).collect();
        for i in moving {
            board.end(i, None, End::Interrupted, now);
        }
        let _ = board.out.flush();
    }
}

impl Meter {
    /// A meter that reports nowhere (for callers without a display).
    pub fn detached() -> Meter {
        Meter { board: None, blob: 0 }
    }

    /// `bytes` more of the context were read, and `files` more regular files read whole.
    pub fn read(&self, bytes: u64, files: u64) {
        self.update(|b| {
            b.read.bytes += bytes;
            b.read.files += files;
        });
    }

    /// `n` more bytes of the blob were sent.
    pub fn sent(&self, n: u64) {
        self.update(|b| b.sent += n);
    }

    /// The blob is being read again from its first byte (a retried copy): counts start over.
    pub fn restart(&self) {
        self.update(|b| {
            b.sent = 0;
            b.read = Size::default();
        });
    }

    /// `reader` counted as sent bytes as it is read (from the start: see [`Meter::restart`]).
    pub fn reader<R: std::io::Read>(&self, reader: R) -> Metered<R> {
        self.restart();
        Metered { inner: reader, meter: self.clone() }
    }

    fn update(&self, change: impl FnOnce(&mut Blob)) {
        let Some(board) = &self.board else { return };
        let mut board = lock(board);
        let Some(blob) = board.blobs.get_mut(self.blob).filter(|b| b.end.is_none()) else { return };
        change(blob);
        board.moved(self.blob, Instant::now());
    }
}

/// A reader whose bytes count as sent on a [`Meter`].
pub struct Metered<R> {
    inner: R,
    meter: Meter,
}

impl<R: std::io::Read> std::io::Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.sent(n as u64);
        Ok(n)
    }
}

impl Notices {
    /// Notices that print nothing.
    pub fn silent() -> Notices {
        Notices(None)
    }

    /// Prints `line` on a line of its own, above the rows still moving.
    pub fn line(&self, line: &str) {
        if let Some(board) = &self.0 {
            lock(board).line(line);
        }
    }
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Notices" } else { "Notices(silent)" })
    }
}

impl Board {
    fn width(&self) -> usize {
        match self.mode {
            Mode::Terminal { width } => width().unwrap_or(DEFAULT_WIDTH),
            _ => DEFAULT_WIDTH,
        }
    }

    /// A new blob; `end` for one that is done as it appears.
    fn add(&mut self, what: What, digest: Option<&Digest>, total: Total, end: Option<End>, now: Instant) -> usize {
        let mut blob = Blob {
            what,
            id: digest.map(short),
            first_name: String::new(),
            total,
            read: Size::default(),
            sent: 0,
            started: now,
            last_line: now,
            end: None,
        };
        blob.first_name = blob.name();
        let i = self.blobs.len();
        self.blobs.push(blob);
        match (&self.mode, end) {
            (Mode::Quiet, end) => self.blobs[i].end = end,
            (Mode::Log, None) => {
                let b = &self.blobs[i];
                let line = render::start_line(&b.first_name, self.words, b.total);
                self.write_line(&line);
            }
            (Mode::Log, Some(end)) => self.end(i, None, end, now),
            (Mode::Terminal { .. }, end) => {
                self.blobs[i].end = end;
                self.rows.push(i);
                self.draw(now);
            }
        }
        i
    }

    /// Blob `i` moved: redraw or print a heartbeat when one is due.
    fn moved(&mut self, i: usize, now: Instant) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Log => {
                let b = &self.blobs[i];
                if now.saturating_duration_since(b.last_line) >= HEARTBEAT {
                    let line = render::heartbeat_line(&b.name(), self.words, &b.counts(now));
                    self.blobs[i].last_line = now;
                    self.write_line(&line);
                }
            }
            Mode::Terminal { .. } => {
                if self.last_draw.is_none_or(|t| now.saturating_duration_since(t) >= REDRAW) {
                    self.draw(now);
                }
            }
        }
    }

    /// Blob `i` ended (`digest`: its id, when it was not known at the start).
    fn end(&mut self, i: usize, digest: Option<&Digest>, end: End, now: Instant) {
        let Some(b) = self.blobs.get_mut(i).filter(|b| b.end.is_none()) else { return };
        if let Some(d) = digest {
            b.id = Some(short(d));
        }
        match self.mode {
            Mode::Quiet => b.end = Some(end),
            Mode::Log => {
                let line = render::end_line(&b.end_name(), self.words, b.what, &end, &b.counts(now));
                b.end = Some(end);
                self.write_line(&line);
            }
            Mode::Terminal { .. } => {
                b.end = Some(end);
                self.draw(now);
            }
        }
    }

    /// A line that is not a blob's: above the moving rows on a terminal.
    fn line(&mut self, text: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Log => self.write_line(text),
            Mode::Terminal { .. } => {
                let mut frame = self.up();
                frame.push_str("\r\x1b[2K");
                frame.push_str(text);
                frame.push('\n');
                // The rows below it are drawn again from scratch.
                self.drawn = 0;
                self.frame(frame, Instant::now());
            }
        }
    }

    fn write_line(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let _ = self.out.write_all(&bytes);
    }

    /// Up to the first drawn row.
    fn up(&self) -> String {
        if self.drawn == 0 { String::new() } else { format!("\x1b[{}A", self.drawn) }
    }

    /// Redraws the rows in place.
    fn draw(&mut self, now: Instant) {
        let frame = self.up();
        self.frame(frame, now);
    }

    /// Writes `frame` (which leaves the cursor at the first row's line) and then every row, then lets go
    /// of the finished rows above the first moving one: they stay as drawn.
    fn frame(&mut self, mut frame: String, now: Instant) {
        let width = self.width();
        for &i in &self.rows {
            let b = &self.blobs[i];
            let row = match &b.end {
                None => render::live_row(&b.name(), self.words, &b.counts(now), width),
                Some(end) => render::end_row(&b.name(), self.words, b.what, end, width),
            };
            frame.push_str("\r\x1b[2K");
            frame.push_str(&row);
            frame.push('\n');
        }
        self.drawn = self.rows.len();
        let settled = self.rows.iter().take_while(|i| self.blobs[**i].end.is_some()).count();
        self.rows.drain(..settled);
        self.drawn -= settled;
        self.last_draw = Some(now);
        let _ = self.out.write_all(frame.as_bytes());
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
mod tests;
