//! The closed sets of label values the per-service and per-backend families take, each in the
//! order a render lists them (the text format's series order is by label text).
//!
//! A compact block keeps one counter per value of a set, indexed by the value's place here,
//! instead of one registry series (key, labels, allocation) per value.

/// `to` of `failoverd_backend_transitions_total`: the health words and the operator's words.
pub const TRANSITIONS: [&str; 7] = [
    "drained",
    "ejected",
    "healthy",
    "readmitted",
    "undrained",
    "unhealthy",
    "unknown",
];

/// The one transition [`crate::metrics::zero_backend`] does not register at 0: a backend
/// never goes back to `unknown`.
pub const UNZEROED_TRANSITION: &str = "unknown";

/// `state` of `failoverd_backend_state` (`Backend::state_word`).
pub const STATES: [&str; 5] = ["drained", "ejected", "healthy", "unhealthy", "unknown"];

/// `reason` of `failoverd_probe_failures_total`: every word `ProbeError::reason` returns.
pub const PROBE_REASONS: [&str; 15] = [
    "auth",
    "body",
    "credentials",
    "exit",
    "expect",
    "lag",
    "other",
    "protocol",
    "query",
    "refused",
    "role",
    "spawn",
    "status",
    "timeout",
    "tls",
];

/// `kind` of `failoverd_connect_failures_total` and `failoverd_passive_failures_total`
/// (`ConnectFailureKind::as_str`).
pub const CONNECT_KINDS: [&str; 2] = ["refused", "syn_timeout"];

/// `reason` of `failoverd_sockets_terminated_total` (`TerminateReason::as_str`).
pub const TERMINATE_REASONS: [&str; 6] = [
    "demoted",
    "down",
    "drain",
    "drain_after",
    "failback",
    "removed",
];

/// The places of [`crate::metrics::KERNEL_ERROR_KINDS`] (recorded in that order) in the order
/// a render lists them: bad_table, family_mismatch, no_sock_storage.
pub const KERNEL_ERROR_RENDER_ORDER: [usize; 3] = [1, 2, 0];

/// `le` of the probe-duration buckets, as `f64`'s `Display` writes each bound of
/// [`crate::metrics::PROBE_BUCKETS`] (so the text needs no formatting per scrape).
pub const PROBE_BUCKET_LE: [&str; 13] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5",
];

/// The place of `word` in `set`, or `None` for a word outside it (a caller's bug: the sets are
/// every word the callers' enums spell).
pub fn index(set: &[&str], word: &str) -> Option<usize> {
    let found = set.iter().position(|w| *w == word);
    if found.is_none() {
        tracing::error!(
            word,
            "a metric label value outside its closed set is not recorded"
        );
        if cfg!(debug_assertions) {
            panic!("label value {word:?} is not one of {set:?}");
        }
    }
    found
}
