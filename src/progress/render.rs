//! The words and numbers of a blob's line: pure functions of what a blob has done and of the time, so
//! they are tested without a terminal or a clock.
//!
//! A terminal row is `NAME: Pushing [=====>      ] 83.7 MB / 190.6 MB  44%  412/1000 files  80.1 MB sent
//! 48.1 MB/s  ETA 3s`: the part up to the totals is always there, and the other fields are kept in the
//! order percentage, ETA, rate, files, bytes sent while they fit the terminal's width (a row must never
//! wrap, or redrawing it in place would move the wrong line); 80 columns show the first three. A log
//! line says the same in a sentence. A directory layer measures its progress by the context bytes read
//! of the total a stat walk found (compression makes the blob's own size unknown until the end); a blob
//! of known size by the bytes sent of that size. Reading runs ahead of sending by what the pipeline holds
//! (compression blocks, the block queue, one upload chunk: a few MiB), so a layer's bar reaches 100% a
//! little before its last chunk is sent; the bytes sent and the rate are the upload's own.

use std::time::Duration;

use crate::walk::Size;

/// What a blob is, for its name on the display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A layer (ours from the context, a base's, or one copied from a layout).
    Layer,
    /// Layer `i` of `n` of a context split with `--layer`.
    LayerPart(usize, usize),
    Config,
    /// A platform's manifest, which an index names.
    Manifest,
}

/// How much there is to transfer, as far as it is known before the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    Unknown,
    /// A blob of known size: progress is bytes sent of it.
    Bytes(u64),
    /// A layer written from a context: progress is the context read, of what a stat walk found.
    Context(Size),
}

/// The display's vocabulary: a push speaks docker's words, a build writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Words {
    Push,
    Write,
}

impl Words {
    pub fn moving(self) -> &'static str {
        match self {
            Words::Push => "Pushing",
            Words::Write => "Writing",
        }
    }

    pub fn sent(self) -> &'static str {
        match self {
            Words::Push => "Pushed",
            Words::Write => "Written",
        }
    }

    /// What the moved bytes are called (`80.1 MB sent`).
    pub fn moved(self) -> &'static str {
        match self {
            Words::Push => "sent",
            Words::Write => "written",
        }
    }

    pub fn present(self, what: What) -> &'static str {
        match (self, what) {
            (Words::Push, What::Layer | What::LayerPart(..)) => "Layer already exists",
            (Words::Push, _) => "Already exists",
            (Words::Write, _) => "Already stored",
        }
    }
}

/// How a blob ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Its bytes were sent (`size` of them).
    Sent(u64),
    Present,
    Mounted(String),
    /// It stopped before the end (an error, a cancel, a lost upload session).
    Interrupted,
}

/// What one blob has done so far.
#[derive(Debug, Clone)]
pub struct Counts {
    pub total: Total,
    /// Context bytes and regular files read (a directory layer).
    pub read: Size,
    /// Bytes handed to the sink.
    pub sent: u64,
    pub elapsed: Duration,
}

impl Counts {
    /// The fraction done, when there is a total to measure against.
    fn fraction(&self) -> Option<f64> {
        let (done, total) = match self.total {
            Total::Unknown => return None,
            Total::Bytes(t) => (self.sent, t),
            Total::Context(s) => (self.read.bytes, s.bytes),
        };
        if total == 0 {
            return Some(1.0);
        }
        Some((done as f64 / total as f64).min(1.0))
    }

    /// Sent bytes per second, once there is enough time to say.
    fn rate(&self) -> Option<u64> {
        let secs = self.elapsed.as_secs_f64();
        (secs >= 0.5).then(|| (self.sent as f64 / secs) as u64)
    }

    /// Time left at the pace so far.
    fn eta(&self) -> Option<Duration> {
        let f = self.fraction()?;
        let secs = self.elapsed.as_secs_f64();
        if f <= 0.0 || f >= 1.0 || secs < 1.0 {
            return None;
        }
        Some(Duration::from_secs_f64(secs * (1.0 - f) / f))
    }

