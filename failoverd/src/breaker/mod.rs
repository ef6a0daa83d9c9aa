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

use std::{sync::Arc, time::Duration};

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
    /// Shared by every backend of a service: 40 bytes each otherwise.
    params: Arc<BreakerParams>,
    state: BreakerState,
    /// Consecutive failures while closed.
    failures: u32,
    /// Ejections not yet forgiven; sets the length of the next one.
    ejections: u32,
    /// Start of the current unbroken run of passes while closed.
    healthy_since: Option<Instant>,
    /// A passive ejection happened and is not yet forgiven: the next one opens for real.
    struck: bool,
}

impl Breaker {
    /// A closed breaker with no ejections.
    pub fn new(params: impl Into<Arc<BreakerParams>>) -> Self {
        Breaker {
            params: params.into(),
            state: BreakerState::Closed,
            failures: 0,
            ejections: 0,
            healthy_since: None,
            struck: false,
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

    /// Kernel-observed connect failures (passive health) took the backend out. `None` when
    /// the breaker stays as it is: the breaker is open already, or this is a strike.
    ///
    /// The first passive ejection with no ejection unforgiven is a strike: the caller takes
    /// the backend out by its health state, as if `fall` probes had failed, so it comes back
    /// after `rise` passing probes (a primary restarted after a crash is not held out for
    /// `open_for`). A repeat before a healthy stretch of `max_open_for` forgives the strike
    /// opens the breaker like any ejection, so repeats grow the period toward `max_open_for`.
    pub fn eject(&mut self, now: Instant) -> Option<BreakerEvent> {
        if self.is_open() {
            return None;
        }
        if self.ejections == 0 && !self.struck {
            self.struck = true;
            self.healthy_since = None;
            return None;
        }
        Some(self.open(now))
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
        let forgiving = now.saturating_duration_since(since) >= self.params.max_open_for;
        if forgiving && self.ejections > 0 {
            self.ejections -= 1;
            self.healthy_since = Some(now);
        } else if forgiving && self.struck {
            self.struck = false;
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
mod tests;
