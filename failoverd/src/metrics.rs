//! Prometheus metrics: what failoverd records and when, where it is kept (the daemon-wide series
//! in the recorder, the series of each service and backend in compact blocks that go with
//! them), and the HTTP listener for `/metrics`, `/healthz` and `/readyz`.
//!
//! The names, kinds, labels and `# HELP` texts are one table, [`catalog::METRICS`], that
//! docs/metrics.md is checked against.

mod blocks;
pub mod catalog;
mod exposition;
mod labels;
mod recorder;
mod server;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock, PoisonError, RwLock,
    },
};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};

pub use catalog::names;
pub use recorder::{Handle, Recorder};
pub use server::{bind, serve, HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_LIFETIME};

use crate::health::{HealthStatus, ProbeError};
use blocks::{BackendBlock, ServiceBlock};

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
    let recorder = Recorder::new(&[]);
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

/// The services (and their backends) whose series exist, with those series: registered by
/// [`zero_service`] and [`zero_backend`], dropped by [`forget_service`] and [`forget_backend`].
///
/// Every function recording a series labelled by `service` records only into what is here,
/// under the read lock, and the `forget_*` functions remove under the write lock, so no record
/// can slip between a check and the removal and bring a forgotten series back. (The kernel
/// counters are exported from a snapshot of the service list taken up to a status round-trip
/// earlier, so a reload can remove a service between the snapshot and the record.)
///
/// Each name is kept once, as the map's `Arc<str>` key; the series are plain atomics in a
/// [`blocks::ServiceBlock`] and, with per-backend series, one [`blocks::BackendBlock`] per
/// backend (about 0.5 KiB, where the registry's 16 series took 5.3 KiB).
static LIVE: RwLock<Live> = RwLock::new(BTreeMap::new());

/// Services by name, each with its series and its backends'.
type Live = BTreeMap<Arc<str>, ServiceBlock>;

/// The map of live services: [`LIVE`], or in a unit test the one its thread renders alone.
fn live_lock() -> &'static RwLock<Live> {
    #[cfg(test)]
    if let Some(local) = tests::LOCAL_LIVE.with(std::cell::Cell::get) {
        return local;
    }
    &LIVE
}

fn live() -> std::sync::RwLockReadGuard<'static, Live> {
    live_lock().read().unwrap_or_else(PoisonError::into_inner)
}

fn live_mut() -> std::sync::RwLockWriteGuard<'static, Live> {
    live_lock().write().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on the block of `service`, if it is live.
fn with_service(service: &str, f: impl FnOnce(&ServiceBlock)) {
    if let Some(block) = live().get(service) {
        f(block);
    }
}

/// Runs `f` on the block of one backend of `service`, if per-backend series are on and the
/// backend is live.
fn with_backend(service: &str, backend: &str, f: impl FnOnce(&Arc<BackendBlock>)) {
    if !per_backend() {
        return;
    }
    if let Some(block) = live().get(service).and_then(|s| s.backends.get(backend)) {
        f(block);
    }
}

/// Removes every series of `service`: its service, backend and kernel series.
///
/// Call it once the service is gone: after a reload removed it and its task has stopped, so
/// its own task records into its series no more (the kernel counter export, which works from
/// a snapshot, is held off here). A service started again later (also a changed service,
/// restarted by a reload) calls [`zero_service`] and starts from fresh series, its alert
/// counters at 0.
pub fn forget_service(service: &str) {
    live_mut().remove(service);
}

/// Removes every series of one backend of `service` (`backend` is the label value: the
/// backend's name, `NAME@ADDRESS` for one resolved from a hostname), and nothing else.
///
/// Call it when the backend leaves the service — removed by a reload, or its address replaced
/// by a new resolution — once its probes are unsubscribed and the service's state no longer
/// lists it, so nothing records into its series again. A latency handle from
/// [`probe_latency`] still held records into nothing that is rendered.
pub fn forget_backend(service: &str, backend: &str) {
    if let Some(block) = live_mut().get_mut(service) {
        block.backends.remove(backend);
    }
}

