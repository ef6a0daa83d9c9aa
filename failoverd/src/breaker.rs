//! The circuit breaker: ejects a backend that keeps failing, for periods that grow while it keeps failing.
//!
//! In the spirit of Envoy's outlier ejection: `failures` consecutive failed
//! probes open the breaker for `open_for`, doubled for each ejection that has
//! not yet decayed, capped at `max_open_for`. When the period ends the breaker
//! half-opens; `rise` passes in a row close it, one failure re-opens it for
//! twice as long. Open and half-open both keep the backend out of traffic.
//!
//! Decay: once closed, each unbroken stretch of passes lasting `max_open_for`
//! forgives one ejection, so a backend that failed once long ago starts
//! again from `open_for`, while one that flaps keeps its long ejections.

use std::time::Duration;

use tokio::time::Instant;

/// How a breaker trips and recovers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerParams {
    /// Consecutive failures that open a closed breaker; a 0 counts as 1. Config default: 5.
    pub failures: u32,
    /// The first ejection's length. Config default: 10s.
    pub open_for: Duration,
    /// The longest ejection, and the healthy stretch that forgives one ejection. Config default: 5m.
    pub max_open_for: Duration,
    /// Consecutive passes that close a half-open breaker; a 0 counts as 1.
    /// The daemon passes the health check's `rise` (default 2).
    pub rise: u32,
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// The backend takes traffic (as far as the breaker is concerned).
    Closed,
    /// Ejected until `until`; probe results meanwhile change nothing.
    Open {
        /// When it half-opens.
        until: Instant,
    },
    /// On trial: still out of traffic, `passes` of the `rise` needed so far.
    HalfOpen {
        /// Consecutive passes since it half-opened.
        passes: u32,
    },
}

/// A transition worth logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerEvent {
    /// Closed or half-open → open.
    Opened {
        /// How long it stays open.
        for_: Duration,
        /// Ejections counted so far, this one included (after decay).
        ejections: u32,
    },
    /// Open → half-open: the open period is over.
    HalfOpened,
    /// Half-open → closed: the backend is readmitted.
    Closed,
}

/// One backend's circuit breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    params: BreakerParams,
    state: BreakerState,
    /// Consecutive failures while closed.
    failures: u32,
    /// Ejections not yet forgiven; sets the length of the next one.
    ejections: u32,
    /// Start of the current unbroken run of passes while closed.
    healthy_since: Option<Instant>,
}

impl Breaker {
    /// A closed breaker with no ejections.
    pub fn new(params: BreakerParams) -> Self {
        Breaker {
            params,
            state: BreakerState::Closed,
            failures: 0,
            ejections: 0,
            healthy_since: None,
        }
    }

    /// Where it stands.
    pub fn state(&self) -> &BreakerState {
        &self.state
    }

    /// Whether the backend is out of traffic: open or half-open.
    pub fn is_open(&self) -> bool {
        !matches!(self.state, BreakerState::Closed)
    }

    /// Ejections not yet forgiven by decay, the current one included.
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Feeds one probe result observed at `now`.
    ///
    /// `may_eject` is false when ejecting this backend would exceed its
    /// group's `max_ejected_percent` (see [`may_eject`]): the breaker then
    /// stays closed but keeps counting, and opens at the first failure after
    /// room is made. A half-open backend is already out of traffic, so its
    /// re-opening ignores `may_eject`.
    ///
    /// An open period that has ended is ended first (as [`Breaker::tick`]
    /// would) and the result then counts toward closing. When one call makes
    /// two transitions, the later one is returned.
    pub fn observe(&mut self, passed: bool, now: Instant, may_eject: bool) -> Option<BreakerEvent> {
        let ticked = self.tick(now);
        let observed = match self.state {
            BreakerState::Closed if passed => {
                self.pass_closed(now);
                None
            }
            BreakerState::Closed => {
                self.healthy_since = None;
                self.failures = self.failures.saturating_add(1);
                (self.failures >= self.params.failures.max(1) && may_eject).then(|| self.open(now))
            }
            // The backend is out and its period is not over: a pass now must
            // not cut the ejection short, a failure need not lengthen it.
            BreakerState::Open { .. } => None,
            BreakerState::HalfOpen { passes } if passed => {
                let passes = passes.saturating_add(1);
                if passes >= self.params.rise.max(1) {
                    self.state = BreakerState::Closed;
                    self.failures = 0;
                    self.healthy_since = Some(now);
                    Some(BreakerEvent::Closed)
                } else {
                    self.state = BreakerState::HalfOpen { passes };
                    None
                }
            }
            BreakerState::HalfOpen { .. } => Some(self.open(now)),
        };
        observed.or(ticked)
    }

