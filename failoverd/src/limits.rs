//! File descriptors as a shared budget: the soft `RLIMIT_NOFILE` raised to the hard one at
//! start, a cheap count of open descriptors, the reserve listeners leave to probes, and the
//! gate every listener accepts through (a connection cap, the reserve, accept-error backoff).
//!
//! Probes, DNS and the datapath share the daemon's descriptor table with the metrics and control
//! listeners. A listener that accepts whatever arrives lets any local user who can reach its port
//! use up that table, and then every probe fails and every VIP goes down. So a listener accepts
//! only while it holds fewer than its cap of connections *and* the daemon has more free
//! descriptors than the listener's reserve; otherwise connections wait in the kernel's backlog,
//! which costs the daemon no descriptor.

use std::{future::Future, io, sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept free for probes, DNS and datapath work: 512, or a quarter of the limit when
/// that is smaller. Probes in flight are capped at `daemon::MAX_PROBES_IN_FLIGHT` (256), one
/// socket each.
pub const PROBE_RESERVE: u64 = 512;

/// How long a listener waits before looking again when the daemon is short of descriptors: 100 ms.
const RESERVE_RECHECK: Duration = Duration::from_millis(100);

/// First pause after a failed accept: 100 ms. EMFILE and ENFILE persist until something
/// closes, so retrying at once only spins (and logged 12 million lines in 30 s).
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between failed accepts: 1 s (the pause doubles from the minimum).
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The soft and hard `RLIMIT_NOFILE` before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileRaised {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now (the hard limit, when raising worked).
    pub after: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (systemd's default soft limit is 1,024,
/// which a few hundred probes and a burst of scrapes can use up; the unit sets `LimitNOFILE=`).
///
/// Call it once at the start of `failoverd run`, before the runtime starts. Nothing here uses
/// `select(2)`, whose `FD_SETSIZE` is the usual reason to keep the soft limit low.
pub fn raise_nofile() -> io::Result<NofileRaised> {
    let mut limit = get_nofile()?;
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit that outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(NofileRaised {
        before,
        after: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

fn get_nofile() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit that outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// The soft `RLIMIT_NOFILE` now: read on every call, so a `prlimit` by an administrator counts.
pub fn nofile_limit() -> io::Result<u64> {
    get_nofile().map(|l| l.rlim_cur)
}

/// Descriptors this process has open.
///
/// Since Linux 6.2 `stat("/proc/self/fd")` reports the count as the size (one syscall, no
/// directory walk); older kernels report 0, and then the directory is counted.
pub fn open_fds() -> io::Result<u64> {
    let size = std::fs::metadata("/proc/self/fd")?.len();
    if size > 0 {
        return Ok(size);
    }
    // The walk's own directory descriptor is counted too; one too many errs on the safe side.
    Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64)
}

/// The reserve a listener leaves free for probes under a soft limit of `limit` descriptors:
/// [`PROBE_RESERVE`] or a quarter of the limit, whichever is smaller.
pub fn probe_reserve(limit: u64) -> u64 {
    PROBE_RESERVE.min(limit / 4)
}

/// Whether one more descriptor may be taken with `open` of `limit` in use and `reserve` to keep.
pub fn has_room(open: u64, limit: u64, reserve: u64) -> bool {
    open.saturating_add(1).saturating_add(reserve) <= limit
}

/// Who accepts through a gate, and so how much of the reserve it must leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The metrics HTTP listener: reachable by any local user, so it leaves the whole reserve.
    Metrics,
    /// The control socket (root only): it leaves half the reserve, so it still answers
    /// `status` after the metrics listener has stopped accepting.
    Control,
}

impl Listener {
    /// The name in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Metrics => "metrics",
            Listener::Control => "control",
        }
    }

    /// Descriptors this listener leaves free under a soft limit of `limit`.
    pub fn reserve(self, limit: u64) -> u64 {
        match self {
            Listener::Metrics => probe_reserve(limit),
            Listener::Control => probe_reserve(limit) / 2,
        }
    }
}

/// Pauses after failed accepts, doubling from [`ACCEPT_BACKOFF_MIN`] to [`ACCEPT_BACKOFF_MAX`],
/// and says when to log: once when a burst of failures starts, once when it ends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AcceptBackoff {
    /// Failures since the last successful accept.
    failures: u64,
}

/// What to do after a failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterFailure {
    /// How long to wait before accepting again.
    pub pause: Duration,
    /// Whether this failure starts a burst (log it; the rest of the burst is counted only).
    pub first: bool,
}