/// Registers the counters alerts are built on at 0, so the first real event
/// is an increase Prometheus can see (`increase()` of a series that first
/// appears at 1 is 0). Also what lets the kernel counters of `service` be exported (see
/// [`forget_service`]).
pub fn zero_service(service: &str, priorities: &[u8]) {
    let mut live = live_mut();
    if !live.contains_key(service) {
        live.insert(Arc::from(service), ServiceBlock::default());
    }
    let Some(block) = live.get(service) else {
        return;
    };
    // connects_rejected, split_brain and the kernel errors exist with the block, at 0.
    let mut labels: Vec<Option<u8>> = priorities.iter().copied().map(Some).collect();
    labels.push(None);
    for &from in &labels {
        for &to in &labels {
            if from != to {
                block.failover(from, to, 0);
            }
        }
    }
}

/// Like [`zero_service`], for one backend's transition and ejection counters (and its kernel
/// connect count). Without per-backend series it registers nothing: nothing is recorded per
/// backend then.
pub fn zero_backend(service: &str, backend: &str) {
    if !per_backend() {
        return;
    }
    let mut live = live_mut();
    if !live.contains_key(service) {
        live.insert(Arc::from(service), ServiceBlock::default());
    }
    let Some(block) = live.get_mut(service) else {
        return;
    };
    if !block.backends.contains_key(backend) {
        block
            .backends
            .insert(Arc::from(backend), Arc::new(BackendBlock::default()));
    }
    if let Some(b) = block.backends.get(backend) {
        b.zero();
    }
}

/// The kernel reported a failed connect to a backend (`kind`: refused, syn_timeout).
///
/// Recorded only for a backend registered by [`zero_backend`] and not forgotten since.
pub fn passive_failure(service: &str, backend: &str, kind: &'static str) {
    with_backend(service, backend, |b| {
        if let Some(i) = labels::index(&labels::CONNECT_KINDS, kind) {
            b.add(&b.passive_failures, blocks::bit::PASSIVE_FAILURE, i, 1);
        }
    });
}

/// Kernel evidence ejected a backend.
///
/// Recorded only for a backend registered by [`zero_backend`] and not forgotten since.
pub fn passive_ejection(service: &str, backend: &str) {
    with_backend(service, backend, |b| {
        b.passive_ejections.fetch_add(1, Ordering::Relaxed);
        b.mark(blocks::bit::EJECTIONS);
    });
}

/// The datapath aborted `count` sockets translated to a backend, for `reason` (down,
/// demoted, removed, failback, drain, drain_after). A per-backend series like the others:
/// with `metrics.per_backend: false` only the event and the log line tell.
///
/// Recorded only for a backend registered by [`zero_backend`] and not forgotten since: a
/// backend removed by a reload or DNS is aborted after its series went, and recording it
/// would bring them back for good (the event and the log line still tell).
pub fn sockets_terminated(service: &str, backend: &str, reason: &'static str, count: u64) {
    with_backend(service, backend, |b| {
        if let Some(i) = labels::index(&labels::TERMINATE_REASONS, reason) {
            b.add(&b.terminated, blocks::bit::TERMINATED, i, count);
        }
    });
}

/// The kernel's counts of what became of the connects translated to one backend (absolute
/// values): established, refused, SYN timeouts, and connects diverted from it while suspect.
///
/// Recorded only for a backend registered by [`zero_backend`] and not forgotten since.
pub fn kernel_outcomes(service: &str, backend: &str, c: &crate::datapath::CounterTotals) {
    with_backend(service, backend, |b| {
        // `fetch_max`, as the registry's `Counter::absolute` did: never backwards.
        b.established.fetch_max(c.established, Ordering::Relaxed);
        b.connect_failures[0].fetch_max(c.connect_failures, Ordering::Relaxed);
        b.connect_failures[1].fetch_max(c.syn_timeouts, Ordering::Relaxed);
        b.diverted.fetch_max(c.diverted, Ordering::Relaxed);
        b.mark(blocks::bit::OUTCOMES);
    });
}

/// A backend's probe-latency histogram: looked up once, recorded into on every probe. A no-op
/// without per-backend series or for a backend not registered by [`zero_backend`].
pub fn probe_latency(service: &str, backend: &str) -> metrics::Histogram {
    let mut handle = metrics::Histogram::noop();
    with_backend(service, backend, |b| {
        b.mark(blocks::bit::LATENCY);
        handle = metrics::Histogram::from_arc(Arc::clone(b));
    });
    handle
}

