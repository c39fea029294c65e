//! Crash-loop back-off: a container that keeps failing waits longer before each restart
//! (Kubernetes: 10 s doubling to 300 s), and the wait starts over once it has run cleanly for a
//! while (10 minutes). Configurable so that tests can run the real Engine with a short curve.

use std::time::Duration;

use tokio::time::Instant;

/// The curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A container that ran this long before failing starts the curve over.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The wait before the restart that follows `streak` earlier back-offs.
    pub fn delay(&self, streak: u32) -> Duration {
        let factor = 1u32.checked_shl(streak.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// The back-off state of one container (or one image pull).
#[derive(Clone, Debug, Default)]
pub struct Streak {
    count: u32,
    until: Option<Instant>,
    /// The length of the wait in progress.
    wait: Duration,
}

impl Streak {
    /// Records a failure after a run of `ran_for`; returns when the next attempt may start.
    pub fn failed(&mut self, curve: &Backoff, ran_for: Duration, now: Instant) -> Instant {
        self.start_over_after(curve, ran_for);
        self.wait_for(curve.delay(self.count), now)
    }

    /// Records a container that exited, as the kubelet counts restarts: the first exit (of a
    /// streak) is restarted at once, the next after the curve's first wait, and so on.
    pub fn crashed(&mut self, curve: &Backoff, ran_for: Duration, now: Instant) -> Instant {
        self.start_over_after(curve, ran_for);
        let wait = match self.count {
            0 => Duration::ZERO,
            n => curve.delay(n - 1),
        };
        self.wait_for(wait, now)
    }

    /// A clean run of the curve's reset time starts the streak over.
    fn start_over_after(&mut self, curve: &Backoff, ran_for: Duration) {
        if ran_for >= curve.reset_after {
            self.count = 0;
        }
    }

    fn wait_for(&mut self, wait: Duration, now: Instant) -> Instant {
        let until = now + wait;
        self.count = self.count.saturating_add(1);
        self.until = Some(until);
        self.wait = wait;
        until
    }

    /// Whether the wait is over (or there is none).
    pub fn ready(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| now >= u)
    }

    /// When the current wait ends.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// The length of the wait in progress, for messages (`back-off 20s restarting ...`).
    pub fn current(&self) -> Duration {
        self.wait
    }

    pub fn reset(&mut self) {
        *self = Streak::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The waits (seconds) of `n` failures in a row, each after a one-second run, waiting
    /// each out in paused time.
    async fn waits(s: &mut Streak, n: usize, fail: fn(&mut Streak, &Backoff, Duration, Instant) -> Instant) -> Vec<u64> {
        let curve = Backoff::default();
        let mut waits = Vec::new();
        for _ in 0..n {
            let now = Instant::now();
            let until = fail(s, &curve, Duration::from_secs(1), now);
            assert!(!s.ready(now) || until == now);
            tokio::time::advance(until - now).await;
            assert!(s.ready(Instant::now()));
            waits.push((until - now).as_secs());
        }
        waits
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_curve_doubles_from_10s_to_300s_and_resets_after_10_minutes() {
        let curve = Backoff::default();
        let mut s = Streak::default();
        let waits = waits(&mut s, 8, Streak::failed).await;
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(s.current(), Duration::from_secs(300));
        // Ten minutes of clean running start the curve over.
        let now = Instant::now();
        let until = s.failed(&curve, Duration::from_secs(600), now);
        assert_eq!(until - now, Duration::from_secs(10));
    }

    #[test]
    fn a_short_curve_for_tests() {
        let curve = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            reset_after: Duration::from_secs(60),
        };
        assert_eq!(
            (0..5).map(|n| curve.delay(n).as_millis()).collect::<Vec<_>>(),
            [100, 200, 400, 400, 400]
        );
        assert_eq!(curve.delay(1000), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_exit_restarts_at_once_and_the_next_ones_back_off() {
        let curve = Backoff::default();
        let mut s = Streak::default();
        assert_eq!(waits(&mut s, 5, Streak::crashed).await, [0, 10, 20, 40, 80]);
        // A clean run of ten minutes: the next exit is restarted at once again.
        let now = Instant::now();
        assert_eq!(s.crashed(&curve, Duration::from_secs(600), now), now);
    }
}
