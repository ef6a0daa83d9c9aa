//! Probe loops, one per distinct target: a backend that several services list (the same
//! address, check, interval and timeout) is probed once and every service reads the result.
//! Loops are anchored to probe starts, jittered, and capped in concurrency across the daemon.
//!
//! A result is published once, into its target's [`Feed`]: a short log of numbered results
//! that every subscriber reads at its own pace, woken by one [`Notify`] per service task. So
//! one probe costs one publish and one wake per subscribing service — not a message per
//! service, and not a per-service buffer sized for bursts. A slow service never blocks the
//! loop (publishing never waits) and loses nothing: the feed keeps every result some
//! subscriber has not read yet, because rise/fall counting needs every result, not just the
//! latest.

mod feed;
mod lag;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, Semaphore},
    task::JoinHandle,
    time::Instant,
};

pub use feed::{Feed, Published};
pub use lag::LagMeter;

use crate::{
    health::{HealthCheck, Probe},
    interned::Recent,
};

/// What to probe. Two backends with equal targets share one loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Where to probe.
    pub addr: SocketAddr,
    /// How.
    pub probe: Arc<Probe>,
    /// Time between probe starts.
    pub interval: Duration,
    /// A probe fails at this time at the latest (shorter than `interval`).
    pub timeout: Duration,
}

/// One running loop: its feed (which knows its target) and its task.
struct Loop {
    feed: Arc<Feed>,
    task: JoinHandle<()>,
}

/// Loops by address, interval and timeout; the few with different checks on the same address
/// are told apart by comparing the check.
type Loops = HashMap<(SocketAddr, Duration, Duration), Vec<Loop>>;

/// The key a target's loop is filed under.
fn slot(target: &ProbeTarget) -> (SocketAddr, Duration, Duration) {
    (target.addr, target.interval, target.timeout)
}

/// The daemon's probe loops. Subscribing returns a [`Subscription`] that reads the target's
/// results; when the last subscription of a target is dropped its loop stops.
pub struct ProbeHub {
    checker: Arc<dyn HealthCheck>,
    permits: Arc<Semaphore>,
    loops: Arc<Mutex<Loops>>,
    next_id: AtomicU64,
    /// Probes finished since the hub started: the watchdog's evidence that probing moves.
    completed: Arc<AtomicU64>,
    /// How late probes start, daemon-wide: first-verdict deadlines stretch with it.
    lag: Arc<LagMeter>,
    /// The probes [`Self::shared_probe`] handed out lately.
    recent: Mutex<Recent<Probe>>,
}

/// A backend's subscription to its target's results; dropping it unsubscribes.
pub struct Subscription {
    feed: Arc<Feed>,
    /// Its place in the feed's readers.
    id: u64,
    /// The number it has read up to, as the feed keeps it: looked at without the feed's lock.
    seen: AtomicU64,
}

impl ProbeHub {
    /// A hub whose loops probe with `checker` and share `permits`: at most that many probes
    /// in flight.
    pub fn new(checker: Arc<dyn HealthCheck>, permits: Arc<Semaphore>) -> Self {
        ProbeHub {
            checker,
            permits,
            loops: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
            completed: Arc::new(AtomicU64::new(0)),
            lag: Arc::new(LagMeter::default()),
            recent: Mutex::new(Recent::new(16)),
        }
    }

    /// Probes finished so far, by every loop.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Loops running now (distinct targets).
    pub fn targets(&self) -> usize {
        lock(&self.loops).values().map(Vec::len).sum()
    }

    /// `probe` as an allocation shared with an equal one handed out lately: services with
    /// equal health sections probe alike, and at 10,000 services one copy each is a
    /// megabyte.
    pub fn shared_probe(&self, probe: Probe) -> Arc<Probe> {
        lock(&self.recent).share(probe)
    }

    /// How late probe starts have been lately, daemon-wide (see [`LagMeter`]).
    pub fn lag(&self) -> Duration {
        self.lag.get(Instant::now())
    }