/// `n` probe slots were skipped because the daemon fell behind.
pub fn probes_skipped(n: u64) {
    counter!(names::PROBES_SKIPPED).increment(n);
}

/// A probe failed, for `reason`.
///
/// Recorded only for a backend registered by [`zero_backend`] and not forgotten since.
pub fn probe_failure(service: &str, backend: &str, error: &ProbeError) {
    with_backend(service, backend, |b| {
        if let Some(i) = labels::index(&labels::PROBE_REASONS, error.reason()) {
            b.add(&b.probe_failures, blocks::bit::PROBE_FAILURE, i, 1);
        }
    });
}

/// A backend changed state (`to`: healthy, unhealthy, ejected, readmitted, drained, undrained).
///
/// Recorded only for a backend registered by [`zero_backend`] and not forgotten since.
pub fn transition(service: &str, backend: &str, to: &'static str) {
    with_backend(service, backend, |b| {
        if let Some(i) = labels::index(&labels::TRANSITIONS, to) {
            b.add(&b.transitions, blocks::bit::TRANSITION, i, 1);
        }
    });
}

/// The breaker opened.
///
/// Recorded only for a backend registered by [`zero_backend`] and not forgotten since.
pub fn ejection(service: &str, backend: &str) {
    with_backend(service, backend, |b| {
        b.breaker_ejections.fetch_add(1, Ordering::Relaxed);
        b.mark(blocks::bit::EJECTIONS);
    });
}

/// The active priority changed (from `None` = refusing, to `None` = refusing).
///
/// Recorded only for a service registered by [`zero_service`] and not forgotten since.
pub fn failover(service: &str, from: Option<u8>, to: Option<u8>) {
    with_service(service, |s| s.failover(from, to, 1));
}

/// A backend's gauges.
///
/// Recorded only for a backend registered by [`zero_backend`] and not forgotten since.
pub fn backend(
    service: &str,
    backend: &str,
    priority: u8,
    state: &'static str,
    up: bool,
    breaker_open: bool,
) {
    with_backend(service, backend, |b| {
        if let Some(state) = labels::index(&labels::STATES, state) {
            b.set_gauges(priority, state, up, breaker_open);
        }
    });
}

/// A service's gauges.
///
/// Recorded only for a service registered by [`zero_service`] and not forgotten since.
pub fn service(service: &str, active: Option<u8>, live: usize) {
    with_service(service, |s| {
        s.active
            .store(active.map_or(-1, i16::from), Ordering::Relaxed);
        s.live.store(live as u64, Ordering::Relaxed);
        s.gauges_set.store(true, Ordering::Relaxed);
    });
}

/// Whether a `role: primary` service sees more than one primary now.
///
/// Recorded only for a service registered by [`zero_service`] and not forgotten since.
pub fn split_brain(service: &str, split: bool) {
    with_service(service, |s| s.split_brain.store(split, Ordering::Relaxed));
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
    with_backend(service, backend, |b| {
        b.connects.fetch_max(connects, Ordering::Relaxed);
        b.mark(blocks::bit::CONNECTS);
    });
}

/// The `kind` labels of [`names::KERNEL_ERRORS`], one per kernel counter that means a fault.
pub const KERNEL_ERROR_KINDS: [&str; 3] = ["no_sock_storage", "bad_table", "family_mismatch"];

/// The kernel's counts of a service's VIP calls it could not translate cleanly (absolute
/// values, in the order of [`KERNEL_ERROR_KINDS`]).
///
/// Recorded only for a service registered by [`zero_service`] and not forgotten since.
pub fn kernel_errors(service: &str, counts: [u64; 3]) {
    with_service(service, |s| {
        for (counter, count) in s.kernel_errors.iter().zip(counts) {
            counter.fetch_max(count, Ordering::Relaxed);
        }
    });
}

/// The kernel's count of connects to a service's VIP refused for want of a live backend (an
/// absolute value).
///
/// Recorded only for a service registered by [`zero_service`] and not forgotten since.
pub fn kernel_rejections(service: &str, rejected: u64) {
    with_service(service, |s| {
        s.rejected.fetch_max(rejected, Ordering::Relaxed);
    });
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
