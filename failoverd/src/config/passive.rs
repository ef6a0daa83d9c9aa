//! `passive` and `terminate`: the keys of the kernel's own evidence (issue 11), merged key by
//! key like `health` and `breaker` (a service's keys over `defaults`' over the built-in ones).

use super::{
    issues::Issues,
    locate::join,
    merge::{longer_than_max, more_than_max, Scope, Section},
    model::{MAX_DRAIN_AFTER, MAX_THRESHOLD},
    raw::{RawPassive, RawTerminate},
    PassiveConfig, TerminateConfig,
};

/// Checks and merges `passive`; the result is meaningful only if no issue was added.
pub(super) fn passive(scope: Scope<'_, RawPassive>, issues: &mut Issues) -> PassiveConfig {
    if let Some(own) = scope.own() {
        check_passive(own, issues);
    }
    PassiveConfig {
        consecutive_failures: scope
            .get(
                "consecutive_failures",
                |p| p.consecutive_failures,
                PassiveConfig::default().consecutive_failures,
            )
            .value,
    }
}

fn check_passive(s: Section<'_, RawPassive>, issues: &mut Issues) {
    // The kernel compares the count against a 16-bit threshold; 1000 is far below that and
    // already "never" at any real connect rate.
    if let Some(n) = s.raw.consecutive_failures.filter(|&n| n > MAX_THRESHOLD) {
        issues.value(
            join(s.path, "consecutive_failures"),
            more_than_max("consecutive_failures", n),
        );
    }
}

/// Checks and merges `terminate`; the result is meaningful only if no issue was added.
pub(super) fn terminate(scope: Scope<'_, RawTerminate>, issues: &mut Issues) -> TerminateConfig {
    if let Some(own) = scope.own() {
        check_terminate(own, issues);
    }
    let builtin = TerminateConfig::default();
    TerminateConfig {
        on_down: scope.get("on_down", |t| t.on_down, builtin.on_down).value,
        on_failback: scope
            .get("on_failback", |t| t.on_failback, builtin.on_failback)
            .value,
        drain_after: scope
            .get(
                "drain_after",
                |t| t.drain_after.as_ref().map(|g| g.0 .0),
                builtin.drain_after,
            )
            .value,
    }
}

fn check_terminate(s: Section<'_, RawTerminate>, issues: &mut Issues) {
    let Some(grace) = s.raw.drain_after.as_ref().and_then(|g| g.0 .0) else {
        return;
    };
    let at = join(s.path, "drain_after");
    if grace.is_zero() {
        issues.value(
            at,
            "drain_after must be longer than zero: to abort at once, drain with --terminate",
        );
    } else if grace > MAX_DRAIN_AFTER {
        issues.value(at, longer_than_max("drain_after", grace, MAX_DRAIN_AFTER));
    }
}