    /// `83.7 MB / 190.6 MB` (what the fraction is measured in), or the bytes sent without a total.
    fn amounts(&self) -> String {
        match self.total {
            Total::Unknown => human(self.sent),
            Total::Bytes(t) => format!("{} / {}", human(self.sent.min(t)), human(t)),
            Total::Context(s) => format!("{} / {}", human(self.read.bytes.min(s.bytes)), human(s.bytes)),
        }
    }

    fn files(&self) -> Option<String> {
        match self.total {
            Total::Context(s) => Some(format!("{}/{} files", self.read.files.min(s.files), s.files)),
            _ => None,
        }
    }
}

/// A terminal row for a blob on its way, at most `width - 1` characters.
pub fn live_row(name: &str, words: Words, c: &Counts, width: usize) -> String {
    let mut row = format!("{name}: {}", words.moving());
    if let Some(f) = c.fraction() {
        row.push_str(&format!(" {}", bar(f)));
    }
    row.push(' ');
    row.push_str(&c.amounts());
    // (priority, field) in the order they are shown; the most useful are kept when the row is narrow.
    let mut optional: Vec<(u8, String)> = Vec::new();
    if let Some(f) = c.fraction() {
        optional.push((0, format!("{}%", (f * 100.0).floor() as u32)));
    }
    optional.extend(c.files().map(|f| (3, f)));
    if matches!(c.total, Total::Context(_)) {
        optional.push((4, format!("{} {}", human(c.sent), words.moved())));
    }
    if let Some(r) = c.rate() {
        optional.push((2, format!("{}/s", human(r))));
    }
    if let Some(eta) = c.eta() {
        optional.push((1, format!("ETA {}", clock(eta))));
    }
    let room = width.saturating_sub(1);
    let mut used = row.chars().count();
    let mut keep = vec![false; optional.len()];
    let mut by_priority: Vec<usize> = (0..optional.len()).collect();
    by_priority.sort_by_key(|i| optional[*i].0);
    for i in by_priority {
        let len = 2 + optional[i].1.chars().count();
        if used + len <= room {
            used += len;
            keep[i] = true;
        }
    }
    for (i, (_, field)) in optional.iter().enumerate() {
        if keep[i] {
            row.push_str("  ");
            row.push_str(field);
        }
    }
    fit(&row, room)
}

/// A terminal row for a blob that is done: `NAME: STATE`, docker's words.
pub fn end_row(name: &str, words: Words, what: What, end: &End, width: usize) -> String {
    fit(&format!("{name}: {}", state(words, what, end)), width.saturating_sub(1))
}

fn state(words: Words, what: What, end: &End) -> String {
    match end {
        End::Sent(_) => words.sent().to_string(),
        End::Present => words.present(what).to_string(),
        End::Mounted(from) => format!("Mounted from {from}"),
        End::Interrupted => "Interrupted".to_string(),
    }
}

/// A log line for a blob that starts.
pub fn start_line(name: &str, words: Words, total: Total) -> String {
    match total {
        Total::Unknown => format!("{name}: {}", words.moving()),
        Total::Bytes(t) => format!("{name}: {} {}", words.moving(), human(t)),
        Total::Context(s) => {
            let files = if s.files == 1 { "file" } else { "files" };
            format!("{name}: {}, {} in {} {files} to read", words.moving(), human(s.bytes), s.files)
        }
    }
}

/// A log line for a blob on its way (the heartbeat).
pub fn heartbeat_line(name: &str, words: Words, c: &Counts) -> String {
    let mut line = format!("{name}: {}", c.amounts());
    if matches!(c.total, Total::Context(_)) {
        line.push_str(" read");
    }
    if let Some(f) = c.fraction() {
        line.push_str(&format!(" ({}%)", (f * 100.0).floor() as u32));
    }
    if let Some(files) = c.files() {
        line.push_str(&format!(", {files}"));
    }
    if !matches!(c.total, Total::Bytes(_)) {
        line.push_str(&format!(", {} {}", human(c.sent), words.moved()));
    }
    if let Some(r) = c.rate() {
        line.push_str(&format!(" at {}/s", human(r)));
    }
    if let Some(eta) = c.eta() {
        line.push_str(&format!(", ETA {}", clock(eta)));
    }
    line
}

