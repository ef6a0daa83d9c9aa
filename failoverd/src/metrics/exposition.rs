//! Writes the Prometheus text format (version 0.0.4): the line helpers the registry's render
//! uses, and the families kept in compact blocks, streamed straight from the blocks.
//!
//! A block family is written series by series into the output, with one reusable buffer for
//! the label text, so a scrape costs the text and nothing per series besides; building a map
//! of every series first (as rendering the registry does) cost ~200 MB of temporaries at
//! 80,000 backends.

use std::{
    fmt::{Display, Write as _},
    sync::atomic::Ordering::Relaxed,
};

use metrics_exporter_prometheus::formatting::sanitize_label_value;

use super::{
    blocks::{bit, priority_word, BackendBlock, ServiceBlock},
    catalog::{names, Kind},
    labels::{
        CONNECT_KINDS, KERNEL_ERROR_RENDER_ORDER, PROBE_BUCKET_LE, PROBE_REASONS, STATES,
        TERMINATE_REASONS, TRANSITIONS,
    },
    Live, KERNEL_ERROR_KINDS,
};

/// The families kept in blocks, by kind and then name (the order a render lists them in).
pub const BLOCK_FAMILIES: &[(&str, Kind)] = &[
    (names::BACKEND_TRANSITIONS, Kind::Counter),
    (names::BREAKER_EJECTIONS, Kind::Counter),
    (names::CONNECT_FAILURES, Kind::Counter),
    (names::CONNECTS_DIVERTED, Kind::Counter),
    (names::CONNECTS_ESTABLISHED, Kind::Counter),
    (names::CONNECTS_REJECTED, Kind::Counter),
    (names::CONNECTS, Kind::Counter),
    (names::FAILOVERS, Kind::Counter),
    (names::KERNEL_ERRORS, Kind::Counter),
    (names::PASSIVE_EJECTIONS, Kind::Counter),
    (names::PASSIVE_FAILURES, Kind::Counter),
    (names::PROBE_FAILURES, Kind::Counter),
    (names::SOCKETS_TERMINATED, Kind::Counter),
    (names::BACKEND_STATE, Kind::Gauge),
    (names::BACKEND_UP, Kind::Gauge),
    (names::BREAKER_OPEN, Kind::Gauge),
    (names::SERVICE_ACTIVE_PRIORITY, Kind::Gauge),
    (names::SERVICE_LIVE_BACKENDS, Kind::Gauge),
    (names::SPLIT_BRAIN, Kind::Gauge),
    (names::PROBE_DURATION, Kind::Histogram),
];

