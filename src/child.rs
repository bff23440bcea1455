//! Running helper programs (credential helpers, `idpbuilder`, `kubectl`) without trusting them.
//!
//! A helper is someone else's program: it may hang, print without end, or fail with a secret on stdout.
//! [`run`] therefore bounds it in time (the caller's deadline) and in output (each stream is read on its
//! own thread up to a cap; one more byte and the helper is killed), polls the [`Cancel`] so Ctrl-C stops
//! it at once, and starts it in its own process group so that killing it also kills whatever it started
//! (a shell script's `sleep`). The caller gets the output only when the helper exited within its bounds,
//! and decides itself what of it may be shown.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::signal::Cancel;

/// What a helper printed before it exited.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why a helper gave no usable answer.
#[derive(Debug)]
pub enum Failure {
    /// It could not be started.
    Spawn(std::io::Error),
    /// It was still running at the deadline; it was killed.
    TimedOut(Duration),
    /// It printed more than the cap on one stream; it was killed.
    TooLarge(usize),
    /// The run was cancelled; it was killed.
    Cancelled,
}

/// Limits for one helper run.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub deadline: Instant,
    /// Bytes allowed on stdout and on stderr each.
    pub max_output: usize,
}

/// Runs `cmd` with `stdin` as its input, within `bounds`, watching `cancel`.
pub fn run(cmd: &mut Command, stdin: &[u8], bounds: &Bounds, cancel: &Cancel) -> Result<Finished, Failure> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(Failure::Spawn)?;
    let pgid = child.id() as i32;
    let kill = |child: &mut std::process::Child| {
        // SAFETY: kill(2) with a negative pid signals the process group we created; no memory is shared.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
    };
    let max = bounds.max_output;
    let overflow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let overflow = std::sync::Arc::clone(&overflow);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(max as u64 + 1).read_to_end(&mut buf);
            }
            if buf.len() > max {
                overflow.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    if let Some(mut pipe) = child.stdin.take() {
        // Small inputs fit in the pipe buffer; a helper that exits without reading gives EPIPE, and its
        // exit status tells the story.
        let _ = pipe.write_all(stdin);
    }
    let status = loop {
        if overflow.load(std::sync::atomic::Ordering::SeqCst) {
            kill(&mut child);
            return Err(Failure::TooLarge(max));
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                kill(&mut child);
                return Err(Failure::Spawn(e));
            }
        }
        if cancel.is_cancelled() {
            kill(&mut child);
            return Err(Failure::Cancelled);
        }
        if Instant::now() >= bounds.deadline {
            kill(&mut child);
            return Err(Failure::TimedOut(started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The helper exited. Its streams end when the last process holding them does: give its children a
    // moment, then stop them (the group still exists while any of them runs, so its id is still ours).
    let linger = Instant::now() + Duration::from_millis(200);
    while !(out.is_finished() && err.is_finished()) && Instant::now() < linger {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !(out.is_finished() && err.is_finished()) {
        // SAFETY: as above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if stdout.len() > max || stderr.len() > max {
        return Err(Failure::TooLarge(max));
    }
    Ok(Finished { status, stdout, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(secs: u64) -> Bounds {
        Bounds { deadline: Instant::now() + Duration::from_secs(secs), max_output: 1024 }
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn an_answer_within_bounds_is_returned_with_its_input_read() {
        let done = run(&mut sh("read x; echo \"got $x\"; echo oops >&2"), b"hello\n", &bounds(10), &Cancel::new())
            .expect("runs");
        assert!(done.status.success());
        assert_eq!(String::from_utf8_lossy(&done.stdout), "got hello\n");
        assert_eq!(String::from_utf8_lossy(&done.stderr), "oops\n");
    }

    #[test]
    fn a_hanging_helper_and_its_children_are_killed_at_the_deadline() {
        let started = Instant::now();
        let mut b = bounds(0);
        b.deadline = Instant::now() + Duration::from_millis(300);
        let r = run(&mut sh("sleep 30; echo late"), b"", &b, &Cancel::new());
        assert!(matches!(r, Err(Failure::TimedOut(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }

    #[test]
    fn a_flood_is_cut_at_the_cap() {
        let started = Instant::now();
        let r = run(&mut sh("yes"), b"", &bounds(20), &Cancel::new());
        assert!(matches!(r, Err(Failure::TooLarge(1024))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn cancel_kills_the_helper() {
        let cancel = Cancel::new();
        let c2 = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            c2.cancel();
        });
        let started = Instant::now();
        let r = run(&mut sh("sleep 30"), b"", &bounds(20), &cancel);
        assert!(matches!(r, Err(Failure::Cancelled)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        t.join().unwrap();
    }

    #[test]
    fn a_child_left_holding_stdout_does_not_block_the_answer() {
        let started = Instant::now();
        let r = run(&mut sh("echo ok; sleep 30 &"), b"", &bounds(20), &Cancel::new()).expect("runs");
        assert_eq!(String::from_utf8_lossy(&r.stdout), "ok\n");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
