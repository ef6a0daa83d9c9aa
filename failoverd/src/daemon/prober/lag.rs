//! How late probes start, daemon-wide: the evidence that the daemon probes slower than its
//! configs ask, which first-verdict deadlines stretch with.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

use super::lock;

/// Lateness is kept as the largest seen in the current window and in the one before, so a
/// figure lives between one and two windows after the overload that made it.
pub const WINDOW: Duration = Duration::from_secs(5);

/// The largest probe-start lateness of the last one to two [`WINDOW`]s.
///
/// A probe's lateness is the time from the slot it was due in (the previous start plus the
/// interval, or the jittered first slot) to its real start: timers firing late on a saturated
/// runtime, waits for a probe permit, slots skipped behind a slow probe. On a daemon that
/// keeps up it is about 0.
#[derive(Debug, Default)]
pub struct LagMeter(Mutex<Windows>);

#[derive(Debug, Default)]
struct Windows {
    /// When the current window started (`None` before the first record).
    since: Option<Instant>,
    current: Duration,
    previous: Duration,
}

impl Windows {
    /// Moves the windows on to `now`.
    fn roll(&mut self, now: Instant) {
        let Some(since) = self.since else { return };
        let age = now.saturating_duration_since(since);
        if age >= WINDOW * 2 {
            *self = Windows {
                since: Some(now),
                ..Windows::default()
            };
        } else if age >= WINDOW {
            self.previous = std::mem::take(&mut self.current);
            self.since = Some(since + WINDOW);
        }
    }
}

impl LagMeter {
    /// One probe started `late` after its slot, at `now`.
    pub fn record(&self, late: Duration, now: Instant) {
        let mut w = lock(&self.0);
        w.since.get_or_insert(now);
        w.roll(now);
        w.current = w.current.max(late);
    }

    /// The largest lateness recorded in the current and the previous window, as of `now`.
    pub fn get(&self, now: Instant) -> Duration {
        let mut w = lock(&self.0);
        w.roll(now);
        w.current.max(w.previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keeps_the_worst_lateness_for_one_to_two_windows() {
        let meter = LagMeter::default();
        let t0 = Instant::now();
        assert_eq!(meter.get(t0), Duration::ZERO);
        meter.record(Duration::from_millis(300), t0);
        meter.record(Duration::from_millis(100), t0 + Duration::from_secs(1));
        assert_eq!(
            meter.get(t0 + Duration::from_secs(1)),
            Duration::from_millis(300)
        );
        // The next window still remembers the last one.
        assert_eq!(meter.get(t0 + WINDOW), Duration::from_millis(300));
        meter.record(Duration::from_millis(50), t0 + WINDOW);
        // Two windows on, only the newer one counts.
        assert_eq!(meter.get(t0 + WINDOW * 2), Duration::from_millis(50));
        assert_eq!(meter.get(t0 + WINDOW * 4), Duration::ZERO);
    }
}