/// Writes the series of the block family `name` (one of [`BLOCK_FAMILIES`]); returns whether
/// there were any.
pub fn write_block_family(out: &mut String, name: &'static str, live: &Live) -> bool {
    let mut w = Writer {
        out,
        name,
        labels: String::new(),
        wrote: false,
    };
    match name {
        names::BACKEND_TRANSITIONS => each_backend(&mut w, live, |w, b| {
            nth_counters(w, b, "to", &TRANSITIONS, &b.transitions, bit::TRANSITION);
        }),
        names::BREAKER_EJECTIONS => each_backend(&mut w, live, |w, b| {
            one_counter(w, b, bit::EJECTIONS, &b.breaker_ejections);
        }),
        names::PASSIVE_EJECTIONS => each_backend(&mut w, live, |w, b| {
            one_counter(w, b, bit::EJECTIONS, &b.passive_ejections);
        }),
        names::PASSIVE_FAILURES => each_backend(&mut w, live, |w, b| {
            let (counters, first) = (&b.passive_failures, bit::PASSIVE_FAILURE);
            nth_counters(w, b, "kind", &CONNECT_KINDS, counters, first);
        }),
        names::PROBE_FAILURES => each_backend(&mut w, live, |w, b| {
            let (counters, first) = (&b.probe_failures, bit::PROBE_FAILURE);
            nth_counters(w, b, "reason", &PROBE_REASONS, counters, first);
        }),
        names::SOCKETS_TERMINATED => each_backend(&mut w, live, |w, b| {
            let (counters, first) = (&b.terminated, bit::TERMINATED);
            nth_counters(w, b, "reason", &TERMINATE_REASONS, counters, first);
        }),
        names::CONNECTS => each_backend(&mut w, live, |w, b| {
            one_counter(w, b, bit::CONNECTS, &b.connects);
        }),
        names::CONNECTS_ESTABLISHED => each_backend(&mut w, live, |w, b| {
            one_counter(w, b, bit::OUTCOMES, &b.established);
        }),
        names::CONNECTS_DIVERTED => each_backend(&mut w, live, |w, b| {
            one_counter(w, b, bit::OUTCOMES, &b.diverted);
        }),
        names::CONNECT_FAILURES => each_backend(&mut w, live, |w, b| {
            if b.has(bit::OUTCOMES) {
                for (kind, n) in CONNECT_KINDS.iter().zip(&b.connect_failures) {
                    w.line("", Some(("kind", *kind)), n.load(Relaxed));
                }
            }
        }),
        names::BACKEND_STATE => each_backend(&mut w, live, |w, b| {
            if b.has(bit::GAUGES) {
                let state = usize::from(b.state.load(Relaxed));
                for (i, word) in STATES.iter().enumerate() {
                    w.line("", Some(("state", *word)), u8::from(i == state));
                }
            }
        }),
        names::BACKEND_UP => each_backend(&mut w, live, |w, b| {
            if b.has(bit::GAUGES) {
                let priority = priority_word(Some(b.priority.load(Relaxed)));
                w.line(
                    "",
                    Some(("priority", priority)),
                    u8::from(b.up.load(Relaxed)),
                );
            }
        }),
        names::BREAKER_OPEN => each_backend(&mut w, live, |w, b| {
            if b.has(bit::GAUGES) {
                w.line("", None, u8::from(b.breaker_open.load(Relaxed)));
            }
        }),
        names::PROBE_DURATION => each_backend(&mut w, live, |w, b| {
            if b.has(bit::LATENCY) {
                histogram(w, b);
            }
        }),
        names::CONNECTS_REJECTED => each_service(&mut w, live, |w, s| {
            w.line("", None, s.rejected.load(Relaxed));
        }),
        names::KERNEL_ERRORS => each_service(&mut w, live, |w, s| {
            for i in KERNEL_ERROR_RENDER_ORDER {
                let kind = KERNEL_ERROR_KINDS[i];
                w.line("", Some(("kind", kind)), s.kernel_errors[i].load(Relaxed));
            }
        }),
        names::FAILOVERS => each_service(&mut w, live, |w, s| {
            for f in s.failovers() {
                w.line_with(
                    &[
                        ("from_priority", priority_word(f.from)),
                        ("to_priority", priority_word(f.to)),
                    ],
                    f.count,
                );
            }
        }),
        names::SERVICE_ACTIVE_PRIORITY => each_service(&mut w, live, |w, s| {
            if s.gauges_set.load(Relaxed) {
                w.line("", None, s.active.load(Relaxed));
            }
        }),
        names::SERVICE_LIVE_BACKENDS => each_service(&mut w, live, |w, s| {
            if s.gauges_set.load(Relaxed) {
                w.line("", None, s.live.load(Relaxed));
            }
        }),
        names::SPLIT_BRAIN => each_service(&mut w, live, |w, s| {
            w.line("", None, u8::from(s.split_brain.load(Relaxed)));
        }),
        _ => {}
    }
    w.wrote
}

/// The series lines of one family, written straight into the output.
struct Writer<'o> {
    out: &'o mut String,
    name: &'static str,
    /// The current service's (and backend's) labels, `service="…",backend="…"`; refilled for
    /// each, never reallocated once large enough.
    labels: String,
    wrote: bool,
}

