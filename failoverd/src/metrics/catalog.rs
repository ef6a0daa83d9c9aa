//! Every metric failoverd exports, in one table: name, kind, labels and the `# HELP` text.
//!
//! The names are a public contract (only ever added to). `docs/metrics.md` lists the same
//! metrics with the same kinds and labels, and each row's meaning there begins with the help
//! text here; `tests::the_doc_table_matches_the_catalog` holds the two together.

/// What a metric is, as Prometheus's `# TYPE` line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets on restart).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Bucketed samples (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl Kind {
    /// The word of the `# TYPE` line and of docs/metrics.md's type column.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The full name, as scraped.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its label names, in the order they are written.
    pub labels: &'static [&'static str],
    /// The `# HELP` text: the start of the meaning in docs/metrics.md.
    pub help: &'static str,
}

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
    /// 1 while more than one backend of a `role: primary` service answers "primary".
    pub const SPLIT_BRAIN: &str = "failoverd_split_brain";
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
    /// Translated TCP connects to the backend that completed the handshake (kernel-observed).
    pub const CONNECTS_ESTABLISHED: &str = "failoverd_connects_established_total";
    /// Translated TCP connects to the backend that failed, by kind (kernel-observed).
    pub const CONNECT_FAILURES: &str = "failoverd_connect_failures_total";
    /// Connects the kernel sent elsewhere because the backend was marked suspect.
    pub const CONNECTS_DIVERTED: &str = "failoverd_connects_diverted_total";
    /// Kernel-observed connect failures the daemon received, by kind (passive health).
    pub const PASSIVE_FAILURES: &str = "failoverd_passive_failures_total";
    /// Times kernel evidence ejected the backend (passive health).
    pub const PASSIVE_EJECTIONS: &str = "failoverd_passive_ejections_total";
    /// Sockets translated to the backend that the datapath aborted, by reason.
    pub const SOCKETS_TERMINATED: &str = "failoverd_sockets_terminated_total";
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
    /// 1 while the daemon has a working session with etcd (fleet mode only).
    pub const FLEET_CONNECTED: &str = "failoverd_fleet_connected";
    /// Fleet states applied from etcd, by result (ok, error: refused, the old set kept).
    pub const FLEET_APPLIES: &str = "failoverd_fleet_applies_total";
    /// Fleet services running on this host.
    pub const FLEET_SERVICES: &str = "failoverd_fleet_services";
    /// 1, labelled with the version.
    pub const BUILD_INFO: &str = "failoverd_build_info";
    /// Panics in the daemon. Best effort: a panic ends the process, so a scrape sees 1 only if
    /// it lands between the panic and the exit; alert on restarts instead (docs/metrics.md).
    pub const PANICS: &str = "failoverd_panics_total";

    /// CPU time the process used, user and system (whole seconds: metrics-process records
    /// counters as integers).
    pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
    /// Open file descriptors.
    pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
    /// The soft limit on open file descriptors.
    pub const PROCESS_MAX_FDS: &str = "process_max_fds";
    /// Virtual memory size.
    pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
    /// The limit on virtual memory size.
    pub const PROCESS_VIRTUAL_MEMORY_MAX: &str = "process_virtual_memory_max_bytes";
    /// Resident memory size.
    pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
    /// When the process started (Unix seconds).
    pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
    /// OS threads of the process.
    pub const PROCESS_THREADS: &str = "process_threads";
}

use names::*;
use Kind::{Counter, Gauge, Histogram};

const SB: &[&str] = &["service", "backend"];

