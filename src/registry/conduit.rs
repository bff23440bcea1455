//! A bounded, closable byte channel between two threads: a `Write` end and a `Read` end.
//!
//! It carries a streamed request body from its producer to the thread that sends it, and a streamed
//! response body from the thread that receives it to its consumer. Unlike an OS pipe, a third party can
//! close it ([`Closer`]): when the exchange layer abandons a request (deadline, Ctrl-C), it closes the
//! conduit and a producer blocked on a full buffer gets `BrokenPipe` at once instead of waiting forever on
//! a thread nobody will ever read from again. Memory is bounded by `cap` bytes plus one block.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::signal::Cancel;

#[derive(Default)]
struct State {
    blocks: VecDeque<Vec<u8>>,
    queued: usize,
    /// The writer is done (dropped); `failed` says whether it ended badly.
    writer_done: bool,
    failed: Option<String>,
    /// The reader is gone, or someone closed the conduit: writes fail.
    closed: bool,
    /// The writer failed before the other end went away: its error is the cause of whatever followed.
    writer_failed_first: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    cap: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Makes a conduit holding at most `cap` bytes in flight.
pub fn conduit(cap: usize) -> (Writer, Reader) {
    let shared = Arc::new(Shared { state: Mutex::new(State::default()), cv: Condvar::new(), cap: cap.max(1) });
    (Writer { shared: Arc::clone(&shared) }, Reader { shared, current: Vec::new(), pos: 0, idle: None, cancel: None })
}

/// The producing end. Dropping it ends the stream.
pub struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// A handle that closes the conduit from anywhere.
    pub fn closer(&self) -> Closer {
        Closer { shared: Arc::clone(&self.shared) }
    }

    /// Ends the stream with an error the reader will see.
    pub fn fail(self, message: String) {
        let mut st = self.shared.lock();
        st.writer_failed_first = !st.closed;
        st.failed = Some(message);
        drop(st);
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut st = self.shared.lock();
        while st.queued >= self.shared.cap && !st.closed {
            st = self.shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the other end stopped"));
        }
        st.blocks.push_back(buf.to_vec());
        st.queued += buf.len();
        self.shared.cv.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.writer_done = true;
        self.shared.cv.notify_all();
    }
}

/// Closes a conduit: the writer's next (or blocked) write fails, the reader sees the end.
#[derive(Clone)]
pub struct Closer {
    shared: Arc<Shared>,
}

impl Closer {
    /// Whether the writer failed on its own, before the reading side went away.
    pub fn writer_failed_first(&self) -> bool {
        self.shared.lock().writer_failed_first
    }

    pub fn close(&self) {
        let mut st = self.shared.lock();
        st.closed = true;
        self.shared.cv.notify_all();
    }
}

/// The consuming end. Dropping it makes the writer's writes fail.
pub struct Reader {
    shared: Arc<Shared>,
    current: Vec<u8>,
    pos: usize,
    /// The longest a read may wait for data.
    idle: Option<Duration>,
    cancel: Option<Cancel>,
}

impl Reader {
    /// Reads give up after waiting `idle` for data, or when `cancel` is set.
    pub fn bounded(mut self, idle: Duration, cancel: Cancel) -> Reader {
        self.idle = Some(idle);
        self.cancel = Some(cancel);
        self
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.current.len() {
            let started = Instant::now();
            let mut st = self.shared.lock();
            loop {
                if let Some(block) = st.blocks.pop_front() {
                    st.queued -= block.len();
                    self.shared.cv.notify_all();
                    self.current = block;
                    self.pos = 0;
                    break;
                }
                if st.writer_done || st.closed {
                    return match st.failed.clone() {
                        Some(m) => Err(io::Error::other(m)),
                        None => Ok(0),
                    };
                }
                if self.cancel.as_ref().is_some_and(Cancel::is_cancelled) {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
                }
                if let Some(idle) = self.idle
                    && started.elapsed() >= idle
                {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no data for {}s", idle.as_secs_f64().round()),
                    ));
                }
                st = self.shared.cv.wait_timeout(st, Duration::from_millis(20)).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.closed = true;
        st.blocks.clear();
        st.queued = 0;
        self.shared.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_flow_in_order_and_the_writer_is_held_at_the_cap() {
        let (mut w, mut r) = conduit(8);
        let t = std::thread::spawn(move || {
            for i in 0..100u8 {
                w.write_all(&[i; 5]).unwrap();
            }
        });
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        t.join().unwrap();
        assert_eq!(all.len(), 500);
        assert!(all.chunks(5).enumerate().all(|(i, c)| c.iter().all(|b| *b as usize == i)));
    }

    #[test]
    fn closing_unblocks_a_writer_waiting_on_a_full_conduit() {
        let (mut w, r) = conduit(4);
        let closer = w.closer();
        let t = std::thread::spawn(move || {
            let mut result = Ok(());
            for _ in 0..10 {
                result = w.write_all(b"abcd");
                if result.is_err() {
                    break;
                }
            }
            result
        });
        std::thread::sleep(Duration::from_millis(50));
        closer.close();
        let err = t.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        drop(r);
    }

    #[test]
    fn an_idle_reader_times_out_and_a_failed_writer_is_an_error() {
        let (w, r) = conduit(4);
        let mut r = r.bounded(Duration::from_millis(50), Cancel::new());
        let mut buf = [0u8; 4];
        assert_eq!(r.read(&mut buf).unwrap_err().kind(), io::ErrorKind::TimedOut);
        let closer = w.closer();
        w.fail("boom".into());
        assert_eq!(r.read(&mut buf).unwrap_err().to_string(), "boom");
        assert!(closer.writer_failed_first());
        // A writer that fails because the reader left is not the cause.
        let (w, r) = conduit(4);
        let closer = w.closer();
        drop(r);
        w.fail("broken pipe".into());
        assert!(!closer.writer_failed_first());
    }
}
