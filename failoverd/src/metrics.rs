//! Prometheus metrics: the names (a public contract, see docs/metrics.md), the
//! recorder, and the HTTP listener for `/metrics`, `/healthz` and `/readyz`.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    health::{HealthStatus, ProbeError},
    limits::{AcceptGate, Listener},
};

/// Every metric name failoverd exports.
pub mod names {
    /// 1 when the backend takes new connections (it is in the VIP's table).
    pub const BACKEND_UP: &str = "failoverd_backend_up";
    /// 1 for the backend's current state, 0 for the others.
    pub const BACKEND_STATE: &str = "failoverd_backend_state";
    /// Backend state changes, by the state changed to.
    pub const BACKEND_TRANSITIONS: &str = "failoverd_backend_transitions_total";
    /// Priority taking new connections; -1 when connects are refused.
    pub const SERVICE_ACTIVE_PRIORITY: &str = "failoverd_service_active_priority";
    /// Live backends of the service.
    pub const SERVICE_LIVE_BACKENDS: &str = "failoverd_service_live_backends";
    /// Changes of the active priority (failovers and failbacks).
    pub const FAILOVERS: &str = "failoverd_failovers_total";
    /// Probe latency.
    pub const PROBE_DURATION: &str = "failoverd_probe_duration_seconds";
    /// Failed probes, by reason.
    pub const PROBE_FAILURES: &str = "failoverd_probe_failures_total";
    /// Probe slots skipped because the daemon fell behind (each stretches detection).
    pub const PROBES_SKIPPED: &str = "failoverd_probes_skipped_total";
    /// 1 while the breaker holds the backend out.
    pub const BREAKER_OPEN: &str = "failoverd_breaker_open";
    /// Times the breaker opened.
    pub const BREAKER_EJECTIONS: &str = "failoverd_breaker_ejections_total";
    /// Connects the kernel translated to the backend.
    pub const CONNECTS: &str = "failoverd_connects_total";
    /// Connects the kernel refused (no live backend).
    pub const CONNECTS_REJECTED: &str = "failoverd_connects_rejected_total";
    /// Counter: calls to a service's VIP the kernel could not translate cleanly, by `kind`.
    pub const KERNEL_ERRORS: &str = "failoverd_kernel_translation_errors_total";
    /// Datapath writes.
    pub const DATAPATH_WRITES: &str = "failoverd_datapath_writes_total";
    /// Failed datapath writes.
    pub const DATAPATH_WRITE_ERRORS: &str = "failoverd_datapath_write_errors_total";
    /// Tables rewritten because the kernel did not hold what was written, by kind (missing, altered).
    pub const DATAPATH_REPAIRS: &str = "failoverd_datapath_repairs_total";
    /// VIPs whose table the kernel does not hold as wanted (failing writes, or the datapath gone).
    pub const DATAPATH_FAILING_VIPS: &str = "failoverd_datapath_failing_vips";
    /// When the datapath was last written (Unix seconds).
    pub const DATAPATH_LAST_WRITE: &str = "failoverd_datapath_last_write_timestamp_seconds";
    /// Config reloads, by result (ok, error).
    pub const CONFIG_RELOADS: &str = "failoverd_config_reloads_total";
    /// 1, labelled with the version.
    pub const BUILD_INFO: &str = "failoverd_build_info";
    /// Panics in the daemon. Best effort: a panic ends the process, so a scrape sees 1 only if
    /// it lands between the panic and the exit; alert on restarts instead (docs/metrics.md).
    pub const PANICS: &str = "failoverd_panics_total";
}

/// The most metrics connections served at once: 64. More wait in the kernel's backlog, which
/// costs the daemon no file descriptor.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a metrics client may take to send a request's headers, or stay idle between
/// requests: 5 s (a scraper sends its request at once).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest a metrics connection may stay open: 30 s, whatever it does (it also bounds a
/// client that never reads its answer).
pub const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Probe latency buckets: 0.5 ms to 5 s (probes time out well before that).
const PROBE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The recorder could not be built.
    #[error("setting up the Prometheus recorder: {message}")]
    Recorder {
        /// What went wrong.
        message: String,
    },
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

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

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

/// How often `serve` drains recorded histogram samples into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the global recorder once (later calls return the same handle), and sets build_info.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(names::PROBE_DURATION.to_string()),
            PROBE_BUCKETS,
        )
        .map_err(|e| MetricsError::Recorder {
            message: e.to_string(),
        })?
        .build_recorder();
    let handle = recorder.handle();
    // Another thread may have won the race; then its recorder stays.
    if metrics::set_global_recorder(recorder).is_ok() {
        // Only the winner's handle sees the metrics; store it.
        HANDLE.set(handle).ok();
    }
    gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // At 0 from the start, so an alert sees the first error as an increase.
    counter!(names::PROBES_SKIPPED).increment(0);
    counter!(names::DATAPATH_WRITES).increment(0);
    counter!(names::DATAPATH_WRITE_ERRORS).increment(0);
    counter!(names::CONFIG_RELOADS, "result" => "ok").increment(0);
    counter!(names::CONFIG_RELOADS, "result" => "error").increment(0);
    counter!(names::PANICS).increment(0);
    HANDLE.get().cloned().ok_or_else(|| MetricsError::Recorder {
        message: "another metrics recorder is already installed".into(),
    })
}

