//! Whom each counter id was last installed for, kept small: a fingerprint per id, not a copy
//! of its VIP and address.
//!
//! At 10,000 VIPs of 8 backends the writer knows 90,000 ids. A full owner (the VIP, and the
//! backend address) is 72 bytes; a map of them cost about 1.2 KiB per service. The writer
//! only ever asks two things of an id's owner: is it the same as this one (a new install
//! resets the counters otherwise), and which VIP's table would still hold it. A 64-bit hash
//! answers the first, the VIP's counter id the second (through [`Owners::vip_of`]).
//!
//! Ids are dense (the allocator hands them out from 1 up, and never more than the counters
//! map holds), so the marks are kept in vectors indexed by id: 12 bytes an id, where a hash
//! map of them took about 36 with its spare room.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
};

use crate::datapath::{Vip, VipTable};

/// Whom a counter id counts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Owner {
    /// The VIP's own counters.
    Vip(Vip),
    /// A backend address of a VIP.
    Backend(Vip, SocketAddr),
}

/// What is remembered of an id's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mark {
    /// Counter id of the VIP whose table installed the id.
    pub vip_id: u32,
    /// A hash of the owner, never 0 (which marks an id with no owner): equal owners have
    /// equal marks; two different owners sharing one is a 1 in 2^64 chance, and would only
    /// leave a counter un-reset.
    fingerprint: u64,
}

impl Mark {
    /// The mark of `owner`, installed by the table of VIP id `vip_id`.
    fn new(owner: &Owner, vip_id: u32) -> Self {
        // SipHash with fixed keys: the same owner gives the same mark in every run.
        let mut hasher = DefaultHasher::new();
        owner.hash(&mut hasher);
        Mark {
            vip_id,
            fingerprint: hasher.finish().max(1),
        }
    }
}

/// Every counter id a table installs, with its owner.
fn owners_of(table: &VipTable) -> impl Iterator<Item = (u32, Owner)> + '_ {
    // The fallback group counts too: the kernel translates (and counts) connects to it when
    // every slot backend is marked suspect.
    std::iter::once((table.vip_id, Owner::Vip(table.vip))).chain(
        table
            .all_backends()
            .map(|b| (b.id, Owner::Backend(table.vip, b.addr))),
    )
}

/// Every counter id a table installs, with its mark.
pub(super) fn marks_of(table: &VipTable) -> impl Iterator<Item = (u32, Mark)> + '_ {
    owners_of(table).map(|(id, owner)| (id, Mark::new(&owner, table.vip_id)))
}

/// The owners of ids, and the VIPs of the VIP ids that installed them.
#[derive(Debug, Default)]
pub(super) struct Owners {
    /// By id: its owner's fingerprint, 0 for none.
    fingerprints: Vec<u64>,
    /// By id: the VIP id of the table that installed it (meaningless where the fingerprint
    /// is 0).
    vip_ids: Vec<u32>,
    /// VIP id → the VIP whose table was last written with it. May name a VIP whose table is
    /// gone or has another id since: a reader checks the table it finds.
    vips: HashMap<u32, Vip>,
}

impl Owners {
    /// The owners of every id in `tables`.
    pub fn of<'a>(tables: impl IntoIterator<Item = &'a VipTable>) -> Self {
        let mut owners = Owners::default();
        for table in tables {
            owners.installed(table);
        }
        owners
    }

    /// Records every id of `table`, now installed.
    pub fn installed(&mut self, table: &VipTable) {
        self.vips.insert(table.vip_id, table.vip);
        for (id, mark) in marks_of(table) {
            self.set(id, mark);
        }
    }

    /// Forgets the VIP id → VIP entry of `table`, removed (the marks of its ids stay: an id
    /// installed again for the same owner keeps its counts). One lookup, not a walk over
    /// every VIP: a reload may remove thousands.
    pub fn vip_removed(&mut self, table: &VipTable) {
        if self.vips.get(&table.vip_id) == Some(&table.vip) {
            self.vips.remove(&table.vip_id);
        }
    }

    /// What is remembered of `id`'s owner.
    pub fn get(&self, id: u32) -> Option<Mark> {
        let i = id as usize;
        let fingerprint = self.fingerprints.get(i).copied().filter(|&f| f != 0)?;
        Some(Mark {
            vip_id: self.vip_ids[i],
            fingerprint,
        })
    }

    /// Whether `id` was ever installed (and not reset since).
    pub fn contains(&self, id: u32) -> bool {
        self.get(id).is_some()
    }

    /// Records `id` as installed for `mark`'s owner.
    pub fn set(&mut self, id: u32, mark: Mark) {
        let i = id as usize;
        if i >= self.fingerprints.len() {
            self.fingerprints.resize(i + 1, 0);
            self.vip_ids.resize(i + 1, 0);
        }
        self.fingerprints[i] = mark.fingerprint;
        self.vip_ids[i] = mark.vip_id;
    }

    /// Forgets `id`.
    pub fn remove(&mut self, id: u32) {
        if let Some(f) = self.fingerprints.get_mut(id as usize) {
            *f = 0;
        }
    }

    /// The VIP whose table installed ids under VIP id `vip_id`, last time one was written.
    pub fn vip_of(&self, vip_id: u32) -> Option<Vip> {
        self.vips.get(&vip_id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::{Mark, Owner, Owners};
    use crate::datapath::{Protocol, Vip};

    fn vip(port: u16) -> Vip {
        Vip {
            addr: ([127, 9, 0, 1], port).into(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn marks_by_id_are_kept_forgotten_and_told_apart() {
        let mut owners = Owners::default();
        let a = Mark::new(&Owner::Vip(vip(1)), 7);
        let b = Mark::new(&Owner::Backend(vip(1), ([127, 9, 0, 2], 80).into()), 7);
        assert_ne!(a, b);
        assert_eq!(owners.get(5), None, "nothing installed yet");
        owners.set(5, a);
        owners.set(2, b);
        assert_eq!((owners.get(5), owners.get(2)), (Some(a), Some(b)));
        assert_eq!(
            owners.get(3),
            None,
            "an id between installed ones has no owner"
        );
        assert_eq!(owners.get(6), None, "nor one past the last");
        assert!(owners.contains(5));
        owners.remove(5);
        assert!(!owners.contains(5));
        assert_eq!(owners.get(2), Some(b), "forgetting one id keeps the others");
        owners.set(5, b);
        assert_eq!(
            owners.get(5),
            Some(b),
            "an id forgotten can be installed again"
        );
    }
}
