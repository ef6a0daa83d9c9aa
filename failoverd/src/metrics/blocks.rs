//! The compact blocks that hold the series labelled by `service` (and `service` + `backend`):
//! one struct of plain atomics per service and per backend, rendered at scrape time.
//!
//! A series in the `metrics-util` registry cost about 330 bytes (its key, label vector, map
//! slot and `Arc`ed atomic); a service had 13 of them and a backend with per-backend series 16
//! (one a 13-bucket histogram). Here a label whose values form a closed set (see
//! [`super::labels`]) is an array index, and a series exists from its first record (or its
//! registration at 0) on, as in the registry: a bit in `present` says so.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicI16, AtomicU64, AtomicU8, Ordering::Relaxed},
        Arc, Mutex, PoisonError,
    },
};

use metrics::HistogramFn;

use super::labels::{
    CONNECT_KINDS, PROBE_REASONS, STATES, TERMINATE_REASONS, TRANSITIONS, UNZEROED_TRANSITION,
};
use super::PROBE_BUCKETS;

/// A service's series and its backends'. The name is the key it is kept under in
/// [`super::LIVE`].
#[derive(Debug, Default)]
pub struct ServiceBlock {
    /// Whether the gauges set by `metrics::service` exist yet.
    pub gauges_set: AtomicBool,
    /// `failoverd_service_active_priority` (-1: refusing).
    pub active: AtomicI16,
    /// `failoverd_service_live_backends`.
    pub live: AtomicU64,
    /// `failoverd_split_brain`.
    pub split_brain: AtomicBool,
    /// `failoverd_connects_rejected_total`.
    pub rejected: AtomicU64,
    /// `failoverd_kernel_translation_errors_total`, in the order of
    /// [`super::KERNEL_ERROR_KINDS`].
    pub kernel_errors: [AtomicU64; 3],
    /// `failoverd_failovers_total` by (from, to) priority (`None`: refusing), kept in render
    /// order. Failovers are rare and their pairs depend on the service's priorities, so a
    /// short locked list rather than a fixed array.
    pub failovers: Mutex<Vec<Failover>>,
    /// The backends with per-backend series (none with `metrics.per_backend: false`).
    pub backends: BTreeMap<Arc<str>, Arc<BackendBlock>>,
}

/// One `failoverd_failovers_total` series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    /// `from_priority`.
    pub from: Option<u8>,
    /// `to_priority`.
    pub to: Option<u8>,
    /// The count.
    pub count: u64,
}

impl ServiceBlock {
    /// Adds `n` to the failovers from `from` to `to`, creating the series if it is new.
    pub fn failover(&self, from: Option<u8>, to: Option<u8>, n: u64) {
        let mut list = self
            .failovers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (priority_word(from), priority_word(to));
        match list.binary_search_by(|f| (priority_word(f.from), priority_word(f.to)).cmp(&key)) {
            Ok(i) => list[i].count += n,
            Err(i) => list.insert(i, Failover { from, to, count: n }),
        }
    }

