//! One target's results, published once and read by every subscriber at its own pace.
//!
//! Results are numbered. Each reader keeps a cursor (the last number it took); the feed keeps
//! every result some reader has not taken yet and drops the rest on the next publish, so with
//! readers that keep up it holds one result. A reader that stalls makes the feed keep more —
//! at most [`KEEP_MAX`]; past that the oldest go, and that reader is told how many it lost.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
};

use tokio::{sync::Notify, time::Instant};

use super::{lock, Loops, ProbeTarget};
use crate::health::ProbeResult;

/// Results a feed keeps for a reader that does not read: 1024 probe intervals of a stalled
/// service task, more than any healthy daemon ever lets one fall behind.
pub const KEEP_MAX: usize = 1024;

/// One probe result as a feed numbers it.
#[derive(Clone, Debug)]
pub struct Published {
    /// Its number in the feed: 1, 2, … with no gaps.
    pub seq: u64,
    /// When the probe started.
    pub started: Instant,
    /// What it saw (one allocation shared by every reader).
    pub result: Arc<ProbeResult>,
}

/// One target's results.
pub struct Feed {
    target: ProbeTarget,
    /// The hub's loops, where the last reader to leave stops this feed's loop: kept once
    /// here, not in each of its (up to tens of thousands of) subscriptions.
    loops: Weak<Mutex<Loops>>,
    /// The newest result's number (0 before the first): readers look at it without the lock.
    latest: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    /// The results not every reader has taken, oldest first, numbers consecutive.
    kept: VecDeque<Published>,
    /// Sorted by id (kept so by [`Feed::add_reader`]). Kept inline, not one allocation each: a
    /// target shared by 10,000 services has 10,000 readers.
    readers: Vec<Reader>,
}

/// One subscription's place in a feed.
struct Reader {
    /// Tells readers of one feed apart.
    id: u64,
    /// The last number this reader took.
    cursor: u64,
    /// Rung on every publish: its service task's wake-up.
    bell: Arc<Notify>,
}

impl Feed {
    pub(super) fn new(target: ProbeTarget, loops: Weak<Mutex<Loops>>) -> Self {
        Feed {
            target,
            loops,
            latest: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                kept: VecDeque::new(),
                readers: Vec::new(),
            }),
        }
    }

    /// The hub's loops, unless the hub is gone (and its loops with it).
    pub(super) fn loops(&self) -> Option<Arc<Mutex<Loops>>> {
        self.loops.upgrade()
    }

    /// What this feed's loop probes.
    pub fn target(&self) -> &ProbeTarget {
        &self.target
    }

    /// Results published so far.
    pub fn published(&self) -> u64 {
        self.latest.load(Ordering::Acquire)
    }

    /// Results kept now (for tests of the keeping rule).
    pub fn kept(&self) -> usize {
        lock(&self.inner).kept.len()
    }

    /// Adds reader `id` (unique in this feed), which takes the results published from now
    /// on; returns its cursor, the number it has taken up to.
    pub(super) fn add_reader(&self, id: u64, bell: Arc<Notify>) -> u64 {
        let mut inner = lock(&self.inner);
        // Under the lock, so no publish slips between this load and the push.
        let cursor = self.latest.load(Ordering::Acquire);
        // In order whatever order ids arrive in: a reader out of place is one that reads and
        // unsubscribes nothing, its backend never judged. (The hub hands ids out under its
        // lock, so this is a push at the end in practice.)
        let at = inner.readers.partition_point(|r| r.id < id);
        inner.readers.insert(at, Reader { id, cursor, bell });
        cursor
    }

    /// Removes a reader; returns how many are left.
    pub(super) fn remove_reader(&self, id: u64) -> usize {
        let mut inner = lock(&self.inner);
        if let Ok(i) = inner.readers.binary_search_by_key(&id, |r| r.id) {
            inner.readers.remove(i);
        }
        inner.readers.len()
    }

    /// Publishes one result and rings every reader's bell. Never waits for a reader.
    pub(super) fn publish(&self, started: Instant, result: Arc<ProbeResult>) {
        let mut inner = lock(&self.inner);
        // What every reader has taken can go. One pass over the readers, which the bells
        // need anyway.
        let taken = inner
            .readers
            .iter()
            .map(|r| r.cursor)
            .min()
            .unwrap_or(u64::MAX);
        while inner.kept.front().is_some_and(|p| p.seq <= taken) {
            inner.kept.pop_front();
        }
        if inner.kept.len() >= KEEP_MAX {
            // A reader stalled for KEEP_MAX intervals; it is told what it lost when it reads.
            inner.kept.pop_front();
        }
        let seq = self.latest.load(Ordering::Relaxed) + 1;
        inner.kept.push_back(Published {
            seq,
            started,
            result,
        });
        // Stored under the lock: a reader that sees this number finds the result kept.
        self.latest.store(seq, Ordering::Release);
        for r in &inner.readers {
            // Stores a permit when the task is busy: a wake is never lost, and many
            // publishes while it is busy are one wake.
            r.bell.notify_one();
        }
    }

    /// Appends what reader `id` has not taken yet, oldest first, to `out`; returns how many
    /// results it lost to [`KEEP_MAX`]. `seen` is the reader's own copy of its cursor, which
    /// it alone reads and this keeps in step.
    pub(super) fn read(&self, id: u64, seen: &AtomicU64, out: &mut Vec<Published>) -> u64 {
        // The common case for a service woken by another target's result: no lock.
        if self.latest.load(Ordering::Acquire) <= seen.load(Ordering::Acquire) {
            return 0;
        }
        let mut inner = lock(&self.inner);
        let latest = self.latest.load(Ordering::Acquire);
        let first = inner.kept.front().map_or(latest + 1, |p| p.seq);
        let Ok(i) = inner.readers.binary_search_by_key(&id, |r| r.id) else {
            return 0;
        };
        let cursor = inner.readers[i].cursor;
        let lost = first.saturating_sub(cursor + 1);
        let skip = usize::try_from((cursor + 1).saturating_sub(first)).unwrap_or(usize::MAX);
        out.extend(inner.kept.iter().skip(skip).cloned());
        inner.readers[i].cursor = latest;
        seen.store(latest, Ordering::Release);
        lost
    }
}
