//! Warnings that a client can cause (accept errors, refused webhooks) logged at a bounded rate,
//! so that no caller can flood the log.

use std::time::Duration;

use tokio::time::Instant;

/// A warning logged at most once per period, with the count of those suppressed meanwhile.
pub struct RateLimitedLog {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(period: Duration) -> RateLimitedLog {
        RateLimitedLog {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// Logs through `log` (given how many were suppressed since the last one), unless one was
    /// logged less than a period ago.
    pub fn warn(&mut self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < self.period) {
            self.suppressed += 1;
            return;
        }
        log(self.suppressed);
        self.suppressed = 0;
        self.last = Some(now);
    }
}
