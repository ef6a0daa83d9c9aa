//! The metrics recorder behind `/metrics`: series kept in a `metrics-util` registry, rendered in
//! the Prometheus text format, and removable one label set at a time.
//!
//! metrics-exporter-prometheus 0.18 cannot remove one series: its registry is private, and the
//! only way it drops series is `idle_timeout`, which drops whatever has not changed for a while
//! — also the counters failoverd registers at 0 for alerts to see a first increase, and the
//! gauges of a backend that is simply steady. So failoverd keeps its series in a
//! `metrics_util::registry::Registry` (whose `retain_*` removes exactly what is asked) and
//! writes the text format itself, with the exporter's `formatting` helpers for names, label
//! escaping and the `# HELP`/`# TYPE` lines.
//!
//! Histograms are recorded straight into their buckets (under a per-series lock), so nothing
//! piles up between scrapes and no upkeep is needed.
//!
//! The families labelled by `service` are not kept here but in compact blocks (see
//! [`super::blocks`]); a render merges them in, each family in its place by kind and name.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError, RwLock,
    },
};

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::formatting::{
    sanitize_label_key, sanitize_label_value, sanitize_metric_name, write_help_line,
    write_type_line,
};
use metrics_util::registry::{Registry, Storage};

use super::{
    catalog::{self, Kind},
    exposition::{write_block_family, Float, BLOCK_FAMILIES},
};

/// Prometheus's default histogram buckets, for histograms given none.
const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram series: cumulative bucket counts, sum and count.
#[derive(Debug)]
pub struct Buckets(Mutex<metrics_util::storage::Histogram>);

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(value);
    }
}

/// Creates each new series: counters and gauges are atomics, histograms get the buckets set for
/// their name.
#[derive(Debug)]
struct SeriesStorage {
    buckets: HashMap<&'static str, &'static [f64]>,
}

impl Storage<Key> for SeriesStorage {
    type Counter = Arc<AtomicU64>;
    type Gauge = Arc<AtomicU64>;
    type Histogram = Arc<Buckets>;

    fn counter(&self, _: &Key) -> Self::Counter {
        Arc::new(AtomicU64::new(0))
    }

    fn gauge(&self, _: &Key) -> Self::Gauge {
        Arc::new(AtomicU64::new(0))
    }

    fn histogram(&self, key: &Key) -> Self::Histogram {
        let bounds = self
            .buckets
            .get(key.name())
            .copied()
            .unwrap_or(DEFAULT_BUCKETS);
        // Only empty bounds give None, and no bucket list here is empty.
        let histogram = metrics_util::storage::Histogram::new(bounds)
            .or_else(|| metrics_util::storage::Histogram::new(DEFAULT_BUCKETS))
            .expect("the default buckets are not empty");
        Arc::new(Buckets(Mutex::new(histogram)))
    }
}

#[derive(Debug)]
struct Inner {
    registry: Registry<Key, SeriesStorage>,
    /// `# HELP` text by metric name (the first description given wins).
    help: RwLock<HashMap<String, String>>,
    /// The length of the last render's text: the next one reserves a little more at once.
    /// At 80,000 backends with per-backend series the text is ~190 MiB, and growing a String
    /// by doubling could hold up to twice that.
    last_len: AtomicUsize,
}

/// The recorder: install it with `metrics::set_global_recorder`, read it through [`Handle`].
#[derive(Debug)]
pub struct Recorder {
    inner: Arc<Inner>,
}

/// Renders and prunes the series of a [`Recorder`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

impl Recorder {
    /// A recorder whose histograms named in `buckets` use those bounds (others get Prometheus's
    /// defaults, 5 ms … 10 s). Every bucket list must be non-empty and ascending.
    pub fn new(buckets: &[(&'static str, &'static [f64])]) -> Self {
        Recorder {
            inner: Arc::new(Inner {
                registry: Registry::new(SeriesStorage {
                    buckets: buckets.iter().copied().collect(),
                }),
                help: RwLock::new(HashMap::new()),
                last_len: AtomicUsize::new(0),
            }),
        }
    }

    /// A handle to read this recorder.
    pub fn handle(&self) -> Handle {
        Handle {
            inner: Arc::clone(&self.inner),
        }
    }

