//! Probe loops, one per distinct target: a backend that several services list (the same
//! address, check, interval and timeout) is probed once and every service gets the result.
//! Loops are anchored to probe starts, jittered, and capped in concurrency across the daemon.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError, Weak,
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, Semaphore},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    decision::BackendKey,
    health::{HealthCheck, Probe, ProbeResult},
};

/// One probe's result, for one subscribed backend.
#[derive(Clone, Debug)]
pub struct ProbeReport {
    /// The backend that subscribed.
    pub key: BackendKey,
    /// When the probe started.
    pub started: Instant,
    /// What it saw (one allocation shared by every subscriber).
    pub result: Arc<ProbeResult>,
}

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

/// Who gets a loop's results: a service's backend, on the service's channel.
struct Subscriber<E> {
    id: u64,
    key: BackendKey,
    events: mpsc::Sender<E>,
}

/// One running loop and its subscribers.
struct Loop<E> {
    target: ProbeTarget,
    subscribers: Arc<Mutex<Vec<Subscriber<E>>>>,
    task: JoinHandle<()>,
}

/// Loops by address, interval and timeout; the few with different checks on the same address
/// are told apart by comparing the check.
type Loops<E> = HashMap<(SocketAddr, Duration, Duration), Vec<Loop<E>>>;

/// The daemon's probe loops, delivering [`ProbeReport`]s as messages of type `E` (the
/// service task's own message type). Subscribing returns a guard; when the last guard of a
/// target is dropped its loop stops.
pub struct ProbeHub<E> {
    checker: Arc<dyn HealthCheck>,
    permits: Arc<Semaphore>,
    loops: Arc<Mutex<Loops<E>>>,
    next_id: AtomicU64,
    /// Probes finished since the hub started: the watchdog's evidence that probing moves.
    completed: Arc<AtomicU64>,
}

/// Keeps a backend subscribed to its target's loop; dropping it unsubscribes.
pub struct Subscription<E> {
    loops: Weak<Mutex<Loops<E>>>,
    target: ProbeTarget,
    id: u64,
}

impl<E: From<ProbeReport> + Send + 'static> ProbeHub<E> {
    /// A hub whose loops probe with `checker` and share `permits`: at most that many probes
    /// in flight.
    pub fn new(checker: Arc<dyn HealthCheck>, permits: Arc<Semaphore>) -> Self {
        ProbeHub {
            checker,
            permits,
            loops: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
            completed: Arc::new(AtomicU64::new(0)),
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

    /// Sends `target`'s probe results to `events` as reports for `key`, starting a loop
    /// unless one already probes that target.
    pub fn subscribe(
        &self,
        target: ProbeTarget,
        key: BackendKey,
        events: mpsc::Sender<E>,
    ) -> Subscription<E> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriber = Subscriber { id, key, events };
        let mut loops = lock(&self.loops);
        let same = loops
            .entry((target.addr, target.interval, target.timeout))
            .or_default();
        match same.iter().find(|l| l.target == target) {
            Some(existing) => lock(&existing.subscribers).push(subscriber),
            None => {
                let subscribers = Arc::new(Mutex::new(vec![subscriber]));
                let task = tokio::spawn(run(
                    target.clone(),
                    Arc::clone(&subscribers),
                    Arc::clone(&self.checker),
                    Arc::clone(&self.permits),
                    Arc::clone(&self.completed),
                ));
                same.push(Loop {
                    target: target.clone(),
                    subscribers,
                    task,
                });
            }
        }
        Subscription {
            loops: Arc::downgrade(&self.loops),
            target,
            id,
        }
    }
}

impl<E> Drop for Subscription<E> {
    fn drop(&mut self) {
        // The hub is gone: its loops went with it.
        let Some(loops) = self.loops.upgrade() else {
            return;
        };
        let mut loops = lock(&loops);
        let slot = (self.target.addr, self.target.interval, self.target.timeout);
        let Some(same) = loops.get_mut(&slot) else {
            return;
        };
        let Some(i) = same.iter().position(|l| l.target == self.target) else {
            return;
        };
        let empty = {
            let mut subscribers = lock(&same[i].subscribers);
            subscribers.retain(|s| s.id != self.id);
            subscribers.is_empty()
        };
        if empty {
            same.swap_remove(i).task.abort();
            if same.is_empty() {
                loops.remove(&slot);
            }
        }
    }
}

