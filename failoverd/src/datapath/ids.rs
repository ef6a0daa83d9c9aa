//! Counter ids: every VIP and backend gets a small number, unique in one datapath.

use std::collections::BTreeMap;

use failoverd_shared::{MAX_COUNTERS, RESERVED_COUNTER_IDS};

use super::VipTable;

/// The lowest id handed out: the ids below it (0) stay free as "no id" for tools reading the
/// maps; `check` counts with the same bound.
const FIRST: u32 = RESERVED_COUNTER_IDS;
/// The highest id handed out: the counters map holds ids below [`MAX_COUNTERS`].
const LAST: u32 = MAX_COUNTERS - 1;

/// Hands out counter ids, starting from those already in use by installed tables.
///
/// Ids index the kernel's per-CPU counters, so two live objects must never
/// share one. Ids are handed out in increasing order and wrap around, so a
/// released id comes back only after every other free id was used: the
/// writer resets an id's kernel counters when it sees it installed for
/// another owner (see [`crate::reconcile`]). Free ids are kept as ranges, so
/// allocating and releasing take O(log n) and never scan or spin.
#[derive(Debug)]
pub struct IdAllocator {
    /// Free ids as inclusive ranges, start → end; ranges never touch or overlap.
    free: BTreeMap<u32, u32>,
    /// The id handed out last; the search for the next starts after it.
    last: u32,
}

/// Every id from 1 to `MAX_COUNTERS - 1` is taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "all {} counter ids are in use (one per VIP and per backend address)",
    IdAllocator::CAPACITY
)]
pub struct IdsExhausted;

impl Default for IdAllocator {
    fn default() -> Self {
        IdAllocator {
            free: BTreeMap::from([(FIRST, LAST)]),
            last: 0,
        }
    }
}

impl IdAllocator {
    /// How many ids one datapath has: `MAX_COUNTERS - 1` (id 0 is never handed out).
    pub const CAPACITY: u32 = LAST - FIRST + 1;

