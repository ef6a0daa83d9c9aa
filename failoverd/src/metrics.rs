//! Prometheus metrics: what failoverd records and when, the recorder that keeps it (and forgets
//! the series of what went away), and the HTTP listener for `/metrics`, `/healthz` and `/readyz`.
//!
//! The names, kinds, labels and `# HELP` texts are one table, [`catalog::METRICS`], that
//! docs/metrics.md is checked against.

pub mod catalog;
mod recorder;
mod server;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock, PoisonError, RwLock,
    },
};

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, SharedString,
};

pub use catalog::names;
pub use recorder::{Handle, Recorder};
pub use server::{bind, serve, HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_LIFETIME};

use crate::health::{HealthStatus, ProbeError};

/// Probe latency buckets: 0.5 ms to 5 s (probes time out well before that).
const PROBE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Another recorder was installed first (metrics are global to the process).
    #[error("another metrics recorder is already installed")]
    RecorderTaken,
    /// The listener could not bind.
    #[error("binding the metrics listener on {addr}: {source}")]
    Bind {
        /// `metrics.listen`.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

static HANDLE: OnceLock<Handle> = OnceLock::new();

/// `metrics.per_backend`: whether the per-backend series are exported.
static PER_BACKEND: AtomicBool = AtomicBool::new(true);

/// Sets `metrics.per_backend` (at start; a change needs a restart).
pub fn set_per_backend(on: bool) {
    PER_BACKEND.store(on, Ordering::Relaxed);
}

/// Whether the per-backend series are exported.
pub fn per_backend() -> bool {
    PER_BACKEND.load(Ordering::Relaxed)
}

/// Installs the global recorder once (later calls return the same handle), describes every
/// metric of the catalog (their `# HELP` lines), and sets build_info.
pub fn install() -> Result<Handle, MetricsError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = Recorder::new(&[(names::PROBE_DURATION, PROBE_BUCKETS)]);
    let handle = recorder.handle();
    // Another thread may have won the race; then its recorder stays.
    if metrics::set_global_recorder(recorder).is_ok() {
        // Only the winner's handle sees the metrics; store it.
        HANDLE.set(handle).ok();
    }
    describe_all();
    gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // At 0 from the start, so an alert sees the first error as an increase.
    counter!(names::PROBES_SKIPPED).increment(0);
    counter!(names::DATAPATH_WRITES).increment(0);
    counter!(names::DATAPATH_WRITE_ERRORS).increment(0);
    counter!(names::CONFIG_RELOADS, "result" => "ok").increment(0);
    counter!(names::CONFIG_RELOADS, "result" => "error").increment(0);
    counter!(names::PANICS).increment(0);
    HANDLE.get().cloned().ok_or(MetricsError::RecorderTaken)
}

/// Gives the current recorder the `# HELP` text of every metric in [`catalog::METRICS`].
fn describe_all() {
    for metric in catalog::METRICS {
        match metric.kind {
            catalog::Kind::Counter => describe_counter!(metric.name, metric.help),
            catalog::Kind::Gauge => describe_gauge!(metric.name, metric.help),
            catalog::Kind::Histogram => describe_histogram!(metric.name, metric.help),
        }
    }
}

/// Reads the process's own figures (`process_resident_memory_bytes`, `process_open_fds`,
/// `process_cpu_seconds_total`, `process_start_time_seconds`, …: metrics-process, from
/// `/proc/self`) into the current recorder. [`serve`] calls it before rendering each scrape.
pub fn collect_process() {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR
        .get_or_init(metrics_process::Collector::default)
        .collect();
}

/// The services (and their backends) whose series exist: registered by [`zero_service`] and
/// [`zero_backend`], dropped by [`forget_service`] and [`forget_backend`].
///
/// The kernel counters are exported from a snapshot of the service list taken up to a status
/// round-trip earlier, so a reload can remove a service between the snapshot and the record;
/// without this the record would bring its series back, to stay forever. The `kernel_*`
/// functions record only for what is here, under the read lock, and the `forget_*` functions
/// remove under the write lock, so no record can slip between a check and the removal.
///
/// The names are kept as `Arc<str>` and every series of a service or backend takes its label
/// value from here: one allocation per name instead of one per series (a service has a dozen
/// series, a backend with per-backend series about sixteen).
static LIVE: RwLock<Live> = RwLock::new(BTreeMap::new());