impl<E> Drop for ProbeHub<E> {
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

/// Probes `target` until aborted, sending each result to every subscriber.
///
/// Starts are anchored (`start + interval`, not `end + interval`), so a slow probe does not
/// stretch the detection time; the first start is jittered over one interval so a thousand
/// backends do not probe in lockstep.
async fn run<E: From<ProbeReport>>(
    target: ProbeTarget,
    subscribers: Arc<Mutex<Vec<Subscriber<E>>>>,
    checker: Arc<dyn HealthCheck>,
    permits: Arc<Semaphore>,
    completed: Arc<AtomicU64>,
) {
    let jitter = target.interval.mul_f64(fastrand::f64());
    let mut next = Instant::now() + jitter;
    loop {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        let result = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            Arc::new(
                checker
                    .check(&target.probe, target.addr, target.timeout)
                    .await,
            )
        };
        completed.fetch_add(1, Ordering::Relaxed);
        let to: Vec<(BackendKey, mpsc::Sender<E>)> = lock(&subscribers)
            .iter()
            .map(|s| (s.key, s.events.clone()))
            .collect();
        for (key, events) in to {
            // A service that stopped drops its subscription soon; nothing to do meanwhile.
            let report = ProbeReport {
                key,
                started,
                result: Arc::clone(&result),
            };
            events.send(report.into()).await.ok();
        }
        next = started + target.interval;
        // Waiting for a permit or a busy service may have eaten slots: skip them rather than
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
mod tests {
    use super::*;

    fn target(addr: SocketAddr, interval_ms: u64) -> ProbeTarget {
        ProbeTarget {
            addr,
            probe: Arc::new(Probe::Tcp),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(5),
        }
    }

    fn key(config_index: usize, addr: SocketAddr) -> BackendKey {
        BackendKey { config_index, addr }
    }

    /// The next probe result `rx` gets, for which backend, within a second.
    async fn next_result(rx: &mut mpsc::Receiver<ProbeReport>) -> (BackendKey, bool) {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(ProbeReport { key, result, .. })) => (key, result.is_ok()),
            other => panic!("expected a probe result, got {:?}", other.is_ok()),
        }
    }

    fn hub() -> ProbeHub<ProbeReport> {
        ProbeHub::new(
            Arc::new(crate::health::NetworkCheck),
            Arc::new(Semaphore::new(8)),
        )
    }

    #[tokio::test]
    async fn services_with_the_same_target_share_one_loop_until_the_last_leaves() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let addr = listener.local_addr().expect("addr");
        let hub = hub();
        let (tx_a, mut rx_a) = mpsc::channel(16);
        let (tx_b, mut rx_b) = mpsc::channel(16);
        let a = hub.subscribe(target(addr, 10), key(0, addr), tx_a);
        let b = hub.subscribe(target(addr, 10), key(3, addr), tx_b);
        assert_eq!(hub.targets(), 1, "one target, one loop");
        // Both services get every result, each under its own key.
        assert_eq!(next_result(&mut rx_a).await, (key(0, addr), true));
        assert_eq!(next_result(&mut rx_b).await, (key(3, addr), true));

        // Another interval is another target.
        let (tx_c, _rx_c) = mpsc::channel(16);
        let c = hub.subscribe(target(addr, 20), key(0, addr), tx_c);
        assert_eq!(hub.targets(), 2);

        drop(a);
        assert_eq!(hub.targets(), 2, "b still listens to the first loop");
        while rx_b.try_recv().is_ok() {}
        assert_eq!(next_result(&mut rx_b).await, (key(3, addr), true));
        drop(b);
        drop(c);
        assert_eq!(hub.targets(), 0, "no subscriber, no loop");
    }

    #[tokio::test]
    async fn a_dead_target_reports_failures() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
            l.local_addr().expect("addr")
        };
        let hub = hub();
        let (tx, mut rx) = mpsc::channel(16);
        let _s = hub.subscribe(target(addr, 10), key(0, addr), tx);
        assert_eq!(next_result(&mut rx).await, (key(0, addr), false));
    }
}