    /// An allocator that knows the ids the given tables hold.
    pub fn from_tables<'a>(tables: impl IntoIterator<Item = &'a VipTable>) -> Self {
        let mut ids = IdAllocator::default();
        for t in tables {
            ids.take(t.vip_id);
            // The fallback group's ids too: the pinned table still names them, so handing
            // one to another backend would mix two backends' counters and sockets.
            for b in t.all_backends() {
                ids.take(b.id);
            }
        }
        ids
    }

    /// A fresh id: the first free one after the last handed out, wrapping
    /// around once; [`IdsExhausted`] when none is free.
    pub fn allocate(&mut self) -> Result<u32, IdsExhausted> {
        let want = self.last.saturating_add(1).max(FIRST);
        let id = self
            .free
            .range(..=want)
            .next_back()
            .filter(|(_, &end)| end >= want)
            .map(|_| want)
            .or_else(|| self.free.range(want..).next().map(|(&start, _)| start))
            .or_else(|| self.free.keys().next().copied())
            .ok_or(IdsExhausted)?;
        self.take(id);
        self.last = id;
        Ok(id)
    }

    /// Makes `id` available again; ids out of range or already free are ignored.
    pub fn release(&mut self, id: u32) {
        if !(FIRST..=LAST).contains(&id) || self.is_free(id) {
            return;
        }
        let mut start = id;
        let mut end = id;
        // Merge with the free range ending just below and the one starting just above.
        if let Some((&s, &e)) = self.free.range(..id).next_back() {
            if e.checked_add(1) == Some(id) {
                self.free.remove(&s);
                start = s;
            }
        }
        if let Some(e) = id.checked_add(1).and_then(|above| self.free.remove(&above)) {
            end = e;
        }
        self.free.insert(start, end);
    }

    /// How many ids are handed out (or held by adopted tables).
    pub fn in_use(&self) -> u32 {
        let free: u32 = self.free.iter().map(|(s, e)| e - s + 1).sum();
        Self::CAPACITY - free
    }

    fn is_free(&self, id: u32) -> bool {
        self.free
            .range(..=id)
            .next_back()
            .is_some_and(|(_, &end)| end >= id)
    }

    /// Marks `id` as used; ids out of range or already used are ignored.
    fn take(&mut self, id: u32) {
        let Some((&start, &end)) = self.free.range(..=id).next_back() else {
            return;
        };
        if end < id {
            return;
        }
        self.free.remove(&start);
        if start < id {
            self.free.insert(start, id - 1);
        }
        if id < end {
            self.free.insert(id + 1, end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::{Protocol, TableBackend, Vip};
    use std::collections::BTreeSet;

    fn table(vip_id: u32, backend_id: u32) -> VipTable {
        VipTable {
            vip: Vip {
                addr: "127.1.0.1:80".parse().unwrap(),
                protocol: Protocol::Tcp,
            },
            vip_id,
            backends: vec![TableBackend {
                addr: "127.0.0.1:80".parse().unwrap(),
                id: backend_id,
            }],
            slots: vec![0].into(),
            fallback: Vec::new(),
            passive_threshold: 0,
        }
    }

    #[test]
    fn skips_ids_of_installed_tables() {
        let mut ids = IdAllocator::from_tables([&table(1, 2)]);
        assert_eq!(ids.allocate(), Ok(3));
        assert_eq!(ids.allocate(), Ok(4));
        assert_eq!(ids.in_use(), 4);
    }

    #[test]
    fn released_ids_come_back_only_after_wrapping() {
        let mut ids = IdAllocator::default();
        let first = ids.allocate().unwrap();
        ids.release(first);
        assert_eq!(ids.allocate(), Ok(2), "a released id is not reused at once");
        ids.last = LAST;
        assert_eq!(
            ids.allocate(),
            Ok(first),
            "after the last id the search wraps"
        );
    }

    #[test]
    fn hands_out_every_id_once_then_reports_exhaustion() {
        let mut ids = IdAllocator::default();
        let mut seen = BTreeSet::new();
        for _ in 0..MAX_COUNTERS - 1 {
            let id = ids.allocate().expect("an id below the limit");
            assert!(id != 0 && id < MAX_COUNTERS, "id {id} out of range");
            assert!(seen.insert(id), "id {id} handed out twice");
        }
        assert_eq!(ids.in_use(), IdAllocator::CAPACITY);
        assert_eq!(ids.allocate(), Err(IdsExhausted));
        assert_eq!(ids.allocate(), Err(IdsExhausted));
    }

    #[test]
    fn a_released_id_is_reused_after_wrapping_when_full() {
        let mut ids = IdAllocator::default();
        for _ in 0..MAX_COUNTERS - 1 {
            ids.allocate().unwrap();
        }
        ids.release(5);
        ids.release(MAX_COUNTERS - 1);
        assert_eq!(ids.allocate(), Ok(5));
        assert_eq!(ids.allocate(), Ok(MAX_COUNTERS - 1));
        assert_eq!(ids.allocate(), Err(IdsExhausted));
    }

    #[test]
    fn adopted_ids_out_of_range_are_ignored() {
        let mut ids = IdAllocator::from_tables([&table(0, MAX_COUNTERS + 7)]);
        assert_eq!(ids.in_use(), 0);
        ids.release(0);
        ids.release(u32::MAX);
        assert_eq!(ids.allocate(), Ok(1));
    }

    #[test]
    fn releasing_merges_free_ranges() {
        let mut ids = IdAllocator::default();
        for _ in 0..10 {
            ids.allocate().unwrap();
        }
        for id in [3, 5, 4] {
            ids.release(id);
        }
        ids.release(4);
        assert_eq!(ids.free.get(&3), Some(&5));
        assert_eq!(ids.in_use(), 7);
    }
}