impl AcceptBackoff {
    /// An accept failed.
    pub fn failed(&mut self) -> AfterFailure {
        self.failures += 1;
        let doublings = u32::try_from(self.failures - 1).unwrap_or(u32::MAX).min(4);
        let pause = (ACCEPT_BACKOFF_MIN * 2u32.pow(doublings)).min(ACCEPT_BACKOFF_MAX);
        AfterFailure {
            pause,
            first: self.failures == 1,
        }
    }

    /// An accept succeeded: returns how many failures the burst that just ended had, if any.
    pub fn succeeded(&mut self) -> Option<u64> {
        let failures = std::mem::take(&mut self.failures);
        (failures > 0).then_some(failures)
    }
}

/// What a listener accepts through: at most `cap` connections at once, none while descriptors
/// are short, and a pause after each failed accept.
#[derive(Debug)]
pub struct AcceptGate {
    listener: Listener,
    permits: Arc<Semaphore>,
    backoff: AcceptBackoff,
    /// Whether the daemon is short of descriptors right now (logged once per episode).
    short: bool,
    /// No accept before this, after a failure; kept here so a caller that drops [`accept`]
    /// (its `select!` picked another branch) does not cut the pause short.
    ///
    /// [`accept`]: AcceptGate::accept
    resume_at: Option<tokio::time::Instant>,
}

impl AcceptGate {
    /// A gate for `listener` admitting at most `cap` connections at once.
    pub fn new(listener: Listener, cap: usize) -> Self {
        AcceptGate {
            listener,
            permits: Arc::new(Semaphore::new(cap)),
            backoff: AcceptBackoff::default(),
            short: false,
            resume_at: None,
        }
    }

    /// Connections open through this gate now.
    pub fn open(&self, cap: usize) -> usize {
        cap.saturating_sub(self.permits.available_permits())
    }

