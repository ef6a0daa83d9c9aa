//! The breaker over scripted results and times.

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
