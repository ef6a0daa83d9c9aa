//! Whom each counter id was last installed for, kept small: a fingerprint per id, not a copy
//! of its VIP and address.
//!
//! At 10,000 VIPs of 8 backends the writer knows 90,000 ids. A full owner (the VIP, and the
//! backend address) is 72 bytes; a map of them cost about 1.2 KiB per service. The writer
//! only ever asks two things of an id's owner: is it the same as this one (a new install
//! resets the counters otherwise), and which VIP's table would still hold it. A 64-bit hash
//! answers the first, the VIP's counter id the second (through [`Owners::vip_of`]).

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
};

use crate::datapath::{Vip, VipTable};

/// Whom a counter id counts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Owner {
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
    /// A hash of the owner: equal owners have equal marks; two different owners sharing
    /// one is a 1 in 2^64 chance, and would only leave a counter un-reset.
    fingerprint: u64,
}

impl Mark {
    /// The mark of `owner`, installed by the table of VIP id `vip_id`.
    pub fn new(owner: &Owner, vip_id: u32) -> Self {
        // SipHash with fixed keys: the same owner gives the same mark in every run.
        let mut hasher = DefaultHasher::new();
        owner.hash(&mut hasher);
        Mark {
            vip_id,
            fingerprint: hasher.finish(),
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
    marks: HashMap<u32, Mark>,
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
        self.marks.extend(marks_of(table));
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
        self.marks.get(&id).copied()
    }

    /// Whether `id` was ever installed (and not reset since).
    pub fn contains(&self, id: u32) -> bool {
        self.marks.contains_key(&id)
    }

    /// Records `id` as installed for `mark`'s owner.
    pub fn set(&mut self, id: u32, mark: Mark) {
        self.marks.insert(id, mark);
    }

    /// Forgets `id`.
    pub fn remove(&mut self, id: u32) {
        self.marks.remove(&id);
    }

    /// The VIP whose table installed ids under VIP id `vip_id`, last time one was written.
    pub fn vip_of(&self, vip_id: u32) -> Option<Vip> {
        self.vips.get(&vip_id).copied()
    }
}
