//! The one retry policy: every registry request path (ping, token, HEAD/GET, chunk PATCH, single PUT,
//! manifest PUT) retries through a [`Retrier`], as go-containerregistry's `retryTransport` is one decorator.
//!
//! A retry happens only for a transient failure ([`crate::error::Error::is_transient`]: a 408/429/5xx, a
//! refused or reset connection, a timeout; never a name that does not resolve, a TLS failure or a broken
//! protocol), within an attempt count and a time budget that is the whole operation's, measured from its
//! first attempt: `--timeout` bounds what the user waits for one operation, retries included. The delay is
//! the registry's `Retry-After` when it sends one (capped, so a registry cannot park us), else exponential
//! backoff with jitter in [50%, 100%]; a delay that would end past the budget is not waited for. Each retry
//! is announced on one stderr line (`retrying in 0.8s (attempt 2/6): connection refused`) unless `-q`, so
//! a slow run never looks hung. Time comes from a [`Clock`], so the policy is unit-tested on a fake one.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::signal::Cancel;

/// How hard to try before giving up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per operation, including the first.
    pub attempts: u32,
    /// Total time for one operation, retries included (`--timeout`).
    pub budget: Duration,
    /// First backoff delay; doubles per attempt up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            budget: Duration::from_secs(120),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry `n` (1 = the first retry), for a jitter draw in [0, 1).
    pub fn backoff(&self, n: u32, jitter: f64) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << n.clamp(1, 17).saturating_sub(1));
        exp.min(self.max_delay).mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }

    /// The longest `Retry-After` honoured.
    pub fn max_retry_after(&self) -> Duration {
        self.max_delay * 3
    }

    /// The wait before the next attempt after `attempt` attempts failed, `elapsed` into the operation, or
    /// `None` to give up.
    pub fn next_delay(
        &self,
        attempt: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempt >= self.attempts {
            return None;
        }
        let delay = match retry_after {
            Some(d) => d.min(self.max_retry_after()),
            None => self.backoff(attempt, jitter),
        };
        (elapsed + delay < self.budget).then_some(delay)
    }
}

/// Where a retrier's time comes from.
pub trait Clock {
    fn now(&self) -> Instant;
    /// Waits `d` unless cancelled.
    fn sleep(&self, d: Duration, cancel: &Cancel) -> Result<()>;
    /// A draw in [0, 1) for jitter.
    fn jitter(&self) -> f64;
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration, cancel: &Cancel) -> Result<()> {
        cancel.sleep(d)
    }

    fn jitter(&self) -> f64 {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        f64::from(nanos % 1000) / 1000.0
    }
}

/// One operation's retries: counts attempts, owns the deadline, waits and announces each retry.
pub struct Retrier<'a> {
    policy: &'a RetryPolicy,
    clock: &'a dyn Clock,
    started: Instant,
    deadline: Instant,
    attempt: u32,
}

