//! Counter ids: every VIP and backend gets a small number, unique in one datapath.

use std::collections::BTreeSet;

use failoverd_shared::MAX_COUNTERS;

use super::VipTable;

/// Hands out counter ids, starting from those already in use by installed tables.
///
/// Ids index the kernel's per-CPU counters, so two live objects must never
/// share one; a released id may be reused.
#[derive(Debug, Default)]
pub struct IdAllocator {
    used: BTreeSet<u32>,
    next: u32,
}

/// Every id below [`MAX_COUNTERS`] is taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("all {MAX_COUNTERS} counter ids are in use")]
pub struct IdsExhausted;

impl IdAllocator {
    /// An allocator that knows the ids the given tables hold.
    pub fn from_tables<'a>(tables: impl IntoIterator<Item = &'a VipTable>) -> Self {
        let mut ids = IdAllocator::default();
        for t in tables {
            ids.used.insert(t.vip_id);
            ids.used.extend(t.backends.iter().map(|b| b.id));
        }
        ids
    }

    /// A fresh id.
    pub fn allocate(&mut self) -> Result<u32, IdsExhausted> {
        if self.used.len() >= MAX_COUNTERS as usize {
            return Err(IdsExhausted);
        }
        // Ids are 1-based: 0 stays free as "no id" for tools reading the maps.
        loop {
            self.next = if self.next + 1 >= MAX_COUNTERS {
                1
            } else {
                self.next + 1
            };
            if self.used.insert(self.next) {
                return Ok(self.next);
            }
        }
    }

    /// Makes `id` available again.
    pub fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::{Protocol, TableBackend, Vip};

    #[test]
    fn skips_ids_of_installed_tables() {
        let table = VipTable {
            vip: Vip {
                addr: "127.1.0.1:80".parse().unwrap(),
                protocol: Protocol::Tcp,
            },
            vip_id: 1,
            backends: vec![TableBackend {
                addr: "127.0.0.1:80".parse().unwrap(),
                id: 2,
            }],
            slots: vec![0],
        };
        let mut ids = IdAllocator::from_tables([&table]);
        assert_eq!(ids.allocate(), Ok(3));
        assert_eq!(ids.allocate(), Ok(4));
    }

    #[test]
    fn released_ids_come_back_after_wrapping() {
        let mut ids = IdAllocator::default();
        let first = ids.allocate().unwrap();
        ids.release(first);
        assert_eq!(ids.allocate(), Ok(2));
        ids.next = MAX_COUNTERS - 1;
        assert_eq!(ids.allocate(), Ok(first));
    }
}