    fn describe(&self, name: KeyName, description: SharedString) {
        let mut help = self
            .inner
            .help
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        help.entry(sanitize_metric_name(name.as_str()))
            .or_insert_with(|| description.into_owned());
    }
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, name: KeyName, _: Option<Unit>, description: SharedString) {
        self.describe(name, description);
    }

    fn describe_gauge(&self, name: KeyName, _: Option<Unit>, description: SharedString) {
        self.describe(name, description);
    }

    fn describe_histogram(&self, name: KeyName, _: Option<Unit>, description: SharedString) {
        self.describe(name, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.inner
            .registry
            .get_or_create_counter(key, |c| Counter::from_arc(Arc::clone(c)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.inner
            .registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(Arc::clone(g)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.inner
            .registry
            .get_or_create_histogram(key, |h| Histogram::from_arc(Arc::clone(h)))
    }
}

/// One metric's series, by rendered label set (sorted, so a render is stable).
type Series<T> = BTreeMap<String, BTreeMap<String, T>>;

/// A histogram's cumulative buckets, sum and count.
type HistogramValue = (Vec<(f64, u64)>, f64, u64);

impl Handle {
    /// Removes every series whose labels `matches` accepts (given as `(name, value)` pairs).
    /// Handles to removed series stay valid but record into nothing that is rendered; the next
    /// `counter!`/`gauge!`/`histogram!` with those labels starts a new series.
    pub fn forget(&self, matches: impl Fn(&[(&str, &str)]) -> bool) {
        let keep = |key: &Key| {
            let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            !matches(&labels)
        };
        let registry = &self.inner.registry;
        registry.retain_counters(|key, _| keep(key));
        registry.retain_gauges(|key, _| keep(key));
        registry.retain_histograms(|key, _| keep(key));
    }

    /// Every series in the Prometheus text format (version 0.0.4), the registry's and the
    /// blocks': counters, gauges, then histograms, each kind sorted by name, each metric with its
    /// `# HELP` (as described, else from the catalog) and `# TYPE` line.
    pub fn render(&self) -> String {
        let registry = &self.inner.registry;
        let mut counters: Series<u64> = BTreeMap::new();
        registry.visit_counters(|key, c| {
            let (name, labels) = split(key);
            counters
                .entry(name)
                .or_default()
                .insert(labels, c.load(Ordering::Acquire));
        });
        let mut gauges: Series<f64> = BTreeMap::new();
        registry.visit_gauges(|key, g| {
            let (name, labels) = split(key);
            gauges
                .entry(name)
                .or_default()
                .insert(labels, f64::from_bits(g.load(Ordering::Acquire)));
        });
        let mut histograms: Series<HistogramValue> = BTreeMap::new();
        registry.visit_histograms(|key, h| {
            let (name, labels) = split(key);
            let h = h.0.lock().unwrap_or_else(PoisonError::into_inner);
            histograms
                .entry(name)
                .or_default()
                .insert(labels, (h.buckets(), h.sum(), h.count()));
        });

        let help = self
            .inner
            .help
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let last_len = self.inner.last_len.load(Ordering::Relaxed);
        let mut out = String::with_capacity(last_len + last_len / 16);
        // Counters, gauges, histograms, each kind by name: the registry's families and the
        // blocks' merged, as one render of the registry alone listed them.
        let mut counters = counters.iter().peekable();
        let mut gauges = gauges.iter().peekable();
        let mut histograms = histograms.iter().peekable();
        let mut blocks = BLOCK_FAMILIES.iter().peekable();
        for kind in [Kind::Counter, Kind::Gauge, Kind::Histogram] {
            loop {
                let registry_next = match kind {
                    Kind::Counter => counters.peek().map(|(n, _)| n.as_str()),
                    Kind::Gauge => gauges.peek().map(|(n, _)| n.as_str()),
                    Kind::Histogram => histograms.peek().map(|(n, _)| n.as_str()),
                };
                let block_next = blocks.peek().filter(|(_, k)| *k == kind).map(|(n, _)| *n);
                let name: String = match (registry_next, block_next) {
                    (None, None) => break,
                    (Some(r), Some(b)) => r.min(b).to_string(),
                    (Some(r), None) => r.to_string(),
                    (None, Some(b)) => b.to_string(),
                };
                let start = out.len();
                if let Some(text) = help
                    .get(&name)
                    .map(String::as_str)
                    .or_else(|| catalog::find(&name).map(|m| m.help))
                {
                    write_help_line(&mut out, &name, None, None, text);
                }
                write_type_line(&mut out, &name, None, None, kind.word());
                let mut wrote = false;
                match kind {
                    Kind::Counter => {
                        if let Some((_, series)) = counters.next_if(|(n, _)| **n == name) {
                            for (labels, value) in series {
                                line(&mut out, &name, "", labels, None, value);
                            }
                            wrote = true;
                        }
                    }
                    Kind::Gauge => {
                        if let Some((_, series)) = gauges.next_if(|(n, _)| **n == name) {
                            for (labels, value) in series {
                                line(&mut out, &name, "", labels, None, Float(*value));
                            }
                            wrote = true;
                        }
                    }
                    Kind::Histogram => {
                        if let Some((_, series)) = histograms.next_if(|(n, _)| **n == name) {
                            for (labels, (buckets, sum, count)) in series {
                                for (le, n) in buckets {
                                    let le = le.to_string();
                                    line(&mut out, &name, "_bucket", labels, Some(&le), n);
                                }
                                line(&mut out, &name, "_bucket", labels, Some("+Inf"), count);
                                line(&mut out, &name, "_sum", labels, None, Float(*sum));
                                line(&mut out, &name, "_count", labels, None, count);
                            }
                            wrote = true;
                        }
                    }
                }
                if let Some((block, _)) = blocks.next_if(|(n, _)| *n == name) {
                    // One family at a time under the read lock, so a reload's removal waits
                    // for one family's text, not the whole scrape's.
                    let live = super::live();
                    wrote |= write_block_family(&mut out, block, &live);
                }
                if !wrote {
                    out.truncate(start);
                }
            }
        }
        self.inner.last_len.store(out.len(), Ordering::Relaxed);
        out
    }
}

/// A key's sanitized name and its labels as `k="v",…` (escaped, in the key's order).
fn split(key: &Key) -> (String, String) {
    let labels = key
        .labels()
        .map(|l| {
            format!(
                "{}=\"{}\"",
                sanitize_label_key(l.key()),
                sanitize_label_value(l.value())
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    (sanitize_metric_name(key.name()), labels)
}

/// Writes `name{labels,le="…"} value`.
fn line(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &str,
    le: Option<&str>,
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    out.push_str(suffix);
    let le = le.map(|le| format!("le=\"{le}\""));
    let all: Vec<&str> = [Some(labels).filter(|l| !l.is_empty()), le.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if !all.is_empty() {
        out.push('{');
        out.push_str(&all.join(","));
        out.push('}');
    }
    // Writing to a String does not fail.
    writeln!(out, " {value}").ok();
}