impl<'a> Retrier<'a> {
    /// Starts an operation now; its deadline is the policy's budget from now, or `within` if earlier (an
    /// operation inside another, like a token request inside a push request, shares the outer deadline).
    pub fn start(policy: &'a RetryPolicy, clock: &'a dyn Clock, within: Option<Instant>) -> Retrier<'a> {
        let started = clock.now();
        let own = started + policy.budget;
        let deadline = within.map_or(own, |d| d.min(own));
        Retrier { policy, clock, started, deadline, attempt: 1 }
    }

    /// The attempt in progress (1-based).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the operation must be over.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// After a transient failure: waits, announcing it through `announce`, and returns true to try again;
    /// false when attempts or time are used up.
    pub fn again(
        &mut self,
        reason: &str,
        retry_after: Option<Duration>,
        cancel: &Cancel,
        announce: &mut dyn FnMut(&str),
    ) -> Result<bool> {
        let now = self.clock.now();
        let budget_left = self.deadline.saturating_duration_since(now);
        let elapsed = self.policy.budget.saturating_sub(budget_left).max(now.saturating_duration_since(self.started));
        let Some(delay) = self.policy.next_delay(self.attempt, elapsed, retry_after, self.clock.jitter()) else {
            return Ok(false);
        };
        if delay >= budget_left {
            return Ok(false);
        }
        self.attempt += 1;
        announce(&format!(
            "retrying in {:.1}s (attempt {}/{}): {}",
            delay.as_secs_f64(),
            self.attempt,
            self.policy.attempts,
            reason
        ));
        self.clock.sleep(delay, cancel)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A clock that only moves when slept on, with a fixed jitter draw.
    struct FakeClock {
        base: Instant,
        offset: Cell<Duration>,
        jitter: f64,
    }

    impl FakeClock {
        fn new(jitter: f64) -> FakeClock {
            FakeClock { base: Instant::now(), offset: Cell::new(Duration::ZERO), jitter }
        }
        fn elapsed(&self) -> Duration {
            self.offset.get()
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.base + self.offset.get()
        }
        fn sleep(&self, d: Duration, cancel: &Cancel) -> Result<()> {
            cancel.check()?;
            self.offset.set(self.offset.get() + d);
            Ok(())
        }
        fn jitter(&self) -> f64 {
            self.jitter
        }
    }

    fn policy(attempts: u32, budget_ms: u64) -> RetryPolicy {
        RetryPolicy {
            attempts,
            budget: Duration::from_millis(budget_ms),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }

    fn retries(p: &RetryPolicy, clock: &FakeClock, retry_after: Option<Duration>) -> Vec<String> {
        let mut lines = Vec::new();
        let mut r = Retrier::start(p, clock, None);
        while r.again("connection refused", retry_after, &Cancel::new(), &mut |l| lines.push(l.to_string())).unwrap() {}
        lines
    }

    #[test]
    fn backoff_doubles_with_jitter_between_half_and_full_and_is_capped() {
        let p = policy(10, 600_000);
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(100));
        assert_eq!(p.backoff(1, 0.999_999).as_millis(), 199);
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(400));
        assert_eq!(p.backoff(3, 0.0), Duration::from_millis(400));
        assert_eq!(p.backoff(30, 1.0), Duration::from_secs(10), "capped at max_delay");
        for j in [0.0, 0.25, 0.5, 0.75, 0.99] {
            let d = p.backoff(4, j);
            assert!(d >= Duration::from_millis(800) && d <= Duration::from_millis(1600), "{d:?}");
        }
    }

    #[test]
    fn attempts_bound_the_retries_and_each_is_announced() {
        let clock = FakeClock::new(0.5);
        let lines = retries(&policy(4, 600_000), &clock, None);
        assert_eq!(
            lines,
            [
                "retrying in 0.1s (attempt 2/4): connection refused",
                "retrying in 0.3s (attempt 3/4): connection refused",
                "retrying in 0.6s (attempt 4/4): connection refused",
            ]
        );
        assert_eq!(clock.elapsed(), Duration::from_millis(150 + 300 + 600));
    }

    #[test]
    fn the_budget_bounds_the_whole_operation() {
        let clock = FakeClock::new(1.0);
        // 200 + 400 + 800 = 1400 ms fits in 1.5 s; the next 1600 ms would not.
        let lines = retries(&policy(100, 1500), &clock, None);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(clock.elapsed() < Duration::from_millis(1500));
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let clock = FakeClock::new(0.0);
        let lines = retries(&policy(3, 600_000), &clock, Some(Duration::from_secs(2)));
        assert_eq!(lines[0], "retrying in 2.0s (attempt 2/3): connection refused");
        assert_eq!(clock.elapsed(), Duration::from_secs(4));
        let clock = FakeClock::new(0.0);
        let lines = retries(&policy(2, 600_000), &clock, Some(Duration::from_secs(3600)));
        assert_eq!(lines, ["retrying in 30.0s (attempt 2/2): connection refused"], "capped at 3 x max_delay");
        // A Retry-After past the budget is not waited for at all.
        let clock = FakeClock::new(0.0);
        assert!(retries(&policy(5, 1000), &clock, Some(Duration::from_secs(5))).is_empty());
        assert_eq!(clock.elapsed(), Duration::ZERO);
    }

    #[test]
    fn an_inner_operation_shares_the_outer_deadline() {
        let clock = FakeClock::new(1.0);
        let p = policy(100, 60_000);
        let outer = clock.now() + Duration::from_millis(700);
        let mut r = Retrier::start(&p, &clock, Some(outer));
        assert_eq!(r.deadline(), outer);
        let mut n = 0;
        while r.again("x", None, &Cancel::new(), &mut |_| n += 1).unwrap() {}
        assert_eq!(n, 2, "200 + 400 ms fit in 700 ms, 800 more do not");
    }

    #[test]
    fn a_cancelled_wait_is_an_error() {
        let clock = FakeClock::new(0.0);
        let p = policy(5, 60_000);
        let cancel = Cancel::new();
        cancel.cancel();
        let mut r = Retrier::start(&p, &clock, None);
        assert!(r.again("x", None, &cancel, &mut |_| {}).is_err());
    }
}