/// Every metric failoverd exports, in docs/metrics.md's order.
pub const METRICS: &[Metric] = &[
    // Backends.
    Metric {
        name: BACKEND_UP,
        kind: Gauge,
        labels: &["service", "backend", "priority"],
        help: "1 when the backend takes new connections (it is in the VIP's table), else 0",
    },
    Metric {
        name: BACKEND_STATE,
        kind: Gauge,
        labels: &["service", "backend", "state"],
        help: "1 for the current state",
    },
    Metric {
        name: BACKEND_TRANSITIONS,
        kind: Counter,
        labels: &["service", "backend", "to"],
        help: "state changes",
    },
    Metric {
        name: PROBE_DURATION,
        kind: Histogram,
        labels: SB,
        help: "probe latency",
    },
    Metric {
        name: PROBE_FAILURES,
        kind: Counter,
        labels: &["service", "backend", "reason"],
        help: "failed probes",
    },
    Metric {
        name: PROBES_SKIPPED,
        kind: Counter,
        labels: &[],
        help: "probe slots skipped because the daemon fell behind",
    },
    Metric {
        name: BREAKER_OPEN,
        kind: Gauge,
        labels: SB,
        help: "1 while the circuit breaker holds the backend out (open or half-open)",
    },
    Metric {
        name: BREAKER_EJECTIONS,
        kind: Counter,
        labels: SB,
        help: "times the breaker opened",
    },
    Metric {
        name: CONNECTS,
        kind: Counter,
        labels: SB,
        help: "connects the kernel translated to the backend",
    },
    Metric {
        name: CONNECTS_ESTABLISHED,
        kind: Counter,
        labels: SB,
        help: "translated TCP connects to the backend that completed the handshake, as the kernel saw them",
    },
    Metric {
        name: CONNECT_FAILURES,
        kind: Counter,
        labels: &["service", "backend", "kind"],
        help: "translated TCP connects to the backend that failed before the handshake completed, as the kernel saw them",
    },
    Metric {
        name: CONNECTS_DIVERTED,
        kind: Counter,
        labels: SB,
        help: "connects the kernel sent to another backend because this one was marked suspect",
    },
    Metric {
        name: PASSIVE_FAILURES,
        kind: Counter,
        labels: &["service", "backend", "kind"],
        help: "kernel-observed connect failures the daemon received (passive health)",
    },
    Metric {
        name: PASSIVE_EJECTIONS,
        kind: Counter,
        labels: SB,
        help: "times kernel-observed connect failures ejected the backend",
    },
    Metric {
        name: SOCKETS_TERMINATED,
        kind: Counter,
        labels: &["service", "backend", "reason"],
        help: "sockets translated to the backend that the datapath aborted",
    },
    // Services.
    Metric {
        name: SERVICE_ACTIVE_PRIORITY,
        kind: Gauge,
        labels: &["service"],
        help: "the priority taking new connections",
    },
    Metric {
        name: SERVICE_LIVE_BACKENDS,
        kind: Gauge,
        labels: &["service"],
        help: "backends that are healthy, not ejected, not drained, weight > 0",
    },
    Metric {
        name: SPLIT_BRAIN,
        kind: Gauge,
        labels: &["service"],
        help: "1 while more than one backend of a role: primary service answers primary",
    },
    Metric {
        name: FAILOVERS,
        kind: Counter,
        labels: &["service", "from_priority", "to_priority"],
        help: "changes of the active priority after start-up, failbacks included",
    },
    Metric {
        name: CONNECTS_REJECTED,
        kind: Counter,
        labels: &["service"],
        help: "connects the kernel refused with ECONNREFUSED because no backend was live",
    },
    // The daemon.
    Metric {
        name: DATAPATH_WRITES,
        kind: Counter,
        labels: &[],
        help: "successful map writes (one per changed VIP table)",
    },
    Metric {
        name: DATAPATH_WRITE_ERRORS,
        kind: Counter,
        labels: &[],
        help: "failed map write attempts",
    },
    Metric {
        name: KERNEL_ERRORS,
        kind: Counter,
        labels: &["service", "kind"],
        help: "calls to the service's VIP the kernel could not translate cleanly",
    },
    Metric {
        name: DATAPATH_FAILING_VIPS,
        kind: Gauge,
        labels: &[],
        help: "VIPs whose table the kernel does not hold as wanted",
    },
    Metric {
        name: DATAPATH_REPAIRS,
        kind: Counter,
        labels: &["kind"],
        help: "tables rewritten because the writer's read-back (every 2 s) found them missing or altered",
    },
    Metric {
        name: DATAPATH_LAST_WRITE,
        kind: Gauge,
        labels: &[],
        help: "Unix time of the last successful write",
    },
    Metric {
        name: CONFIG_RELOADS,
        kind: Counter,
        labels: &["result"],
        help: "reloads (failoverd reload or SIGHUP)",
    },
    Metric {
        name: FLEET_CONNECTED,
        kind: Gauge,
        labels: &[],
        help: "1 while the daemon has a working session with etcd",
    },
    Metric {
        name: FLEET_APPLIES,
        kind: Counter,
        labels: &["result"],
        help: "fleet states from etcd applied",
    },
    Metric {
        name: FLEET_SERVICES,
        kind: Gauge,
        labels: &[],
        help: "fleet services running on this host",
    },
    Metric {
        name: BUILD_INFO,
        kind: Gauge,
        labels: &["version"],
        help: "always 1",
    },
    Metric {
        name: PANICS,
        kind: Counter,
        labels: &[],
        help: "panics in the daemon",
    },
    // The process (collected by metrics-process on every scrape).
    Metric {
        name: PROCESS_CPU,
        kind: Counter,
        labels: &[],
        help: "CPU time the process used, user and system, in whole seconds",
    },
    Metric {
        name: PROCESS_OPEN_FDS,
        kind: Gauge,
        labels: &[],
        help: "open file descriptors",
    },
    Metric {
        name: PROCESS_MAX_FDS,
        kind: Gauge,
        labels: &[],
        help: "the soft limit on open file descriptors",
    },
    Metric {
        name: PROCESS_VIRTUAL_MEMORY,
        kind: Gauge,
        labels: &[],
        help: "virtual memory size in bytes",
    },
    Metric {
        name: PROCESS_VIRTUAL_MEMORY_MAX,
        kind: Gauge,
        labels: &[],
        help: "the limit on virtual memory size in bytes",
    },
    Metric {
        name: PROCESS_RESIDENT_MEMORY,
        kind: Gauge,
        labels: &[],
        help: "resident memory size in bytes",
    },
    Metric {
        name: PROCESS_START_TIME,
        kind: Gauge,
        labels: &[],
        help: "when the process started, in Unix seconds",
    },
    Metric {
        name: PROCESS_THREADS,
        kind: Gauge,
        labels: &[],
        help: "OS threads of the process",
    },
];

/// The catalog entry of `name`.
pub fn find(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}