/// Services by name, each with its backends' names.
type Live = BTreeMap<Arc<str>, BTreeSet<Arc<str>>>;

fn live() -> std::sync::RwLockReadGuard<'static, Live> {
    LIVE.read().unwrap_or_else(PoisonError::into_inner)
}

fn live_mut() -> std::sync::RwLockWriteGuard<'static, Live> {
    LIVE.write().unwrap_or_else(PoisonError::into_inner)
}

/// `name` as a label value: the registered name's allocation when there is one.
fn shared(registered: Option<&Arc<str>>, name: &str) -> SharedString {
    registered.map_or_else(
        || SharedString::from(name.to_string()),
        |r| SharedString::from(Arc::clone(r)),
    )
}

/// The `service` label value of `service`.
fn service_label(service: &str) -> SharedString {
    shared(live().get_key_value(service).map(|(k, _)| k), service)
}

/// The `service` and `backend` label values of one backend.
fn backend_labels(service: &str, backend: &str) -> (SharedString, SharedString) {
    let live = live();
    let entry = live.get_key_value(service);
    (
        shared(entry.map(|(k, _)| k), service),
        shared(entry.and_then(|(_, b)| b.get(backend)), backend),
    )
}

/// A priority as a label value (`none` when refusing), without an allocation per series.
fn priority_label(p: Option<u8>) -> SharedString {
    static NUMBERS: OnceLock<Vec<&'static str>> = OnceLock::new();
    let Some(p) = p else {
        return SharedString::const_str("none");
    };
    let numbers = NUMBERS.get_or_init(|| {
        (0..=u8::MAX)
            .map(|n| &*Box::leak(n.to_string().into_boxed_str()))
            .collect()
    });
    SharedString::const_str(numbers[usize::from(p)])
}

/// Removes every series of `service`: its service, backend and kernel series.
///
/// Call it once the service is gone: after a reload removed it and its task has stopped, so
/// its own task records into its series no more (the kernel counter export, which works from
/// a snapshot, is held off here). A service started again later (also a changed service,
/// restarted by a reload) calls [`zero_service`] and starts from fresh series, its alert
/// counters at 0. Removes nothing in a recorder other than the one [`install`] installed.
pub fn forget_service(service: &str) {
    let mut live = live_mut();
    live.remove(service);
    if let Some(handle) = HANDLE.get() {
        handle.forget(|labels| labels.contains(&("service", service)));
    }
}

/// Removes every series of one backend of `service` (`backend` is the label value: the
/// backend's name, `NAME@ADDRESS` for one resolved from a hostname), and nothing else.
///
/// Call it when the backend leaves the service — removed by a reload, or its address replaced
/// by a new resolution — once its probes are unsubscribed and the service's state no longer
/// lists it, so nothing records into its series again. Removes nothing in a recorder other than
/// the one [`install`] installed.
pub fn forget_backend(service: &str, backend: &str) {
    let mut live = live_mut();
    if let Some(backends) = live.get_mut(service) {
        backends.remove(backend);
    }
    if let Some(handle) = HANDLE.get() {
        handle.forget(|labels| {
            labels.contains(&("service", service)) && labels.contains(&("backend", backend))
        });
    }
}

