//! An in-memory [`Datapath`] for tests that must not need root or a kernel.

use std::collections::{BTreeMap, HashMap};

use super::{CounterTotals, Datapath, DatapathError, InstalledTable, Vip, VipTable};

/// Holds tables in memory, checks them exactly as the real datapath does, and
/// records every write so tests can assert that only changed VIPs were written.
#[derive(Debug, Default)]
pub struct FakeDatapath {
    tables: BTreeMap<Vip, InstalledTable>,
    counters: HashMap<u32, CounterTotals>,
    generation: u64,
    /// Every successful `apply` and `remove`, in order.
    pub writes: Vec<FakeWrite>,
    /// When set, the next write fails with this error message instead.
    pub fail_next_write: Option<String>,
}

/// One write the fake saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeWrite {
    /// A table was installed.
    Apply(VipTable),
    /// A VIP was removed.
    Remove(Vip),
}

impl FakeDatapath {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the counters a later [`Datapath::counters`] call returns for `id`.
    pub fn set_counters(&mut self, id: u32, totals: CounterTotals) {
        self.counters.insert(id, totals);
    }

    fn injected_failure(&mut self) -> Result<(), DatapathError> {
        match self.fail_next_write.take() {
            Some(message) => Err(DatapathError::Injected { message }),
            None => Ok(()),
        }
    }
}

impl Datapath for FakeDatapath {
    fn apply(&mut self, table: &VipTable) -> Result<(), DatapathError> {
        self.injected_failure()?;
        // Same validation as the kernel path: a table the BPF datapath would
        // refuse must not pass in tests.
        table.encode(self.generation + 1)?;
        self.generation += 1;
        self.tables.insert(
            table.vip,
            InstalledTable {
                table: table.clone(),
                generation: self.generation,
            },
        );
        self.writes.push(FakeWrite::Apply(table.clone()));
        Ok(())
    }

    fn remove(&mut self, vip: &Vip) -> Result<(), DatapathError> {
        self.injected_failure()?;
        self.tables.remove(vip);
        self.writes.push(FakeWrite::Remove(*vip));
        Ok(())
    }

    fn tables(&self) -> Result<BTreeMap<Vip, InstalledTable>, DatapathError> {
        Ok(self.tables.clone())
    }

    fn counters(&self, id: u32) -> Result<CounterTotals, DatapathError> {
        Ok(self.counters.get(&id).copied().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::{Protocol, TableBackend, TableError};

    fn vip() -> Vip {
        Vip {
            addr: "127.1.0.1:80".parse().unwrap(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn apply_replaces_the_whole_table_and_bumps_generation() {
        let mut dp = FakeDatapath::new();
        let backend = |s: &str, id| TableBackend {
            addr: s.parse().unwrap(),
            id,
        };
        let a = VipTable::weighted(vip(), 1, vec![backend("127.0.0.1:1", 2)], &[1]).unwrap();
        let b = VipTable::weighted(vip(), 1, vec![backend("127.0.0.2:2", 3)], &[1]).unwrap();
        dp.apply(&a).unwrap();
        dp.apply(&b).unwrap();
        let tables = dp.tables().unwrap();
        assert_eq!(tables[&vip()].table, b);
        assert_eq!(tables[&vip()].generation, 2);
        assert_eq!(dp.writes.len(), 2);
    }

    #[test]
    fn invalid_table_is_refused_and_nothing_changes() {
        let mut dp = FakeDatapath::new();
        let bad = VipTable {
            vip: vip(),
            vip_id: 1,
            backends: vec![TableBackend {
                addr: "[::1]:80".parse().unwrap(),
                id: 2,
            }],
            slots: vec![0],
        };
        let err = dp.apply(&bad).unwrap_err();
        assert!(matches!(
            err,
            DatapathError::Table(TableError::FamilyMismatch { .. })
        ));
        assert!(dp.tables().unwrap().is_empty());
        assert!(dp.writes.is_empty());
    }

    #[test]
    fn injected_failure_fails_one_write() {
        let mut dp = FakeDatapath::new();
        dp.fail_next_write = Some("disk on fire".into());
        assert!(dp.remove(&vip()).is_err());
        assert!(dp.remove(&vip()).is_ok());
    }
}
