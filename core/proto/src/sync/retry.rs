//! When a device tries again: jittered, capped exponential backoff within a round's deadline.
//!
//! In the field every phone loses its signal at once and gets it back at once (a bus leaves
//! the tunnel, a village's mast comes back): retrying on a fixed schedule would make them all
//! reconnect in the same instant. The delay doubles from `first` up to `cap`, and each wait is
//! drawn uniformly from its upper half, so phones spread out while none waits much longer
//! than the signal stayed away. The caller passes the time and the random draw in: no clock
//! and no RNG here, so the schedule is tested exactly.

use std::time::Duration;

/// The retry schedule of one round or enrollment.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    deadline: Duration,
    failures: u32,
}

impl Backoff {
    /// A schedule starting at `first`, doubling up to `cap`, giving up at `deadline` (measured
    /// from the round's start).
    pub fn new(first: Duration, cap: Duration, deadline: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            deadline,
            failures: 0,
        }
    }

    /// The schedule the field client uses: 0.5 s, doubling up to 8 s, until `deadline`.
    pub fn field(deadline: Duration) -> Backoff {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(8), deadline)
    }

    /// How long to wait before the next attempt after a failure at `elapsed` since the start,
    /// with `draw` uniform in [0, 1); None when the deadline leaves no time to try again.
    pub fn next_delay(&mut self, elapsed: Duration, draw: f64) -> Option<Duration> {
        let step = self
            .first
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.cap);
        self.failures = self.failures.saturating_add(1);
        let draw = draw.clamp(0.0, 1.0);
        let delay = step.mul_f64(0.5 + draw / 2.0);
        let left = self.deadline.checked_sub(elapsed)?;
        (delay < left).then_some(delay)
    }

    /// Failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Time left before the deadline at `elapsed` since the start.
    pub fn remaining(&self, elapsed: Duration) -> Duration {
        self.deadline.saturating_sub(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn delays_double_up_to_the_cap_within_their_upper_half() {
        let mut b = Backoff::new(MS(500), MS(4000), Duration::from_secs(600));
        let mut lowest = Vec::new();
        let mut highest = Vec::new();
        for _ in 0..6 {
            let mut low = b.clone();
            lowest.push(low.next_delay(Duration::ZERO, 0.0));
            highest.push(
                b.next_delay(Duration::ZERO, 0.999_999)
                    .map(|d| d.as_millis()),
            );
        }
        assert_eq!(
            lowest,
            [250, 500, 1000, 2000, 2000, 2000].map(|m| Some(MS(m)))
        );
        assert_eq!(highest, [499, 999, 1999, 3999, 3999, 3999].map(Some));
        assert_eq!(b.failures(), 6);
    }

    #[test]
    fn no_retry_that_would_end_past_the_deadline() {
        let mut b = Backoff::new(MS(1000), MS(8000), MS(10_000));
        assert_eq!(b.next_delay(MS(9_000), 0.0), Some(MS(500)));
        assert_eq!(b.next_delay(MS(9_000), 0.0), None, "1 s wait, 1 s left");
        assert_eq!(b.next_delay(MS(12_000), 0.0), None, "past the deadline");
        assert_eq!(b.remaining(MS(4_000)), MS(6_000));
        assert_eq!(b.remaining(MS(12_000)), Duration::ZERO);
    }

    #[test]
    fn draws_outside_the_unit_range_are_clamped() {
        let mut b = Backoff::new(MS(1000), MS(1000), MS(60_000));
        assert_eq!(b.next_delay(Duration::ZERO, -3.0), Some(MS(500)));
        assert_eq!(b.next_delay(Duration::ZERO, 7.0), Some(MS(1000)));
    }
}
