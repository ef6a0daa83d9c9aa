//! Questions asked of a load client's timeline: which attempts failed and when, how long from a
//! fault to full recovery, and who served the attempts after some moment.

use std::time::Duration;

use crate::support::client::Attempt;

/// A client's attempts, in the order they were made.
pub struct Timeline(pub Vec<Attempt>);

impl Timeline {
    /// Failed attempts.
    pub fn failures(&self) -> impl Iterator<Item = &Attempt> {
        self.0.iter().filter(|a| !a.ok())
    }

    /// Failed attempts that started in `[from_ns, to_ns)`.
    pub fn failed_in(&self, from_ns: u64, to_ns: u64) -> u64 {
        self.failures()
            .filter(|a| (from_ns..to_ns).contains(&a.at_ns))
            .count() as u64
    }

    /// Failed attempts that had already ended at `t_ns`: failures a fault at `t_ns` cannot
    /// explain (an attempt in flight at the fault can fail because of it).
    pub fn failed_before(&self, t_ns: u64) -> u64 {
        self.failures().filter(|a| end_ns(a) < t_ns).count() as u64
    }

    /// Failed attempts that started at or after `t_ns`.
    pub fn failed_after(&self, t_ns: u64) -> u64 {
        self.failed_in(t_ns, u64::MAX)
    }

    /// Attempts that started at or after `t_ns` and were answered by backend `id`.
    pub fn served_by_after(&self, id: u32, t_ns: u64) -> u64 {
        self.0
            .iter()
            .filter(|a| a.at_ns >= t_ns && a.id == Some(id))
            .count() as u64
    }

    /// Failed attempts that ended in `[from_ns, to_ns)`: with an attempt in flight when a
    /// fault struck, those the fault can have caused.
    pub fn failed_ending_in(&self, from_ns: u64, to_ns: u64) -> u64 {
        self.failures()
            .filter(|a| (from_ns..to_ns).contains(&end_ns(a)))
            .count() as u64
    }

    /// From `fault_ns` to the first success after the last failure that ended in
    /// `[fault_ns, until_ns)`: how long clients saw the fault. Zero when none failed; `None`
    /// when nothing succeeded afterwards (not recovered).
    pub fn recovery(&self, fault_ns: u64, until_ns: u64) -> Option<Duration> {
        let Some(last) = self
            .failures()
            .filter(|a| (fault_ns..until_ns).contains(&end_ns(a)))
            .map(|a| a.at_ns)
            .max()
        else {
            return Some(Duration::ZERO);
        };
        self.0
            .iter()
            .find(|a| a.at_ns > last && a.ok())
            .map(|a| Duration::from_nanos(a.at_ns - fault_ns))
    }

    /// The first attempt after `t_ns` answered by `id`, as a delay from `t_ns`.
    pub fn first_served_by_after(&self, id: u32, t_ns: u64) -> Option<Duration> {
        self.0
            .iter()
            .find(|a| a.at_ns >= t_ns && a.id == Some(id))
            .map(|a| Duration::from_nanos(a.at_ns - t_ns))
    }

    /// The slowest failed attempt, in microseconds (how fast a refusal is).
    pub fn slowest_failure_us(&self) -> Option<u32> {
        self.failures().map(|a| a.took_us).max()
    }

    /// The `q`-quantile (0..=1) of failed attempts' durations, in microseconds.
    pub fn failure_quantile_us(&self, q: f64) -> Option<u32> {
        let mut took: Vec<u32> = self.failures().map(|a| a.took_us).collect();
        if took.is_empty() {
            return None;
        }
        took.sort_unstable();
        let i = ((took.len() - 1) as f64 * q).round() as usize;
        Some(took[i])
    }
}

/// When an attempt ended.
fn end_ns(a: &Attempt) -> u64 {
    a.at_ns + u64::from(a.took_us) * 1_000
}

/// A duration in milliseconds with one decimal, for records.
pub fn ms(d: Duration) -> f64 {
    crate::record::round(d.as_secs_f64() * 1000.0, 1)
}

/// The time between two monotonic timestamps, in milliseconds.
pub fn ms_between(from_ns: u64, to_ns: u64) -> f64 {
    ms(Duration::from_nanos(to_ns.saturating_sub(from_ns)))
}
