//! Rise/fall hysteresis: a backend's verdict flips only after a streak of opposite probe results.

/// A backend's health verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// No verdict yet: neither streak has reached its threshold. The start
    /// state, so a backend is never silently healthy. Default.
    #[default]
    Unknown,
    /// `rise` consecutive passes since it was last unknown or unhealthy.
    Healthy,
    /// `fall` consecutive failures since it was last unknown or healthy.
    Unhealthy,
}

impl HealthStatus {
    /// The word status, metrics and events use: `unknown`, `healthy` or `unhealthy`.
    pub fn word(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "unknown",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// The verdict over a backend's probe results, with their current streak.
///
/// From [`HealthStatus::Unknown`], whichever streak reaches its threshold
/// first decides; after that only `fall` failures in a row make a healthy
/// backend unhealthy and only `rise` passes in a row make an unhealthy one
/// healthy. One result of the other kind restarts the count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    rise: u32,
    fall: u32,
    status: HealthStatus,
    /// Consecutive passes; zero after a failure.
    passes: u32,
    /// Consecutive failures; zero after a pass.
    failures: u32,
}

impl HealthState {
    /// An [`HealthStatus::Unknown`] backend that needs `rise` passes to become
    /// healthy and `fall` failures to become unhealthy; a 0 counts as 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        HealthState {
            rise: rise.max(1),
            fall: fall.max(1),
            status: HealthStatus::Unknown,
            passes: 0,
            failures: 0,
        }
    }

    /// The current verdict.
    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// Makes the verdict unhealthy at once, whatever the streak: for a definite answer that
    /// the backend is not what the check wants (a demoted primary is not a flake). Returns
    /// the new verdict when it flips.
    pub fn fail_now(&mut self) -> Option<HealthStatus> {
        self.passes = 0;
        self.failures = self.failures.max(self.fall);
        (self.status != HealthStatus::Unhealthy).then(|| {
            self.status = HealthStatus::Unhealthy;
            HealthStatus::Unhealthy
        })
    }

    /// Feeds one probe result; returns the new verdict when it flips.
    pub fn observe(&mut self, passed: bool) -> Option<HealthStatus> {
        let next = if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
            (self.passes >= self.rise).then_some(HealthStatus::Healthy)
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
            (self.failures >= self.fall).then_some(HealthStatus::Unhealthy)
        };
        match next {
            Some(next) if next != self.status => {
                self.status = next;
                Some(next)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `results` ("+" pass, "-" fail) and returns every flip.
    fn feed(state: &mut HealthState, results: &str) -> Vec<HealthStatus> {
        results
            .chars()
            .filter_map(|c| state.observe(c == '+'))
            .collect()
    }

    #[test]
    fn starts_unknown() {
        assert_eq!(HealthState::new(2, 3).status(), HealthStatus::Unknown);
    }

    #[test]
    fn stays_unknown_until_a_streak_completes() {
        let mut state = HealthState::new(2, 3);
        assert!(feed(&mut state, "+--+-").is_empty());
        assert_eq!(state.status(), HealthStatus::Unknown);
    }

    #[test]
    fn unknown_becomes_healthy_after_rise_passes() {
        let mut state = HealthState::new(2, 3);
        assert_eq!(state.observe(true), None);
        assert_eq!(state.observe(true), Some(HealthStatus::Healthy));
        assert_eq!(state.status(), HealthStatus::Healthy);
    }

    #[test]
    fn unknown_becomes_unhealthy_after_fall_failures() {
        let mut state = HealthState::new(2, 3);
        assert_eq!(feed(&mut state, "---"), [HealthStatus::Unhealthy]);
        assert_eq!(state.status(), HealthStatus::Unhealthy);
    }

    #[test]
    fn flips_down_after_three_failures() {
        let mut state = HealthState::new(2, 3);
        feed(&mut state, "++");
        assert_eq!(state.observe(false), None);
        assert_eq!(state.observe(false), None);
        assert_eq!(state.observe(false), Some(HealthStatus::Unhealthy));
    }

    #[test]
    fn flips_up_after_two_passes() {
        let mut state = HealthState::new(2, 3);
        feed(&mut state, "---");
        assert_eq!(state.observe(true), None);
        assert_eq!(state.observe(true), Some(HealthStatus::Healthy));
    }

    #[test]
    fn a_single_pass_in_a_failing_streak_resets_it() {
        let mut state = HealthState::new(2, 3);
        feed(&mut state, "++");
        assert!(feed(&mut state, "--+--").is_empty());
        assert_eq!(state.status(), HealthStatus::Healthy);
        assert_eq!(feed(&mut state, "-"), [HealthStatus::Unhealthy]);
    }

    #[test]
    fn a_single_failure_in_a_passing_streak_resets_it() {
        let mut state = HealthState::new(3, 1);
        feed(&mut state, "-");
        assert!(feed(&mut state, "++-++").is_empty());
        assert_eq!(state.status(), HealthStatus::Unhealthy);
        assert_eq!(feed(&mut state, "+"), [HealthStatus::Healthy]);
    }

    #[test]
    fn reports_each_flip_once() {
        let mut state = HealthState::new(1, 1);
        assert_eq!(
            feed(&mut state, "++--++"),
            [
                HealthStatus::Healthy,
                HealthStatus::Unhealthy,
                HealthStatus::Healthy
            ]
        );
    }

    #[test]
    fn zero_thresholds_count_as_one() {
        let mut state = HealthState::new(0, 0);
        assert_eq!(state.observe(true), Some(HealthStatus::Healthy));
        assert_eq!(state.observe(false), Some(HealthStatus::Unhealthy));
    }

    #[test]
    fn alternating_results_never_reach_a_first_verdict() {
        // Worth knowing for whoever waits on first verdicts: a backend that
        // flaps every probe stays unknown as long as rise and fall exceed 1.
        let mut state = HealthState::new(2, 3);
        assert!(feed(&mut state, &"+-".repeat(50)).is_empty());
        assert_eq!(state.status(), HealthStatus::Unknown);
    }
}