    /// A snapshot of the failover series, in render order.
    pub fn failovers(&self) -> Vec<Failover> {
        self.failovers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A priority as its label value: the number, or `none` when refusing (the numbers made once,
/// so a label costs no allocation).
pub fn priority_word(p: Option<u8>) -> &'static str {
    static WORDS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let Some(p) = p else {
        return "none";
    };
    WORDS.get_or_init(|| {
        (0..=u8::MAX)
            .map(|n| &*Box::leak(n.to_string().into_boxed_str()))
            .collect()
    })[usize::from(p)]
}

/// Which optional series of a backend exist (bits of [`BackendBlock::present`]).
pub mod bit {
    /// The gauges set by `metrics::backend` (up, state, breaker_open).
    pub const GAUGES: u64 = 1 << 0;
    /// `failoverd_connects_total`.
    pub const CONNECTS: u64 = 1 << 1;
    /// The kernel's outcome counters (established, failures by kind, diverted).
    pub const OUTCOMES: u64 = 1 << 2;
    /// The probe-duration histogram.
    pub const LATENCY: u64 = 1 << 3;
    /// Breaker and passive ejection counters.
    pub const EJECTIONS: u64 = 1 << 4;
    /// First bit of the transitions by `to`.
    pub const TRANSITION: u32 = 8;
    /// First bit of the probe failures by `reason`.
    pub const PROBE_FAILURE: u32 = TRANSITION + 7;
    /// First bit of the passive failures by `kind`.
    pub const PASSIVE_FAILURE: u32 = PROBE_FAILURE + 15;
    /// First bit of the terminated sockets by `reason`.
    pub const TERMINATED: u32 = PASSIVE_FAILURE + 2;
}

/// A backend's series (with `metrics.per_backend: true` only). The name is the key it is kept
/// under in its [`ServiceBlock`].
#[derive(Debug, Default)]
pub struct BackendBlock {
    /// Which optional series exist ([`bit`]).
    pub present: AtomicU64,
    /// `priority` of `failoverd_backend_up`.
    pub priority: AtomicU8,
    /// `failoverd_backend_up`.
    pub up: AtomicBool,
    /// The place in [`STATES`] of the state whose `failoverd_backend_state` is 1.
    pub state: AtomicU8,
    /// `failoverd_breaker_open`.
    pub breaker_open: AtomicBool,
    /// `failoverd_backend_transitions_total` by `to` ([`TRANSITIONS`]).
    pub transitions: [AtomicU64; 7],
    /// `failoverd_breaker_ejections_total`.
    pub breaker_ejections: AtomicU64,
    /// `failoverd_passive_ejections_total`.
    pub passive_ejections: AtomicU64,
    /// `failoverd_passive_failures_total` by `kind` ([`CONNECT_KINDS`]).
    pub passive_failures: [AtomicU64; 2],
    /// `failoverd_sockets_terminated_total` by `reason` ([`TERMINATE_REASONS`]).
    pub terminated: [AtomicU64; 6],
    /// `failoverd_probe_failures_total` by `reason` ([`PROBE_REASONS`]).
    pub probe_failures: [AtomicU64; 15],
    /// `failoverd_connects_total`.
    pub connects: AtomicU64,
    /// `failoverd_connects_established_total`.
    pub established: AtomicU64,
    /// `failoverd_connect_failures_total` by `kind` ([`CONNECT_KINDS`]).
    pub connect_failures: [AtomicU64; 2],
    /// `failoverd_connects_diverted_total`.
    pub diverted: AtomicU64,
    /// `failoverd_probe_duration_seconds`.
    pub latency: Latency,
}

impl BackendBlock {
    /// Marks the series of `bits` as existing.
    pub fn mark(&self, bits: u64) {
        // Checked first: the bits are set once, and a plain load keeps the cache line shared.
        if self.present.load(Relaxed) & bits != bits {
            self.present.fetch_or(bits, Relaxed);
        }
    }

    /// Whether the series of `bits` exist (all of them).
    pub fn has(&self, bits: u64) -> bool {
        self.present.load(Relaxed) & bits == bits
    }

    /// Registers the counters alerts are built on at 0.
    pub fn zero(&self) {
        let mut bits = bit::EJECTIONS;
        for (i, to) in TRANSITIONS.iter().enumerate() {
            if *to != UNZEROED_TRANSITION {
                bits |= 1 << (bit::TRANSITION + i as u32);
            }
        }
        self.mark(bits);
    }

    /// Adds `n` to the `i`th counter of the family whose first bit is `first`.
    pub fn add(&self, counters: &[AtomicU64], first: u32, i: usize, n: u64) {
        counters[i].fetch_add(n, Relaxed);
        self.mark(1 << (first + i as u32));
    }

    /// Whether the `i`th series of the family whose first bit is `first` exists.
    pub fn has_nth(&self, first: u32, i: usize) -> bool {
        self.has(1 << (first + i as u32))
    }

    /// Sets the gauges of `metrics::backend`.
    pub fn set_gauges(&self, priority: u8, state: usize, up: bool, breaker_open: bool) {
        self.priority.store(priority, Relaxed);
        self.state.store(state as u8, Relaxed);
        self.up.store(up, Relaxed);
        self.breaker_open.store(breaker_open, Relaxed);
        self.mark(bit::GAUGES);
    }
}

// The label sets above fit the bits they are given.
const _: () = assert!(bit::TERMINATED + TERMINATE_REASONS.len() as u32 <= 64);
const _: () = assert!(STATES.len() <= u8::MAX as usize);
const _: () = assert!(PROBE_REASONS.len() == 15 && CONNECT_KINDS.len() == 2);

/// The probe-duration histogram of one backend: a count per bucket of
/// [`PROBE_BUCKETS`] (not cumulative: one increment per record; a render sums them), the
/// count above the last bound implied by `count`, the sum as `f64` bits.
#[derive(Debug, Default)]
pub struct Latency {
    /// Samples in each bucket: above the previous bound, up to and including this one.
    pub buckets: [AtomicU64; 13],
    /// The sum of the samples, as `f64::to_bits`.
    pub sum: AtomicU64,
    /// The samples.
    pub count: AtomicU64,
}

const _: () = assert!(PROBE_BUCKETS.len() == 13);

impl Latency {
    /// Records one sample, in seconds.
    pub fn record(&self, seconds: f64) {
        if let Some(i) = PROBE_BUCKETS.iter().position(|le| seconds <= *le) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        // One backend's probes are recorded by one task, so this loop hardly ever retries.
        self.sum
            .fetch_update(Relaxed, Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).to_bits())
            })
            .ok();
        self.count.fetch_add(1, Relaxed);
    }
}

/// What `metrics::probe_latency` returns records into its backend's block, which the handle
/// keeps alive (a forgotten backend's block is no longer rendered).
impl HistogramFn for BackendBlock {
    fn record(&self, value: f64) {
        self.latency.record(value);
    }
}