/// A log line for a blob that is done (with its time, unless it took none: a config's one request).
pub fn end_line(name: &str, words: Words, what: What, end: &End, c: &Counts) -> String {
    let secs = c.elapsed.as_secs_f64();
    let time = if secs < 0.05 { String::new() } else { format!(" in {secs:.1}s") };
    match end {
        End::Sent(size) => format!("{name}: {} {}{time}", words.sent(), human(*size)),
        End::Interrupted => format!("{name}: Interrupted after {} {}{time}", human(c.sent), words.moved()),
        other => format!("{name}: {}", state(words, what, other)),
    }
}

/// `[=====>      ]`: docker's bar, narrower (docker's takes 50 columns), so the numbers fit 80.
fn bar(fraction: f64) -> String {
    const WIDTH: usize = 12;
    let filled = ((fraction * WIDTH as f64) as usize).min(WIDTH);
    let mut s = String::with_capacity(WIDTH + 2);
    s.push('[');
    for i in 0..WIDTH {
        s.push(match i.cmp(&filled) {
            std::cmp::Ordering::Less => '=',
            std::cmp::Ordering::Equal => '>',
            std::cmp::Ordering::Greater => ' ',
        });
    }
    s.push(']');
    s
}

/// `45s`, `3m05s`, `2h01m`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// `s` cut to `max` characters.
fn fit(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => s[..at].to_string(),
        None => s.to_string(),
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

/// How long ago something happened, `secs` seconds back, in `docker images`' words ("3 minutes ago").
pub fn ago(secs: u64) -> String {
    let (minutes, hours) = (secs / 60, (secs + 1800) / 3600);
    let span = match secs {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        2..60 => format!("{secs} seconds"),
        _ if minutes == 1 => "About a minute".to_string(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".to_string(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", secs / 3600 / 24 / 365),
    };
    format!("{span} ago")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(read: u64, files: u64, sent: u64, secs: u64) -> Counts {
        Counts {
            total: Total::Context(Size { bytes: 190_600_000, files: 1000 }),
            read: Size { bytes: read, files },
            sent,
            elapsed: Duration::from_secs(secs),
        }
    }

    #[test]
    fn ages_read_like_docker_images() {
        let cases = [
            (0, "Less than a second ago"),
            (1, "1 second ago"),
            (59, "59 seconds ago"),
            (60, "About a minute ago"),
            (3 * 60 + 5, "3 minutes ago"),
            (3599, "59 minutes ago"),
            (3600, "About an hour ago"),
            (5 * 3600, "5 hours ago"),
            (3 * 86_400, "3 days ago"),
            (20 * 86_400, "2 weeks ago"),
            (90 * 86_400, "3 months ago"),
            (3 * 365 * 86_400, "3 years ago"),
        ];
        for (secs, want) in cases {
            assert_eq!(ago(secs), want, "{secs} s");
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_500), "1.5 kB");
        assert_eq!(human(20_000_000), "20.0 MB");
    }

    #[test]
    fn a_context_row_shows_read_of_total_files_percent_sent_rate_and_eta() {
        let c = context(83_700_000, 412, 80_000_000, 2);
        let row = live_row("layer", Words::Push, &c, 200);
        assert_eq!(
            row,
            "layer: Pushing [=====>      ] 83.7 MB / 190.6 MB  43%  412/1000 files  80.0 MB sent  40.0 MB/s  ETA 2s"
        );
        // A narrower terminal keeps the percentage, the ETA and the rate first, never drops the totals, and
        // never wraps.
        let narrow = live_row("layer", Words::Push, &c, 80);
        assert_eq!(narrow, "layer: Pushing [=====>      ] 83.7 MB / 190.6 MB  43%  40.0 MB/s  ETA 2s");
        let narrower = live_row("layer", Words::Push, &c, 64);
        assert_eq!(narrower, "layer: Pushing [=====>      ] 83.7 MB / 190.6 MB  43%  ETA 2s");
        assert!(live_row("layer", Words::Push, &c, 20).chars().count() <= 19);
    }

    #[test]
    fn a_blob_of_known_size_shows_sent_of_total() {
        let c = Counts {
            total: Total::Bytes(4_000_000),
            read: Size::default(),
            sent: 1_000_000,
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(
            live_row("3f2a1b4c5d6e", Words::Push, &c, 120),
            "3f2a1b4c5d6e: Pushing [===>        ] 1.0 MB / 4.0 MB  25%  1.0 MB/s  ETA 3s"
        );
        assert_eq!(
            heartbeat_line("3f2a1b4c5d6e", Words::Push, &c),
            "3f2a1b4c5d6e: 1.0 MB / 4.0 MB (25%) at 1.0 MB/s, ETA 3s"
        );
        assert_eq!(start_line("3f2a1b4c5d6e", Words::Push, c.total), "3f2a1b4c5d6e: Pushing 4.0 MB");
    }

    #[test]
    fn log_lines_say_the_same_in_sentences() {
        let total = Total::Context(Size { bytes: 8_400_000, files: 9 });
        assert_eq!(start_line("layer", Words::Push, total), "layer: Pushing, 8.4 MB in 9 files to read");
        let c = context(83_700_000, 412, 80_000_000, 2);
        assert_eq!(
            heartbeat_line("layer", Words::Push, &c),
            "layer: 83.7 MB / 190.6 MB read (43%), 412/1000 files, 80.0 MB sent at 40.0 MB/s, ETA 2s"
        );
        let config = Counts { elapsed: Duration::ZERO, ..c.clone() };
        assert_eq!(
            end_line("config 9c8d", Words::Push, What::Config, &End::Sent(351), &config),
            "config 9c8d: Pushed 351 B"
        );
        let done = End::Sent(190_000_000);
        assert_eq!(
            end_line("layer 3f2a1b4c5d6e", Words::Push, What::Layer, &done, &c),
            "layer 3f2a1b4c5d6e: Pushed 190.0 MB in 2.0s"
        );
    }

    #[test]
    fn end_rows_are_docker_states() {
        let row = |what, end: &End| end_row("3f2a1b4c5d6e", Words::Push, what, end, 80);
        assert_eq!(row(What::Layer, &End::Sent(1)), "3f2a1b4c5d6e: Pushed");
        assert_eq!(row(What::Layer, &End::Present), "3f2a1b4c5d6e: Layer already exists");
        assert_eq!(row(What::Config, &End::Present), "3f2a1b4c5d6e: Already exists");
        assert_eq!(row(What::Layer, &End::Mounted("ns/first".into())), "3f2a1b4c5d6e: Mounted from ns/first");
        assert_eq!(end_row("x", Words::Write, What::Layer, &End::Sent(1), 80), "x: Written");
    }

    #[test]
    fn bar_and_clock() {
        assert_eq!(bar(0.0), "[>           ]");
        assert_eq!(bar(0.5), "[======>     ]");
        assert_eq!(bar(1.0), "[============]");
        assert_eq!(clock(Duration::from_secs(59)), "59s");
        assert_eq!(clock(Duration::from_secs(185)), "3m05s");
        assert_eq!(clock(Duration::from_secs(7260)), "2h01m");
    }

    #[test]
    fn an_empty_total_is_done_and_overruns_are_clamped() {
        let empty =
            Counts { total: Total::Context(Size::default()), read: Size::default(), sent: 20, elapsed: Duration::ZERO };
        assert_eq!(empty.fraction(), Some(1.0));
        let over = Counts { total: Total::Bytes(10), read: Size::default(), sent: 15, elapsed: Duration::ZERO };
        assert_eq!(over.amounts(), "10 B / 10 B");
        assert_eq!(over.fraction(), Some(1.0));
    }
}