/// Binds `metrics.listen` and logs the address it got (with port 0, the port the kernel chose).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    match listener.local_addr() {
        Ok(bound) => tracing::info!(addr = %bound, "metrics listening"),
        Err(e) => {
            tracing::warn!(addr = %addr, error = %e, "metrics listening; its local address is unknown")
        }
    }
    Ok(listener)
}

/// Serves `/metrics`, `/healthz` (alive) and `/readyz` (`ready()` true: first
/// verdicts in, datapath attached) until `shutdown` turns true.
///
/// Any local user can reach this port, so what a client may take is bounded: at most
/// [`MAX_CONNECTIONS`] at once, [`HEADER_TIMEOUT`] to send a request, [`MAX_LIFETIME`] in all,
/// and nothing is accepted while the daemon is short of file descriptors (the probes' reserve,
/// see [`crate::limits`]). Failed accepts back off from 100 ms to 1 s and are logged once per
/// burst.
pub async fn serve<R, F>(
    listener: TcpListener,
    handle: PrometheusHandle,
    ready: R,
    mut shutdown: watch::Receiver<bool>,
) where
    R: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = bool> + Send,
{
    // Histogram samples pile up in the recorder until something drains them: a scrape does,
    // but a daemon nobody scrapes grew by megabytes a second at 10,000 VIPs. Upkeep drains
    // them into the buckets on a timer.
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gate = AcceptGate::new(Listener::Metrics, MAX_CONNECTIONS);
    loop {
        let ((stream, _), permit) = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = upkeep.tick() => {
                handle.run_upkeep();
                continue;
            }
            accepted = gate.accept(|| listener.accept()) => accepted,
        };
        let (handle, ready) = (handle.clone(), ready.clone());
        tokio::spawn(async move {
            // Released when the connection ends, letting the next one in.
            let _permit = permit;
            let service = service_fn(move |request: Request<Incoming>| {
                let (handle, ready) = (handle.clone(), ready.clone());
                async move { Ok::<_, Infallible>(respond(request.uri().path(), &handle, ready).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(MAX_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                // A scrape that hangs up early, or a header timeout, is not worth more than a
                // debug line.
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended with an error"),
                Err(_) => tracing::debug!("metrics connection cut at its deadline"),
            }
        });
    }
}

async fn respond<R, F>(path: &str, handle: &PrometheusHandle, ready: R) -> Response<Full<Bytes>>
where
    R: Fn() -> F,
    F: Future<Output = bool>,
{
    let (status, body, content_type) = match path {
        "/metrics" => (StatusCode::OK, handle.render(), "text/plain; version=0.0.4"),
        "/healthz" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/readyz" if ready().await => (StatusCode::OK, "ready\n".to_string(), "text/plain"),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for first verdicts\n".to_string(),
            "text/plain",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
            "text/plain",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Registers the counters alerts are built on at 0, so the first real event
/// is an increase Prometheus can see (`increase()` of a series that first
/// appears at 1 is 0).
pub fn zero_service(service: &str, priorities: &[u8]) {
    let mut labels: Vec<Option<u8>> = priorities.iter().copied().map(Some).collect();
    labels.push(None);
    for &from in &labels {
        for &to in &labels {
            if from != to {
                let label = |p: Option<u8>| p.map_or_else(|| "none".to_string(), |p| p.to_string());
                counter!(names::FAILOVERS, "service" => service.to_string(), "from_priority" => label(from), "to_priority" => label(to))
                    .increment(0);
            }
        }
    }
    counter!(names::CONNECTS_REJECTED, "service" => service.to_string()).increment(0);
    for kind in KERNEL_ERROR_KINDS {
        counter!(names::KERNEL_ERRORS, "service" => service.to_string(), "kind" => kind)
            .increment(0);
    }
}

/// Like [`zero_service`], for one backend's transition and ejection counters.
pub fn zero_backend(service: &str, backend: &str) {
    if !per_backend() {
        return;
    }
    for to in [
        "healthy",
        "unhealthy",
        "ejected",
        "readmitted",
        "drained",
        "undrained",
    ] {
        counter!(names::BACKEND_TRANSITIONS, "service" => service.to_string(), "backend" => backend.to_string(), "to" => to)
            .increment(0);
    }
    counter!(names::BREAKER_EJECTIONS, "service" => service.to_string(), "backend" => backend.to_string()).increment(0);
}

/// A backend's probe-latency histogram: looked up once, recorded into on every probe.
pub fn probe_latency(service: &str, backend: &str) -> metrics::Histogram {
    if !per_backend() {
        return metrics::Histogram::noop();
    }
    histogram!(names::PROBE_DURATION, "service" => service.to_string(), "backend" => backend.to_string())
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
    counter!(names::PROBE_FAILURES, "service" => service.to_string(), "backend" => backend.to_string(), "reason" => error.reason())
        .increment(1);
}

/// A backend changed state (`to`: healthy, unhealthy, ejected, readmitted, drained, undrained).
pub fn transition(service: &str, backend: &str, to: &'static str) {
    if !per_backend() {
        return;
    }
    counter!(names::BACKEND_TRANSITIONS, "service" => service.to_string(), "backend" => backend.to_string(), "to" => to)
        .increment(1);
}

/// The breaker opened.
pub fn ejection(service: &str, backend: &str) {
    if !per_backend() {
        return;
    }
    counter!(names::BREAKER_EJECTIONS, "service" => service.to_string(), "backend" => backend.to_string()).increment(1);
}

/// The active priority changed (from `None` = refusing, to `None` = refusing).
pub fn failover(service: &str, from: Option<u8>, to: Option<u8>) {
    let label = |p: Option<u8>| p.map_or_else(|| "none".to_string(), |p| p.to_string());
    counter!(names::FAILOVERS, "service" => service.to_string(), "from_priority" => label(from), "to_priority" => label(to))
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
    let (s, b) = (service.to_string(), backend.to_string());
    gauge!(names::BACKEND_UP, "service" => s.clone(), "backend" => b.clone(), "priority" => priority.to_string())
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
    gauge!(names::SERVICE_ACTIVE_PRIORITY, "service" => service.to_string())
        .set(active.map_or(-1.0, f64::from));
    gauge!(names::SERVICE_LIVE_BACKENDS, "service" => service.to_string()).set(live as f64);
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

/// The kernel's count of connects translated to one backend (an absolute value).
pub fn kernel_connects(service: &str, backend: &str, connects: u64) {
    if !per_backend() {
        return;
    }
    counter!(names::CONNECTS, "service" => service.to_string(), "backend" => backend.to_string())
        .absolute(connects);
}

/// The `kind` labels of [`names::KERNEL_ERRORS`], one per kernel counter that means a fault.
pub const KERNEL_ERROR_KINDS: [&str; 3] = ["no_sock_storage", "bad_table", "family_mismatch"];

/// The kernel's counts of a service's VIP calls it could not translate cleanly (absolute
/// values, in the order of [`KERNEL_ERROR_KINDS`]).
pub fn kernel_errors(service: &str, counts: [u64; 3]) {
    for (kind, count) in KERNEL_ERROR_KINDS.into_iter().zip(counts) {
        counter!(names::KERNEL_ERRORS, "service" => service.to_string(), "kind" => kind)
            .absolute(count);
    }
}

/// The kernel's count of connects to a service's VIP refused for want of a live backend (an
/// absolute value).
pub fn kernel_rejections(service: &str, rejected: u64) {
    counter!(names::CONNECTS_REJECTED, "service" => service.to_string()).absolute(rejected);
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
mod tests {
    use super::*;

    /// What `record` leaves in a fresh recorder's exposition.
    fn rendered(record: impl FnOnce()) -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, record);
        handle.render()
    }

    fn every_backend_series() {
        zero_backend("orders", "db-a");
        probe_latency("orders", "db-a").record(0.001);
        transition("orders", "db-a", "healthy");
        ejection("orders", "db-a");
        backend("orders", "db-a", 0, "healthy", true, false);
        kernel_connects("orders", "db-a", 7);
        kernel_rejections("orders", 2);
        service("orders", Some(0), 1);
    }

    /// A metrics server on an ephemeral port, stopped when the sender drops.
    async fn server() -> (SocketAddr, watch::Sender<bool>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, handle, || async { true }, stopped));
        (addr, stop)
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_no_request_is_cut_after_the_header_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, _stop) = server().await;
        let started = tokio::time::Instant::now();
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        // Paused time jumps to the next timer: the header timeout, not the 30 s deadline.
        let n = idle.read(&mut buf).await.unwrap_or(0);
        assert!(
            started.elapsed() >= HEADER_TIMEOUT && started.elapsed() < MAX_LIFETIME,
            "cut after {:?}; read {n} bytes",
            started.elapsed()
        );
        // A client that does send one is answered.
        let mut scraper = tokio::net::TcpStream::connect(addr).await.unwrap();
        scraper
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        scraper.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
            "{answer}"
        );
    }

    #[test]
    fn per_backend_off_leaves_only_service_series() {
        // One test flips the global switch, so both halves live here, in order.
        set_per_backend(true);
        let on = rendered(every_backend_series);
        assert!(on.contains(r#"backend="db-a""#), "{on}");
        set_per_backend(false);
        let off = rendered(every_backend_series);
        set_per_backend(true);
        assert!(
            !off.contains("db-a"),
            "no per-backend series when off:\n{off}"
        );
        assert!(
            off.contains(r#"failoverd_service_live_backends{service="orders"} 1"#)
                && off.contains(r#"failoverd_connects_rejected_total{service="orders"} 2"#),
            "service series stay:\n{off}"
        );
    }
}