    /// Half-opens an open breaker whose period ended by `now`; nothing else
    /// changes without an observation.
    pub fn tick(&mut self, now: Instant) -> Option<BreakerEvent> {
        match self.state {
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen { passes: 0 };
                Some(BreakerEvent::HalfOpened)
            }
            _ => None,
        }
    }

    /// When it next changes by itself (an open period's end), for scheduling [`Breaker::tick`].
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open { until } => Some(until),
            _ => None,
        }
    }

    /// A pass while closed: extends the healthy stretch and, every full
    /// `max_open_for` of it, forgives one ejection.
    fn pass_closed(&mut self, now: Instant) {
        self.failures = 0;
        let since = *self.healthy_since.get_or_insert(now);
        if self.ejections > 0 && now.saturating_duration_since(since) >= self.params.max_open_for {
            self.ejections -= 1;
            self.healthy_since = Some(now);
        }
    }

    fn open(&mut self, now: Instant) -> BreakerEvent {
        self.ejections = self.ejections.saturating_add(1);
        let for_ = self.open_period(self.ejections);
        // An absurd period (from hand-built params) must not panic the daemon;
        // thirty years is "until someone looks".
        let until = now
            .checked_add(for_)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400));
        self.state = BreakerState::Open { until };
        self.failures = 0;
        self.healthy_since = None;
        BreakerEvent::Opened {
            for_,
            ejections: self.ejections,
        }
    }

    /// `open_for × 2^(ejections − 1)`, capped at `max_open_for`.
    fn open_period(&self, ejections: u32) -> Duration {
        let doublings = ejections.saturating_sub(1).min(31);
        self.params
            .open_for
            .saturating_mul(1 << doublings)
            .min(self.params.max_open_for)
    }
}

