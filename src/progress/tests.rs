use super::*;

/// Everything the display wrote, shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn terminal() -> (Progress, Captured) {
    let out = Captured::default();
    (Progress::with_mode(Mode::Terminal { width: || Some(100) }, Box::new(out.clone())), out)
}

fn log() -> (Progress, Captured) {
    let out = Captured::default();
    (Progress::with_mode(Mode::Log, Box::new(out.clone())), out)
}

/// The screen a terminal shows after `text`: `\r`, `\n`, `ESC[2K` and `ESC[nA` applied.
fn screen(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = vec![String::new()];
    let mut row = 0;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("\x1b[2K") {
            lines[row].clear();
            rest = after;
            continue;
        }
        if let Some(after) = rest.strip_prefix("\x1b[") {
            let n: String = after.chars().take_while(char::is_ascii_digit).collect();
            assert!(after[n.len()..].starts_with('A'), "only cursor-up is used: {rest:?}");
            row -= n.parse::<usize>().unwrap();
            rest = &after[n.len() + 1..];
            continue;
        }
        match c {
            '\r' => {}
            '\n' => {
                row += 1;
                if lines.len() <= row {
                    lines.push(String::new());
                }
            }
            c => lines[row].push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    assert!(lines[row].is_empty(), "the cursor rests at the start of an empty line: {text:?}");
    lines.pop();
    lines
}

fn digest(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

#[test]
fn a_terminal_gets_one_row_per_blob_redrawn_in_place() {
    let (mut p, out) = terminal();
    let layer = p.start(What::Layer, None, Total::Context(Size { bytes: 3_000_000, files: 3 }));
    layer.read(1_000_000, 1);
    layer.sent(900_000);
    let d = digest("layer");
    p.finish(&layer, &d, 2_900_000, &BlobOutcome::Sent);
    p.stored(What::Config, &digest("config"), 500, &BlobOutcome::Sent);
    p.tagged("1", &digest("manifest"), 528);
    let text = out.text();
    let shown = screen(&text);
    assert_eq!(
        shown,
        [
            format!("{}: Pushed", short(&d)),
            format!("config {}: Pushed", short(&digest("config"))),
            format!("1: digest: {} size: 528", digest("manifest")),
        ],
        "{text:?}"
    );
    assert!(text.contains("3.0 MB"), "the total was drawn: {text:?}");
}

#[test]
fn a_note_goes_above_the_moving_rows_and_nothing_is_left_half_drawn() {
    let (mut p, out) = terminal();
    let first = p.start(What::Layer, Some(&digest("a")), Total::Bytes(1000));
    let second = p.start(What::Layer, Some(&digest("b")), Total::Bytes(2000));
    p.note("retrying in 0.8s (attempt 2/6): connection refused");
    second.sent(2000);
    p.finish(&second, &digest("b"), 2000, &BlobOutcome::Sent);
    first.sent(10);
    p.notices().line("another notice");
    drop(p);
    let shown = screen(&out.text());
    assert_eq!(
        shown,
        [
            "retrying in 0.8s (attempt 2/6): connection refused".to_string(),
            "another notice".to_string(),
            format!("{}: Interrupted", short(&digest("a"))),
            format!("{}: Pushed", short(&digest("b"))),
        ],
        "{:?}",
        out.text()
    );
}

#[test]
fn rows_are_redrawn_at_most_ten_times_a_second() {
    let (mut p, out) = terminal();
    let meter = p.start(What::Layer, None, Total::Bytes(1_000_000));
    let before = out.text().len();
    for _ in 0..1000 {
        meter.sent(1);
    }
    // All within far less than 100 ms of the first draw.
    assert_eq!(out.text().len(), before, "no redraw yet: {:?}", out.text());
    let mut board = lock(&p.board);
    let later = board.last_draw.unwrap() + REDRAW;
    board.moved(meter.blob, later);
    drop(board);
    assert!(out.text().contains("1.0 kB / 1.0 MB"), "{:?}", out.text());
}

#[test]
fn a_log_gets_start_heartbeat_and_end_lines() {
    let (mut p, out) = log();
    let meter = p.start(What::Layer, None, Total::Context(Size { bytes: 8_000_000, files: 8 }));
    let t0 = lock(&p.board).blobs[0].started;
    {
        let mut board = lock(&p.board);
        board.blobs[0].read = Size { bytes: 2_000_000, files: 2 };
        board.blobs[0].sent = 1_900_000;
        board.moved(0, t0 + Duration::from_secs(1));
        board.moved(0, t0 + HEARTBEAT);
        board.moved(0, t0 + HEARTBEAT + Duration::from_secs(1));
    }
    p.finish(&meter, &digest("l"), 7_900_000, &BlobOutcome::Sent);
    p.stored(What::Layer, &digest("base"), 100, &BlobOutcome::Mounted("ns/first".into()));
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "layer: Pushing, 8.0 MB in 8 files to read");
    assert_eq!(lines[1], "layer: 2.0 MB / 8.0 MB read (25%), 2/8 files, 1.9 MB sent at 380.0 kB/s, ETA 15s");
    assert!(lines[2].starts_with(&format!("layer {}: Pushed 7.9 MB", short(&digest("l")))), "{text}");
    assert_eq!(lines[3], format!("{}: Mounted from ns/first", short(&digest("base"))));
    assert!(!text.contains('\r') && !text.contains('\x1b'), "{text:?}");
}

#[test]
fn quiet_shows_nothing_and_meters_outlive_the_display() {
    let out = Captured::default();
    let mut p = Progress::with_mode(Mode::Quiet, Box::new(out.clone()));
    let meter = p.start(What::Layer, None, Total::Unknown);
    meter.sent(5);
    p.note("note");
    p.warn("warning");
    p.notices().line("retry");
    drop(p);
    meter.sent(5);
    Meter::detached().sent(1);
    assert_eq!(out.text(), "");
}

#[test]
fn a_metered_reader_counts_from_its_first_byte() {
    let (mut p, _out) = log();
    let meter = p.start(What::Layer, None, Total::Bytes(10));
    let mut sink = Vec::new();
    std::io::copy(&mut meter.reader(&b"hello"[..]), &mut sink).unwrap();
    std::io::copy(&mut meter.reader(&b"hello world"[..]), &mut sink).unwrap();
    assert_eq!(lock(&p.board).blobs[0].sent, 11);
}

#[test]
fn control_characters_are_escaped_like_ls_b() {
    assert_eq!(escaped("plain name.txt"), "plain name.txt");
    assert_eq!(escaped("a\nb"), "a\\nb");
    assert_eq!(escaped("\u{1b}[2Jx"), "\\033[2Jx");
    assert_eq!(escaped("back\\slash\t"), "back\\\\slash\\t");
    assert_eq!(escaped("\u{7f}"), "\\177");
    assert_eq!(escaped("caf\u{e9}"), "caf\u{e9}");
}