/// Registers the counters alerts are built on at 0, so the first real event
/// is an increase Prometheus can see (`increase()` of a series that first
/// appears at 1 is 0). Also what lets the kernel counters of `service` be exported (see
/// [`forget_service`]).
pub fn zero_service(service: &str, priorities: &[u8]) {
    let s = {
        let mut live = live_mut();
        let name = match live.get_key_value(service) {
            Some((name, _)) => Arc::clone(name),
            None => {
                let name: Arc<str> = Arc::from(service);
                live.insert(Arc::clone(&name), BTreeSet::new());
                name
            }
        };
        SharedString::from(name)
    };
    let mut labels: Vec<Option<u8>> = priorities.iter().copied().map(Some).collect();
    labels.push(None);
    for &from in &labels {
        for &to in &labels {
            if from != to {
                counter!(names::FAILOVERS, "service" => s.clone(), "from_priority" => priority_label(from), "to_priority" => priority_label(to))
                    .increment(0);
            }
        }
    }
    counter!(names::CONNECTS_REJECTED, "service" => s.clone()).increment(0);
    gauge!(names::SPLIT_BRAIN, "service" => s.clone()).set(0.0);
    for kind in KERNEL_ERROR_KINDS {
        counter!(names::KERNEL_ERRORS, "service" => s.clone(), "kind" => kind).increment(0);
    }
}

/// Like [`zero_service`], for one backend's transition and ejection counters (and its kernel
/// connect count).
pub fn zero_backend(service: &str, backend: &str) {
    // Without per-backend series nothing is recorded per backend, so nothing needs guarding:
    // at tens of thousands of backends the set alone was megabytes.
    if !per_backend() {
        return;
    }
    {
        let mut live = live_mut();
        if !live.contains_key(service) {
            live.insert(Arc::from(service), BTreeSet::new());
        }
        if let Some(backends) = live.get_mut(service) {
            if !backends.contains(backend) {
                backends.insert(Arc::from(backend));
            }
        }
    }
    let (s, b) = backend_labels(service, backend);
    for to in [
        "healthy",
        "unhealthy",
        "ejected",
        "readmitted",
        "drained",
        "undrained",
    ] {
        counter!(names::BACKEND_TRANSITIONS, "service" => s.clone(), "backend" => b.clone(), "to" => to)
            .increment(0);
    }
    counter!(names::BREAKER_EJECTIONS, "service" => s.clone(), "backend" => b.clone()).increment(0);
    counter!(names::PASSIVE_EJECTIONS, "service" => s, "backend" => b).increment(0);
}

/// The kernel reported a failed connect to a backend (`kind`: refused, syn_timeout).
pub fn passive_failure(service: &str, backend: &str, kind: &'static str) {
    if !per_backend() {
        return;
    }
    counter!(names::PASSIVE_FAILURES, "service" => service.to_string(), "backend" => backend.to_string(), "kind" => kind)
        .increment(1);
}

/// Kernel evidence ejected a backend.
pub fn passive_ejection(service: &str, backend: &str) {
    if !per_backend() {
        return;
    }
    counter!(names::PASSIVE_EJECTIONS, "service" => service.to_string(), "backend" => backend.to_string()).increment(1);
}

/// The datapath aborted `count` sockets translated to a backend, for `reason` (down,
/// demoted, removed, failback, drain, drain_after). A per-backend series like the others:
/// with `metrics.per_backend: false` only the event and the log line tell.
///
/// Recorded only for a backend registered by [`zero_backend`] and not forgotten since: a
/// backend removed by a reload or DNS is aborted after its series went, and recording it
/// would bring them back for good (the event and the log line still tell).
pub fn sockets_terminated(service: &str, backend: &str, reason: &'static str, count: u64) {
    if !per_backend() {
        return;
    }
    let live = live();
    if !live.get(service).is_some_and(|b| b.contains(backend)) {
        return;
    }
    counter!(names::SOCKETS_TERMINATED, "service" => service.to_string(), "backend" => backend.to_string(), "reason" => reason)
        .increment(count);
}

