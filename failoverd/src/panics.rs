//! The daemon's panic policy: a panic anywhere is logged with its location, counted, and ends
//! the process, so systemd restarts it while the pinned datapath keeps serving the last tables.
//!
//! Without it a panic ends only its task: tokio catches it, and the daemon lives on with a
//! service nobody manages or a signal handler that is gone — it looks alive and fails over
//! nothing. A restart adopts the pinned tables without a blip, so dying is the safer answer.
//!
//! The process ends with `abort()`, not `exit()`: `exit` runs `atexit` handlers and flushes
//! stdio while the other worker threads keep running, possibly against state the panic left
//! half-changed, and a handler may need a lock the panicking thread holds; `abort` stops
//! everything at once, cannot deadlock, and systemd records it as a crash (SIGABRT, with a core
//! dump where they are enabled) and restarts the unit (`Restart=on-failure`).

use std::panic::PanicHookInfo;

/// What is logged about a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanicReport {
    /// The thread's name (`tokio-runtime-worker`, `main`), or `unnamed`.
    pub thread: String,
    /// `file:line:column` of the panic, or `unknown`.
    pub location: String,
    /// The panic's message, or a placeholder when its payload is not a string.
    pub message: String,
}

impl PanicReport {
    /// Describes the panic `info` is about, on the current thread.
    pub fn of(info: &PanicHookInfo<'_>) -> PanicReport {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a panic payload that is not a string)".to_owned());
        PanicReport {
            thread: std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_owned(),
            location: info.location().map_or_else(
                || "unknown".to_owned(),
                |l| format!("{}:{}:{}", l.file(), l.line(), l.column()),
            ),
            message,
        }
    }
}

/// Logs `report` (with a backtrace when `RUST_BACKTRACE` asks for one) and counts it in
/// `failoverd_panics_total`.
pub fn record(report: &PanicReport) {
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = match backtrace.status() {
        std::backtrace::BacktraceStatus::Captured => backtrace.to_string(),
        _ => "none (set RUST_BACKTRACE=1 for one)".to_owned(),
    };
    tracing::error!(
        thread = %report.thread,
        location = %report.location,
        panic = %report.message,
        backtrace = %backtrace,
        "panic: the daemon stops so that systemd restarts it; the pinned datapath keeps serving meanwhile"
    );
    // Best effort: the process ends right after, so only a scrape that lands in between sees it.
    metrics::counter!(crate::metrics::names::PANICS).increment(1);
}

/// Installs the policy for `failoverd run`: every panic is recorded, then the process aborts.
///
/// Call it once, after logging is set up and before the runtime starts. Not for the CLI
/// subcommands: they print errors themselves and a panic there ends only a short-lived command.
///
/// The hook runs before unwinding, so under it `catch_unwind` (and a `JoinHandle` reporting a
/// panicked task) never sees a panic: code in the daemon must return errors, not rely on
/// catching a panic, e.g. from a parser given hostile input.
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        record(&PanicReport::of(info));
        std::process::abort();
    }));
}
