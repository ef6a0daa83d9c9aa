//! The daemon's heap per service, counted by a global allocator: thousands of services of 8
//! backends on 8 shared probe targets (the scale bench's shared variant, in-process, over an
//! in-memory datapath with probes answered by a script), with the metrics recorder installed
//! and `metrics.per_backend: false` as docs/configuration.md advises at that size.
//!
//! It guards the structure that keeps a service small (no per-service message buffers, no
//! copies of the config per task, shared probe results); the scale bench measures the real
//! process's RSS. `FO_MEMORY_SERVICES=N` runs N services instead of the default, and the test
//! prints the bytes per service either way, so it doubles as the quick measuring tool:
//! `FO_MEMORY_EXIT=1` exits the process right after the measurement, with everything still
//! allocated, so `heaptrack` over the test binary lists exactly what a running daemon holds
//! as its "leaks". `FO_MEMORY_PER_BACKEND=1` runs with `metrics.per_backend: true` instead, to
//! measure the per-backend series too (then the budget checked is [`BUDGET_PER_BACKEND`]).
//! It also prints the size of one scrape's text and the heap the render took at its peak.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicIsize, Ordering},
    time::Duration,
};

use failoverd::{
    config, daemon,
    datapath::FakeDatapath,
    health::{HealthCheck, Probe, ProbeOk, ProbeResult},
};

/// Counts the bytes the process holds on the heap.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// The most `LIVE` has been since it was last reset (to measure one scrape's temporaries).
static PEAK: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        PEAK.fetch_max(now + layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let grown = new_size as isize - layout.size() as isize;
        let now = LIVE.fetch_add(grown, Ordering::Relaxed);
        PEAK.fetch_max(now + grown, Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Services of the default run: enough that per-service costs dwarf fixed ones.
const SERVICES: usize = 2_000;
/// Backends per service.
const BACKENDS: usize = 8;
/// Heap a service of 8 backends may hold, as this test counts it: its config (since issue
/// 14's third round the daemon runs a service on the parsed config's own allocation), and
/// the in-memory datapath's own copies and write log (about 1.4 KB) included.
/// 15.2 KiB when it was set (27 KiB per service of RSS before issue 14's changes), 16.8 KiB
/// once passive health's per-backend state, the tables' fallback groups and the id routes
/// came in, 8.6 KiB after issue 14's second round (compact metric blocks, shared tables, slots
/// and health sections, boxed work futures, inline feed readers; the config not counted then),
/// 7.0 KiB with the config after its third (backends keyed by the key they carry, names
/// shared with the config, a task future that holds the task once); a guard against
/// structure that grows per service again (by a quarter or more), not the RSS target
/// itself, which the scale bench measures.
const BUDGET_PER_SERVICE: usize = 9 * 1024;

/// Heap a service of 8 backends may hold with `metrics.per_backend: true`: the same, plus
/// 8 backends' series. 55.6 KiB with the series in the `metrics-util` registry, 18.5 KiB once
/// they moved to compact blocks (issue 14), 13.3 KiB with the rest of that round, 11.6 KiB
/// with the config after the third; a guard against them growing back.
const BUDGET_PER_BACKEND: usize = 14 * 1024 + 512;

/// Every probe passes.
struct AllUp;

impl HealthCheck for AllUp {
    fn check<'a>(
        &'a self,
        _probe: &'a Probe,
        _addr: SocketAddr,
        _timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(async {
            Ok(ProbeOk {
                latency: Duration::from_millis(1),
                detail: "connected".into(),
                role: None,
            })
        })
    }
}

fn services_yaml(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "  - name: s{i}\n    vip: '127.100.{}.{}:80'\n    health: {{ kind: tcp, interval: 1s }}\n    backends:\n",
            i / 250,
            i % 250 + 1
        ));
        for k in 0..BACKENDS {
            s.push_str(&format!(
                "      - {{ name: b{k}, address: '127.0.0.1:{}', priority: {} }}\n",
                7200 + k,
                k / (BACKENDS / 2)
            ));
        }
    }
    s
}

#[tokio::test(start_paused = true)]
async fn a_service_of_eight_shared_backends_fits_its_heap_budget() {
    let n: usize = std::env::var("FO_MEMORY_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SERVICES);
    let per_backend = std::env::var_os("FO_MEMORY_PER_BACKEND").is_some_and(|v| v == "1");
    // The recorder and its fixed series first, so they count as fixed costs.
    failoverd::metrics::install().expect("recorder");
    failoverd::metrics::set_per_backend(per_backend);
    let dir = std::env::temp_dir().join(format!("fo-memory-{}", std::process::id()));
    let yaml = format!(
        "control: {{ state_dir: {} }}\nmetrics: {{ per_backend: {per_backend} }}\nservices:\n{}",
        dir.display(),
        services_yaml(n)
    );
    // From before the parse: a running service holds its config's own allocation (as the
    // daemon does, which drops the parsed file once every service runs).
    let before = LIVE.load(Ordering::Relaxed);
    let config = config::parse(&yaml, Path::new("<memory>")).expect("config");
    let running = daemon::start_with(
        &config,
        FakeDatapath::default(),
        daemon::Drains::new(),
        std::sync::Arc::new(AllUp),
    )
    .await
    .expect("daemon starts");
    drop(config);
    let handle = running.handle();
    // Every service gets its first verdicts (rise 2 at 1 s, plus the start jitter) and its
    // table; then a few more probe rounds for the steady state.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let statuses = handle.status().await.expect("status");
    assert_eq!(statuses.len(), n);
    assert!(
        statuses.iter().all(|s| s.active_priority == Some(0)),
        "every service on its priority-0 backends"
    );
    drop(statuses);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = (LIVE.load(Ordering::Relaxed) - before).max(0) as usize;
    let per_service = held / n;
    println!(
        "{n} services × {BACKENDS} backends, per_backend {per_backend}: {:.1} MiB of heap with their configs, {per_service} bytes per service",
        held as f64 / (1024.0 * 1024.0)
    );
    if std::env::var_os("FO_MEMORY_EXIT").is_some() {
        std::process::exit(0);
    }
    // One scrape's text and the temporaries beyond it: the render streams from the series,
    // so the peak should be about the text alone. The second scrape, as every later one,
    // reserves room for the text at once.
    let recorder = failoverd::metrics::install().expect("recorder");
    drop(recorder.render());
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let text = recorder.render();
    let peak = (PEAK.load(Ordering::Relaxed) - base).max(0) as usize;
    println!(
        "a scrape: {:.1} MiB of text, {:.1} MiB of heap at its peak",
        text.len() as f64 / (1024.0 * 1024.0),
        peak as f64 / (1024.0 * 1024.0)
    );
    drop(text);
    running.shutdown().await;
    let budget = if per_backend {
        BUDGET_PER_BACKEND
    } else {
        BUDGET_PER_SERVICE
    };
    assert!(
        per_service <= budget,
        "{per_service} bytes of heap per service, over the budget of {budget}"
    );
}