/// The kernel's counts of what became of the connects translated to one backend (absolute
/// values): established, refused, SYN timeouts, and connects diverted from it while suspect.
///
/// Recorded only for a backend registered by [`zero_backend`] and not forgotten since.
pub fn kernel_outcomes(service: &str, backend: &str, c: &crate::datapath::CounterTotals) {
    if !per_backend() {
        return;
    }
    let live = live();
    if !live.get(service).is_some_and(|b| b.contains(backend)) {
        return;
    }
    let (s, b) = (service.to_string(), backend.to_string());
    counter!(names::CONNECTS_ESTABLISHED, "service" => s.clone(), "backend" => b.clone())
        .absolute(c.established);
    counter!(names::CONNECT_FAILURES, "service" => s.clone(), "backend" => b.clone(), "kind" => "refused")
        .absolute(c.connect_failures);
    counter!(names::CONNECT_FAILURES, "service" => s.clone(), "backend" => b.clone(), "kind" => "syn_timeout")
        .absolute(c.syn_timeouts);
    counter!(names::CONNECTS_DIVERTED, "service" => s, "backend" => b).absolute(c.diverted);
}

/// A backend's probe-latency histogram: looked up once, recorded into on every probe.
pub fn probe_latency(service: &str, backend: &str) -> metrics::Histogram {
    if !per_backend() {
        return metrics::Histogram::noop();
    }
    let (s, b) = backend_labels(service, backend);
    histogram!(names::PROBE_DURATION, "service" => s, "backend" => b)
}

/// `n` probe slots were skipped because the daemon fell behind.
pub fn probes_skipped(n: u64) {
    counter!(names::PROBES_SKIPPED).increment(n);
}

/// A probe failed, for `reason`.
pub fn probe_failure(service: &str, backend: &str, error: &ProbeError) {
    if !per_backend() {
        return;
    }
    let (s, b) = backend_labels(service, backend);
    counter!(names::PROBE_FAILURES, "service" => s, "backend" => b, "reason" => error.reason())
        .increment(1);
}

/// A backend changed state (`to`: healthy, unhealthy, ejected, readmitted, drained, undrained).
pub fn transition(service: &str, backend: &str, to: &'static str) {
    if !per_backend() {
        return;
    }
    let (s, b) = backend_labels(service, backend);
    counter!(names::BACKEND_TRANSITIONS, "service" => s, "backend" => b, "to" => to).increment(1);
}

/// The breaker opened.
pub fn ejection(service: &str, backend: &str) {
    if !per_backend() {
        return;
    }
    let (s, b) = backend_labels(service, backend);
    counter!(names::BREAKER_EJECTIONS, "service" => s, "backend" => b).increment(1);
}

/// The active priority changed (from `None` = refusing, to `None` = refusing).
pub fn failover(service: &str, from: Option<u8>, to: Option<u8>) {
    counter!(names::FAILOVERS, "service" => service_label(service), "from_priority" => priority_label(from), "to_priority" => priority_label(to))
        .increment(1);
}

/// A backend's gauges.
pub fn backend(
    service: &str,
    backend: &str,
    priority: u8,
    state: &'static str,
    up: bool,
    breaker_open: bool,
) {
    if !per_backend() {
        return;
    }
    let (s, b) = backend_labels(service, backend);
    gauge!(names::BACKEND_UP, "service" => s.clone(), "backend" => b.clone(), "priority" => priority_label(Some(priority)))
        .set(f64::from(u8::from(up)));
    for candidate in ["unknown", "healthy", "unhealthy", "ejected", "drained"] {
        gauge!(names::BACKEND_STATE, "service" => s.clone(), "backend" => b.clone(), "state" => candidate)
            .set(f64::from(u8::from(candidate == state)));
    }
    gauge!(names::BREAKER_OPEN, "service" => s, "backend" => b)
        .set(f64::from(u8::from(breaker_open)));
}

/// A service's gauges.
pub fn service(service: &str, active: Option<u8>, live: usize) {
    let s = service_label(service);
    gauge!(names::SERVICE_ACTIVE_PRIORITY, "service" => s.clone())
        .set(active.map_or(-1.0, f64::from));
    gauge!(names::SERVICE_LIVE_BACKENDS, "service" => s).set(live as f64);
}

/// Whether a `role: primary` service sees more than one primary now.
pub fn split_brain(service: &str, split: bool) {
    gauge!(names::SPLIT_BRAIN, "service" => service_label(service)).set(f64::from(u8::from(split)));
}