    /// Subscribes to `target`'s results, starting a loop unless one already probes it. The
    /// subscription reads only results published from now on; `bell` is notified on each.
    pub fn subscribe(&self, target: ProbeTarget, bell: Arc<Notify>) -> Subscription {
        let mut loops = lock(&self.loops);
        // Under the hub's lock: ids then reach every feed in the order they are handed out.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let same = loops.entry(slot(&target)).or_default();
        let feed = match same.iter().find(|l| *l.feed.target() == target) {
            Some(existing) => Arc::clone(&existing.feed),
            None => {
                let feed = Arc::new(Feed::new(target, Arc::downgrade(&self.loops)));
                let task = tokio::spawn(run(
                    Arc::clone(&feed),
                    Arc::clone(&self.checker),
                    Arc::clone(&self.permits),
                    Arc::clone(&self.completed),
                    Arc::clone(&self.lag),
                ));
                same.push(Loop {
                    feed: Arc::clone(&feed),
                    task,
                });
                feed
            }
        };
        // Under the hub's lock, so a concurrent last unsubscribe cannot stop this loop.
        let seen = AtomicU64::new(feed.add_reader(id, bell));
        Subscription { feed, id, seen }
    }
}

impl Subscription {
    /// Appends the results published since the last read, oldest first, to `out`; returns
    /// how many were lost because the feed had to drop them before this reader took them
    /// (only after [`feed::KEEP_MAX`] unread results: a service stalled that long).
    pub fn read(&self, out: &mut Vec<Published>) -> u64 {
        self.feed.read(self.id, &self.seen, out)
    }

    /// What it reads the results of.
    pub fn target(&self) -> &ProbeTarget {
        self.feed.target()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The hub is gone: its loops went with it.
        let Some(loops) = self.feed.loops() else {
            return;
        };
        let mut loops = lock(&loops);
        if self.feed.remove_reader(self.id) > 0 {
            return;
        }
        let slot = slot(self.feed.target());
        let Some(same) = loops.get_mut(&slot) else {
            return;
        };
        if let Some(i) = same.iter().position(|l| Arc::ptr_eq(&l.feed, &self.feed)) {
            same.swap_remove(i).task.abort();
        }
        if same.is_empty() {
            loops.remove(&slot);
        }
    }
}

impl Drop for ProbeHub {
    fn drop(&mut self) {
        for l in lock(&self.loops).values().flatten() {
            l.task.abort();
        }
    }
}

/// A poisoned lock only means a panic elsewhere mid-update of a plain list; the list is
/// still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Probes the feed's target until aborted, publishing each result into the feed.
///
/// Starts are anchored (`start + interval`, not `end + interval`), so a slow probe does not
/// stretch the detection time; the first start is jittered over one interval so a thousand
/// backends do not probe in lockstep. How late each probe starts after the slot it was due
/// in (a late timer, a wait for a permit, slots skipped behind a slow probe) goes to `lag`.
async fn run(
    feed: Arc<Feed>,
    checker: Arc<dyn HealthCheck>,
    permits: Arc<Semaphore>,
    completed: Arc<AtomicU64>,
    lag: Arc<LagMeter>,
) {
    let target = feed.target().clone();
    let jitter = target.interval.mul_f64(fastrand::f64());
    let mut due = Instant::now() + jitter;
    let mut next = due;
    loop {
        tokio::time::sleep_until(next).await;
        // The slot's start: the next slot counts from here, and a wait for a permit is part
        // of the probe's time (and of the slots it skips).
        let started = Instant::now();
        let result = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            let now = Instant::now();
            lag.record(now.saturating_duration_since(due), now);
            checker
                .check(&target.probe, target.addr, target.timeout)
                .await
        };
        completed.fetch_add(1, Ordering::Relaxed);
        feed.publish(started, Arc::new(result));
        due = started + target.interval;
        next = due;
        // Waiting for a permit or a slow probe may have eaten slots: skip them rather than
        // burst, and say so, since a skipped probe stretches the detection time.
        let now = Instant::now();
        let mut skipped = 0u64;
        while next < now {
            next += target.interval;
            skipped += 1;
        }
        if skipped > 0 {
            crate::metrics::probes_skipped(skipped);
            warn_skipped(target.addr, skipped);
        }
    }
}

/// Warns about skipped probes at most once a minute for the whole daemon: when it falls
/// behind, it falls behind for every backend at once.
fn warn_skipped(addr: SocketAddr, skipped: u64) {
    static LAST_WARNING_S: AtomicU64 = AtomicU64::new(0);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_WARNING_S.load(Ordering::Relaxed);
    if now_s >= last + 60
        && LAST_WARNING_S
            .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(addr = %addr, skipped, "probes are running late and slots were skipped: detection takes longer than fall × interval + timeout (see failoverd_probes_skipped_total)");
    }
}

#[cfg(test)]
mod tests;