    /// Accepts the next connection with `accept` once the cap and the descriptor reserve allow;
    /// the permit must live as long as the connection. Failed accepts are retried after a pause.
    ///
    /// Cancel-safe: dropped while waiting, it has accepted nothing.
    pub async fn accept<T, F>(&mut self, mut accept: impl FnMut() -> F) -> (T, OwnedSemaphorePermit)
    where
        F: Future<Output = io::Result<T>>,
    {
        let name = self.listener.name();
        // Bounded by the caller: it races this against shutdown.
        loop {
            if let Some(at) = self.resume_at {
                tokio::time::sleep_until(at).await;
                self.resume_at = None;
            }
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                // The semaphore is never closed; waiting forever is the honest answer if it were.
                return std::future::pending().await;
            };
            self.wait_for_room().await;
            match accept().await {
                Ok(accepted) => {
                    if let Some(failures) = self.backoff.succeeded() {
                        tracing::info!(
                            listener = name,
                            failures,
                            "accepting again after failed accepts"
                        );
                    }
                    return (accepted, permit);
                }
                Err(e) => {
                    drop(permit);
                    let after = self.backoff.failed();
                    if after.first {
                        tracing::warn!(
                            listener = name,
                            error = %e,
                            "accept failed; retrying with backoff (further failures are counted, not logged)"
                        );
                    }
                    self.resume_at = Some(tokio::time::Instant::now() + after.pause);
                }
            }
        }
    }

    /// Returns once one more descriptor leaves the listener's reserve free.
    async fn wait_for_room(&mut self) {
        let name = self.listener.name();
        // Bounded by the caller (shutdown); each round sleeps.
        loop {
            let (open, limit) = match (open_fds(), nofile_limit()) {
                (Ok(open), Ok(limit)) => (open, limit),
                // Without /proc the count is unknown: the cap alone bounds the listener.
                _ => return,
            };
            let reserve = self.listener.reserve(limit);
            if has_room(open, limit, reserve) {
                if std::mem::take(&mut self.short) {
                    tracing::info!(
                        listener = name,
                        open,
                        limit,
                        "descriptors free again: accepting"
                    );
                }
                return;
            }
            if !std::mem::replace(&mut self.short, true) {
                tracing::warn!(
                    listener = name,
                    open,
                    limit,
                    reserve,
                    "few file descriptors left: not accepting until probes have their reserve again"
                );
            }
            tokio::time::sleep(RESERVE_RECHECK).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_512_or_a_quarter_of_a_small_limit() {
        assert_eq!(probe_reserve(65_536), 512);
        assert_eq!(probe_reserve(1_024), 256);
        assert_eq!(probe_reserve(256), 64);
        assert_eq!(Listener::Metrics.reserve(256), 64);
        assert_eq!(Listener::Control.reserve(256), 32);
    }

    #[test]
    fn room_ends_where_the_reserve_starts() {
        assert!(has_room(190, 256, 64));
        assert!(has_room(191, 256, 64));
        assert!(!has_room(192, 256, 64));
        assert!(!has_room(u64::MAX, 256, 64));
    }

    #[test]
    fn the_control_socket_keeps_accepting_after_metrics_stops() {
        let limit = 1024;
        let open = limit - Listener::Metrics.reserve(limit);
        assert!(!has_room(open, limit, Listener::Metrics.reserve(limit)));
        assert!(has_room(open, limit, Listener::Control.reserve(limit)));
    }

    #[test]
    fn backoff_doubles_to_a_second_and_logs_once_per_burst() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<(u64, bool)> = (0..7)
            .map(|_| b.failed())
            .map(|a| (a.pause.as_millis() as u64, a.first))
            .collect();
        assert_eq!(
            pauses,
            [
                (100, true),
                (200, false),
                (400, false),
                (800, false),
                (1000, false),
                (1000, false),
                (1000, false)
            ]
        );
        assert_eq!(b.succeeded(), Some(7));
        assert_eq!(b.succeeded(), None);
        assert_eq!(
            b.failed(),
            AfterFailure {
                pause: ACCEPT_BACKOFF_MIN,
                first: true
            }
        );
    }

    #[test]
    fn open_descriptors_are_counted() {
        let before = open_fds().unwrap();
        let files: Vec<std::fs::File> = (0..10)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let during = open_fds().unwrap();
        drop(files);
        // Other tests open and close descriptors in parallel: allow them some slack.
        assert!(
            during + 5 >= before + 10,
            "before {before}, during {during}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_holds_the_cap_and_backs_off_after_errors() {
        let mut gate = AcceptGate::new(Listener::Metrics, 2);
        let (a, pa) = gate.accept(|| async { io::Result::Ok(1) }).await;
        let (b, _pb) = gate.accept(|| async { io::Result::Ok(2) }).await;
        assert_eq!((a, b, gate.open(2)), (1, 2, 2));
        // At the cap: a third accept waits until a connection ends.
        let third = tokio::time::timeout(
            Duration::from_secs(5),
            gate.accept(|| async { io::Result::Ok(3) }),
        )
        .await;
        assert!(third.is_err(), "a third connection got in at a cap of 2");
        drop(pa);
        // Two failures, then success: 100 ms + 200 ms of pauses in between.
        let mut results = vec![
            Err(io::Error::from_raw_os_error(libc::EMFILE)),
            Err(io::Error::from_raw_os_error(libc::EMFILE)),
            Ok(4),
        ]
        .into_iter();
        let start = tokio::time::Instant::now();
        let (c, _pc) = gate
            .accept(|| std::future::ready(results.next().expect("three results")))
            .await;
        assert_eq!(c, 4);
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }
}