impl Writer<'_> {
    /// `name<suffix>{labels[,key="value"]} value`.
    fn line(&mut self, suffix: &str, extra: Option<(&str, &str)>, value: impl Display) {
        let extra = extra.as_slice();
        self.write(suffix, extra, value);
    }

    /// `name{labels,k1="v1",k2="v2"} value`.
    fn line_with(&mut self, extra: &[(&str, &str)], value: impl Display) {
        self.write("", extra, value);
    }

    fn write(&mut self, suffix: &str, extra: &[(&str, &str)], value: impl Display) {
        let out = &mut *self.out;
        out.push_str(self.name);
        out.push_str(suffix);
        out.push('{');
        out.push_str(&self.labels);
        for (k, v) in extra {
            out.push(',');
            out.push_str(k);
            out.push_str("=\"");
            out.push_str(v);
            out.push('"');
        }
        out.push('}');
        // Writing to a String does not fail.
        writeln!(out, " {value}").ok();
        self.wrote = true;
    }
}

/// Calls `f` for each service, with the writer's labels set to it.
fn each_service(
    w: &mut Writer<'_>,
    live: &Live,
    mut f: impl FnMut(&mut Writer<'_>, &ServiceBlock),
) {
    for (name, service) in live {
        w.labels.clear();
        push_label(&mut w.labels, "service", name);
        f(w, service);
    }
}

/// Calls `f` for each backend of each service, with the writer's labels set to it.
fn each_backend(
    w: &mut Writer<'_>,
    live: &Live,
    mut f: impl FnMut(&mut Writer<'_>, &BackendBlock),
) {
    for (service, block) in live {
        for (backend, b) in &block.backends {
            w.labels.clear();
            push_label(&mut w.labels, "service", service);
            w.labels.push(',');
            push_label(&mut w.labels, "backend", backend);
            f(w, b);
        }
    }
}

/// A backend's unlabelled counter, once its series exists (`present`, bit `bits`).
fn one_counter(
    w: &mut Writer<'_>,
    b: &BackendBlock,
    bits: u64,
    counter: &std::sync::atomic::AtomicU64,
) {
    if b.has(bits) {
        w.line("", None, counter.load(Relaxed));
    }
}

/// The existing series of a family labelled by one closed set: one per word of `words`
/// whose bit (from `first`) is set, labelled `label`.
fn nth_counters(
    w: &mut Writer<'_>,
    b: &BackendBlock,
    label: &str,
    words: &[&str],
    counters: &[std::sync::atomic::AtomicU64],
    first: u32,
) {
    for (i, (word, n)) in words.iter().zip(counters).enumerate() {
        if b.has_nth(first, i) {
            w.line("", Some((label, *word)), n.load(Relaxed));
        }
    }
}

/// A backend's probe-duration histogram: cumulative buckets, `+Inf`, sum and count.
fn histogram(w: &mut Writer<'_>, b: &BackendBlock) {
    let mut cumulative = 0;
    for (le, n) in PROBE_BUCKET_LE.iter().zip(&b.latency.buckets) {
        cumulative += n.load(Relaxed);
        w.line("_bucket", Some(("le", *le)), cumulative);
    }
    let sum = f64::from_bits(b.latency.sum.load(Relaxed));
    // Read last: a record between the reads leaves the count no lower than the buckets.
    let count = b.latency.count.load(Relaxed).max(cumulative);
    w.line("_bucket", Some(("le", "+Inf")), count);
    w.line("_sum", None, Float(sum));
    w.line("_count", None, count);
}

/// Appends `key="value"`, the value escaped as the text format wants.
fn push_label(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push_str("=\"");
    if value.contains(['\\', '"', '\n']) {
        out.push_str(&sanitize_label_value(value));
    } else {
        out.push_str(value);
    }
    out.push('"');
}

/// An f64 as the text format spells it: `+Inf`, `-Inf` and `NaN` where Rust would write `inf`.
pub struct Float(pub f64);

impl Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}
