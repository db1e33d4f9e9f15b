//! When has an install settled? When the watched directory saw no change for the quiet period and
//! the package manager's lock was free (a held lock counts as a change: rpm scriptlets still run).
//!
//! Pure state: the caller feeds it instants, so tests need no clock.

use std::time::{Duration, Instant};

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not settled yet: look again after at most this long.
    Wait(Duration),
    /// Quiet for the whole period: go ahead.
    Settled,
    /// Still changing after `max_wait`: give up on this cycle.
    GaveUp,
}

/// One settle cycle: from the first change of a release until it is quiet.
#[derive(Debug, Clone)]
pub struct Settle {
    quiet: Duration,
    max_wait: Duration,
    started: Instant,
    last_change: Instant,
    changes: u64,
}

impl Settle {
    /// A cycle that starts at `now`, as if a change had just been seen (we are started because of
    /// one, and changes before we watched are unknown).
    pub fn new(now: Instant, quiet: Duration, max_wait: Duration) -> Self {
        Settle {
            quiet,
            max_wait,
            started: now,
            last_change: now,
            changes: 0,
        }
    }

    /// Starts a new cycle at `now` (keeps the periods).
    pub fn restart(&mut self, now: Instant) {
        *self = Settle::new(now, self.quiet, self.max_wait);
    }

    /// Records a change at `now` (a filesystem event, or the package manager's lock seen held).
    /// An instant earlier than the last recorded change is ignored.
    pub fn change(&mut self, now: Instant) {
        if now > self.last_change {
            self.last_change = now;
        }
        self.changes += 1;
    }

    /// Changes recorded in this cycle.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// How long this cycle has been running at `now`.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// The verdict at `now`.
    pub fn verdict(&self, now: Instant) -> Verdict {
        let quiet_for = now.saturating_duration_since(self.last_change);
        if quiet_for >= self.quiet {
            return Verdict::Settled;
        }
        let elapsed = self.elapsed(now);
        if elapsed >= self.max_wait {
            return Verdict::GaveUp;
        }
        // Wake up when the quiet period would end, or at the give-up deadline, whichever is first.
        let until_quiet = self.quiet - quiet_for;
        let until_give_up = self.max_wait - elapsed;
        Verdict::Wait(until_quiet.min(until_give_up))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn settle(t0: Instant) -> Settle {
        Settle::new(t0, 1000 * MS, 10_000 * MS)
    }

    #[test]
    fn waits_the_quiet_period_from_start() {
        let t0 = Instant::now();
        let s = settle(t0);
        assert_eq!(s.verdict(t0), Verdict::Wait(1000 * MS));
        assert_eq!(s.verdict(t0 + 400 * MS), Verdict::Wait(600 * MS));
        assert_eq!(s.verdict(t0 + 1000 * MS), Verdict::Settled);
    }

    #[test]
    fn each_change_restarts_the_quiet_period() {
        let t0 = Instant::now();
        let mut s = settle(t0);
        // a 10,000-file install: a change every 0.5 ms for 5 s
        for i in 0..10_000u32 {
            let t = t0 + Duration::from_micros(500 * u64::from(i));
            s.change(t);
            assert!(matches!(s.verdict(t), Verdict::Wait(_)));
        }
        let last = t0 + Duration::from_micros(500 * 9_999);
        assert_eq!(s.changes(), 10_000);
        assert_eq!(s.verdict(last + 999 * MS), Verdict::Wait(MS));
        assert_eq!(s.verdict(last + 1000 * MS), Verdict::Settled);
    }

    #[test]
    fn out_of_order_instants_do_not_shorten_the_wait() {
        let t0 = Instant::now();
        let mut s = settle(t0);
        s.change(t0 + 800 * MS);
        s.change(t0 + 300 * MS); // an event processed late, stamped earlier
        assert_eq!(s.verdict(t0 + 1300 * MS), Verdict::Wait(500 * MS));
        assert_eq!(s.verdict(t0 + 1800 * MS), Verdict::Settled);
    }

    #[test]
    fn a_held_lock_counts_as_change_until_released() {
        // The engine records a change at every poll that finds the rpm lock held.
        let t0 = Instant::now();
        let mut s = settle(t0);
        let mut t = t0;
        for _ in 0..30 {
            t += 200 * MS; // lock held for 6 s, polled every 200 ms
            s.change(t);
            assert!(matches!(s.verdict(t), Verdict::Wait(_)));
        }
        assert!(matches!(s.verdict(t + 999 * MS), Verdict::Wait(_)));
        assert_eq!(s.verdict(t + 1000 * MS), Verdict::Settled);
    }

    #[test]
    fn gives_up_after_max_wait() {
        let t0 = Instant::now();
        let mut s = settle(t0);
        let mut t = t0;
        while t < t0 + 9_800 * MS {
            t += 100 * MS;
            s.change(t);
        }
        // last change at 9.8 s: the wait is cut to the 10 s deadline
        assert_eq!(s.verdict(t), Verdict::Wait(200 * MS));
        assert_eq!(s.verdict(t0 + 10_000 * MS), Verdict::GaveUp);
        // ... unless it did settle by then: quiet wins over the deadline
        let mut s2 = settle(t0);
        s2.change(t0 + 8_000 * MS);
        assert_eq!(s2.verdict(t0 + 10_000 * MS), Verdict::Settled);
    }

    #[test]
    fn zero_quiet_period_settles_at_once() {
        let t0 = Instant::now();
        let s = Settle::new(t0, Duration::ZERO, 10 * MS);
        assert_eq!(s.verdict(t0), Verdict::Settled);
    }

    #[test]
    fn restart_begins_a_new_cycle() {
        let t0 = Instant::now();
        let mut s = settle(t0);
        s.change(t0 + 500 * MS);
        let t1 = t0 + 20_000 * MS;
        assert_eq!(s.verdict(t1), Verdict::Settled);
        s.restart(t1);
        assert_eq!(s.changes(), 0);
        assert_eq!(s.verdict(t1), Verdict::Wait(1000 * MS));
        assert_eq!(s.elapsed(t1 + 5 * MS), 5 * MS);
    }
}