/// Whether one more backend of a group may be ejected.
///
/// The ejected count after this one must stay within `max_percent` of
/// `group_size`, rounded down: `(currently_ejected + 1) × 100 ≤ group_size ×
/// max_percent`. So 2 backends at 50% allow 1 ejection, 10 at 10% allow 1,
/// and a lone backend allows none below 100% (unlike Envoy, which always
/// allows one: ejecting the last backend only turns a degraded service into
/// a refused one). `max_percent` above 100 counts as 100.
pub fn may_eject(group_size: usize, currently_ejected: usize, max_percent: u8) -> bool {
    let after = (currently_ejected as u128 + 1) * 100;
    after <= group_size as u128 * u128::from(max_percent.min(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn params() -> BreakerParams {
        BreakerParams {
            failures: 3,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(60),
            rise: 2,
        }
    }

    /// A breaker and the time its observations are made at, one second apart.
    struct Rig {
        breaker: Breaker,
        now: Instant,
    }

    impl Rig {
        fn new(params: BreakerParams) -> Self {
            Rig {
                breaker: Breaker::new(params),
                now: Instant::now(),
            }
        }

        fn observe(&mut self, passed: bool) -> Option<BreakerEvent> {
            self.now += SECOND;
            self.breaker.observe(passed, self.now, true)
        }

        /// Feeds `results` ("+" pass, "-" fail) and returns every event.
        fn feed(&mut self, results: &str) -> Vec<BreakerEvent> {
            results
                .chars()
                .filter_map(|c| self.observe(c == '+'))
                .collect()
        }

        /// Opens the breaker from closed with `failures` failures.
        fn trip(&mut self) -> BreakerEvent {
            let failures = "-".repeat(self.breaker.params.failures as usize);
            *self.feed(&failures).last().expect("no event")
        }

        /// Jumps to the end of the open period and half-opens.
        fn wait_out(&mut self) {
            self.now = self.breaker.next_deadline().expect("not open");
            assert_eq!(self.breaker.tick(self.now), Some(BreakerEvent::HalfOpened));
        }
    }

    fn opened(secs: u64, ejections: u32) -> BreakerEvent {
        BreakerEvent::Opened {
            for_: Duration::from_secs(secs),
            ejections,
        }
    }

    #[test]
    fn starts_closed_with_no_ejections() {
        let breaker = Breaker::new(params());
        assert_eq!(breaker.state(), &BreakerState::Closed);
        assert!(!breaker.is_open());
        assert_eq!(breaker.ejections(), 0);
        assert_eq!(breaker.next_deadline(), None);
    }

    #[test]
    fn opens_after_three_consecutive_failures() {
        let mut rig = Rig::new(params());
        assert!(rig.feed("--").is_empty());
        assert_eq!(rig.observe(false), Some(opened(10, 1)));
        assert!(rig.breaker.is_open());
        assert_eq!(
            rig.breaker.state(),
            &BreakerState::Open {
                until: rig.now + Duration::from_secs(10)
            }
        );
        assert_eq!(
            rig.breaker.next_deadline(),
            Some(rig.now + Duration::from_secs(10))
        );
    }

    #[test]
    fn a_pass_resets_the_failure_count() {
        let mut rig = Rig::new(params());
        assert!(rig.feed("--+--+--").is_empty());
        assert!(!rig.breaker.is_open());
    }

    #[test]
    fn stays_out_while_open_even_with_passes() {
        let mut rig = Rig::new(params());
        rig.trip();
        assert!(rig.feed(&"+".repeat(9)).is_empty());
        assert!(rig.breaker.is_open());
        assert!(matches!(rig.breaker.state(), BreakerState::Open { .. }));
    }

    #[test]
    fn half_opens_when_the_open_period_ends() {
        let mut rig = Rig::new(params());
        rig.trip();
        let until = rig.breaker.next_deadline().unwrap();
        assert_eq!(rig.breaker.tick(until - Duration::from_millis(1)), None);
        assert_eq!(rig.breaker.tick(until), Some(BreakerEvent::HalfOpened));
        assert_eq!(rig.breaker.state(), &BreakerState::HalfOpen { passes: 0 });
        assert!(
            rig.breaker.is_open(),
            "half-open still keeps the backend out"
        );
        assert_eq!(rig.breaker.next_deadline(), None);
    }

    #[test]
    fn closes_after_rise_passes_in_half_open() {
        let mut rig = Rig::new(params());
        rig.trip();
        rig.wait_out();
        assert_eq!(rig.observe(true), None);
        assert_eq!(rig.breaker.state(), &BreakerState::HalfOpen { passes: 1 });
        assert_eq!(rig.observe(true), Some(BreakerEvent::Closed));
        assert!(!rig.breaker.is_open());
        assert_eq!(
            rig.breaker.ejections(),
            1,
            "closing forgives nothing by itself"
        );
    }

    #[test]
    fn reopens_for_twice_as_long_on_a_half_open_failure() {
        let mut rig = Rig::new(params());
        assert_eq!(rig.trip(), opened(10, 1));
        rig.wait_out();
        assert_eq!(rig.feed("+-"), [opened(20, 2)]);
        rig.wait_out();
        assert_eq!(rig.feed("-"), [opened(40, 3)]);
    }

    #[test]
    fn open_period_is_capped_at_max_open_for() {
        let mut rig = Rig::new(params());
        rig.trip();
        let periods: Vec<Duration> = (0..6)
            .map(|_| {
                rig.wait_out();
                match rig.observe(false) {
                    Some(BreakerEvent::Opened { for_, .. }) => for_,
                    other => panic!("expected a re-open, got {other:?}"),
                }
            })
            .collect();
        let secs: Vec<u64> = periods.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [20, 40, 60, 60, 60, 60]);
    }

    #[test]
    fn an_observation_after_the_open_period_half_opens_and_counts() {
        let mut rig = Rig::new(BreakerParams {
            rise: 1,
            ..params()
        });
        rig.trip();
        let after = rig.breaker.next_deadline().unwrap() + SECOND;
        // No tick came in between: the pass both ends the period and closes.
        assert_eq!(
            rig.breaker.observe(true, after, true),
            Some(BreakerEvent::Closed)
        );

        let mut rig = Rig::new(params());
        rig.trip();
        let after = rig.breaker.next_deadline().unwrap() + SECOND;
        assert_eq!(
            rig.breaker.observe(true, after, true),
            Some(BreakerEvent::HalfOpened)
        );
        assert_eq!(rig.breaker.state(), &BreakerState::HalfOpen { passes: 1 });
    }

    #[test]
    fn stays_closed_when_the_group_cannot_spare_it_but_keeps_counting() {
        let mut breaker = Breaker::new(params());
        let mut now = Instant::now();
        for _ in 0..5 {
            now += SECOND;
            assert_eq!(breaker.observe(false, now, false), None);
        }
        assert!(!breaker.is_open());
        assert_eq!(breaker.ejections(), 0);
        // Room is made: the very next failure opens it, no new streak needed.
        now += SECOND;
        assert_eq!(breaker.observe(false, now, true), Some(opened(10, 1)));
    }

    #[test]
    fn a_half_open_failure_reopens_even_when_the_group_is_at_its_limit() {
        let mut rig = Rig::new(params());
        rig.trip();
        rig.wait_out();
        rig.now += SECOND;
        assert_eq!(
            rig.breaker.observe(false, rig.now, false),
            Some(opened(20, 2))
        );
    }

    #[test]
    fn ejections_decay_by_one_after_a_healthy_stretch_of_max_open_for() {
        let mut rig = Rig::new(params());
        rig.trip();
        rig.wait_out();
        rig.feed("-");
        rig.wait_out();
        assert_eq!(rig.feed("++"), [BreakerEvent::Closed]);
        assert_eq!(rig.breaker.ejections(), 2);

        // One probe a second: 59 passes after closing is 59s, short of 60s.
        rig.feed(&"+".repeat(59));
        assert_eq!(rig.breaker.ejections(), 2);
        rig.feed("+");
        assert_eq!(rig.breaker.ejections(), 1);
        rig.feed(&"+".repeat(60));
        assert_eq!(rig.breaker.ejections(), 0);
        // Forgiven: the next ejection is a first one again.
        assert_eq!(rig.trip(), opened(10, 1));
    }

    #[test]
    fn a_failure_restarts_the_healthy_stretch() {
        let mut rig = Rig::new(params());
        rig.trip();
        rig.wait_out();
        rig.feed("++");
        rig.feed(&"+".repeat(50));
        rig.feed("-");
        // The run restarts at the first pass after the failure: 61 passes
        // one second apart span 60s.
        rig.feed(&"+".repeat(60));
        assert_eq!(rig.breaker.ejections(), 1, "no 60s run of passes yet");
        rig.feed("+");
        assert_eq!(rig.breaker.ejections(), 0);
    }

    #[test]
    fn failing_again_soon_after_closing_ejects_for_longer() {
        let mut rig = Rig::new(params());
        assert_eq!(rig.trip(), opened(10, 1));
        rig.wait_out();
        rig.feed("++");
        rig.feed(&"+".repeat(20));
        assert_eq!(rig.trip(), opened(20, 2));
    }

    #[test]
    fn flapping_every_probe_ejects_for_growing_periods() {
        // With a failure threshold of 1 each failure trips it; the half-open
        // trial never sees two passes in a row, so it never closes and each
        // re-open doubles up to the cap.
        let mut rig = Rig::new(BreakerParams {
            failures: 1,
            ..params()
        });
        let mut periods = Vec::new();
        for round in 0..400 {
            if let Some(BreakerEvent::Opened { for_, .. }) = rig.observe(round % 2 == 0) {
                periods.push(for_.as_secs());
            }
        }
        assert!(periods.len() >= 5, "{periods:?}");
        assert!(periods.windows(2).all(|w| w[0] <= w[1]), "{periods:?}");
        assert_eq!(periods[..4], [10, 20, 40, 60]);
        assert_eq!(periods.last(), Some(&60));
        assert!(rig.breaker.ejections() >= 5);
    }

    #[test]
    fn flapping_that_closes_in_between_still_ejects_for_growing_periods() {
        // rise 1: each half-open pass readmits it, but its healthy stretch is
        // one probe long, so no ejection is forgiven before the next failure.
        let mut rig = Rig::new(BreakerParams {
            failures: 1,
            rise: 1,
            ..params()
        });
        let mut periods = Vec::new();
        for _ in 0..8 {
            match rig.observe(false) {
                Some(BreakerEvent::Opened { for_, .. }) => periods.push(for_.as_secs()),
                other => panic!("expected an ejection, got {other:?}"),
            }
            rig.wait_out();
            assert_eq!(rig.observe(true), Some(BreakerEvent::Closed));
        }
        assert_eq!(periods, [10, 20, 40, 60, 60, 60, 60, 60]);
    }

    #[test]
    fn alternating_results_never_trip_a_threshold_above_one() {
        let mut rig = Rig::new(params());
        assert!(rig.feed(&"+-".repeat(100)).is_empty());
        assert!(!rig.breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn next_deadline_schedules_the_half_open() {
        let mut breaker = Breaker::new(BreakerParams {
            failures: 1,
            ..params()
        });
        let opened_at = Instant::now();
        breaker.observe(false, opened_at, true);
        let deadline = breaker.next_deadline().unwrap();
        assert_eq!(deadline - opened_at, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(breaker.tick(Instant::now()), None, "too early");
        tokio::time::sleep_until(deadline).await;
        assert_eq!(breaker.tick(Instant::now()), Some(BreakerEvent::HalfOpened));

        tokio::time::advance(SECOND).await;
        let reopened_at = Instant::now();
        breaker.observe(false, reopened_at, true);
        let deadline = breaker.next_deadline().unwrap();
        assert_eq!(deadline - reopened_at, Duration::from_secs(20));
        tokio::time::sleep_until(deadline).await;
        assert_eq!(breaker.tick(Instant::now()), Some(BreakerEvent::HalfOpened));
    }

    #[test]
    fn two_backends_at_fifty_percent_allow_one_ejection() {
        assert!(may_eject(2, 0, 50));
        assert!(!may_eject(2, 1, 50));
    }

    #[test]
    fn a_lone_backend_is_never_ejected_below_one_hundred_percent() {
        assert!(!may_eject(1, 0, 50));
        assert!(!may_eject(1, 0, 99));
        assert!(may_eject(1, 0, 100));
    }

    #[test]
    fn ten_backends_at_ten_percent_allow_one_ejection() {
        assert!(may_eject(10, 0, 10));
        assert!(!may_eject(10, 1, 10));
    }

    #[test]
    fn the_ejection_limit_rounds_down() {
        // 3 × 50% = 1.5 backends: one may go, not two.
        assert!(may_eject(3, 0, 50));
        assert!(!may_eject(3, 1, 50));
        assert!(!may_eject(5, 0, 0));
        assert!(!may_eject(0, 0, 100));
        assert!(may_eject(4, 3, 255), "above 100 counts as 100");
        assert!(!may_eject(4, 4, 255));
    }
}