/// A datapath write, successful or not.
pub fn datapath_write(ok: bool) {
    if ok {
        counter!(names::DATAPATH_WRITES).increment(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64());
        gauge!(names::DATAPATH_LAST_WRITE).set(now.unwrap_or(0.0));
    } else {
        counter!(names::DATAPATH_WRITE_ERRORS).increment(1);
    }
}

/// A table rewritten because the kernel did not hold what was written (`kind`: missing, altered).
pub fn datapath_repair(kind: &'static str) {
    counter!(names::DATAPATH_REPAIRS, "kind" => kind).increment(1);
}

/// How many VIPs the kernel does not hold as wanted.
pub fn datapath_failing_vips(count: usize) {
    gauge!(names::DATAPATH_FAILING_VIPS).set(count as f64);
}

/// A config reload.
pub fn reload(ok: bool) {
    counter!(names::CONFIG_RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Registers the fleet series at 0 (fleet mode only): a first refusal is then an increase
/// an alert sees, and `failoverd_fleet_connected` exists before the first session.
pub fn fleet_register() {
    fleet_connected(false);
    for result in ["ok", "error"] {
        counter!(names::FLEET_APPLIES, "result" => result).increment(0);
    }
}

/// Whether the fleet's etcd session works (recorded only in fleet mode).
pub fn fleet_connected(connected: bool) {
    gauge!(names::FLEET_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

/// A fleet state from etcd applied (`ok`) or refused with the old one kept (`error`).
pub fn fleet_apply(ok: bool) {
    counter!(names::FLEET_APPLIES, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Fleet services running on this host.
pub fn fleet_services(count: usize) {
    gauge!(names::FLEET_SERVICES).set(count as f64);
}

/// The kernel's count of connects translated to one backend (an absolute value).
///
/// Recorded only for a backend registered by [`zero_backend`] and not forgotten since.
pub fn kernel_connects(service: &str, backend: &str, connects: u64) {
    if !per_backend() {
        return;
    }
    let live = live();
    let Some((s, b)) = live
        .get_key_value(service)
        .and_then(|(s, backends)| Some((s, backends.get(backend)?)))
    else {
        return;
    };
    counter!(names::CONNECTS, "service" => SharedString::from(Arc::clone(s)), "backend" => SharedString::from(Arc::clone(b)))
        .absolute(connects);
}

/// The `kind` labels of [`names::KERNEL_ERRORS`], one per kernel counter that means a fault.
pub const KERNEL_ERROR_KINDS: [&str; 3] = ["no_sock_storage", "bad_table", "family_mismatch"];

/// The kernel's counts of a service's VIP calls it could not translate cleanly (absolute
/// values, in the order of [`KERNEL_ERROR_KINDS`]).
///
/// Recorded only for a service registered by [`zero_service`] and not forgotten since.
pub fn kernel_errors(service: &str, counts: [u64; 3]) {
    let live = live();
    let Some((s, _)) = live.get_key_value(service) else {
        return;
    };
    for (kind, count) in KERNEL_ERROR_KINDS.into_iter().zip(counts) {
        counter!(names::KERNEL_ERRORS, "service" => SharedString::from(Arc::clone(s)), "kind" => kind)
            .absolute(count);
    }
}

/// The kernel's count of connects to a service's VIP refused for want of a live backend (an
/// absolute value).
///
/// Recorded only for a service registered by [`zero_service`] and not forgotten since.
pub fn kernel_rejections(service: &str, rejected: u64) {
    let live = live();
    let Some((s, _)) = live.get_key_value(service) else {
        return;
    };
    counter!(names::CONNECTS_REJECTED, "service" => SharedString::from(Arc::clone(s)))
        .absolute(rejected);
}

/// The health word for the `to` label of a transition.
pub fn health_word(status: HealthStatus) -> &'static str {
    match status {
        HealthStatus::Unknown => "unknown",
        HealthStatus::Healthy => "healthy",
        HealthStatus::Unhealthy => "unhealthy",
    }
}

#[cfg(test)]
mod tests;
