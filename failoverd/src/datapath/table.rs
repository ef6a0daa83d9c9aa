//! A VIP's selection table in Rust terms, and its encoding into the shared map layout.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use failoverd_shared as shared;

use crate::select::{fill_slots, SlotError};

/// Transport protocol of a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP: every `connect()` picks a random slot.
    Tcp,
    /// UDP: a connected socket picks at `connect()`; an unconnected one stays on
    /// one backend while the VIP's table is unchanged.
    Udp,
}

impl Protocol {
    /// The IP protocol number the kernel reports for sockets of this protocol.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        }
    }

    fn from_number(n: u8) -> Option<Self> {
        match i32::from(n) {
            libc::IPPROTO_TCP => Some(Protocol::Tcp),
            libc::IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!("unknown protocol `{other}`: expected tcp or udp")),
        }
    }
}

/// A virtual address applications connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip {
    /// Address and port as the application names them.
    pub addr: SocketAddr,
    /// Transport protocol.
    pub protocol: Protocol,
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)
    }
}

impl Vip {
    /// The services-map key of this VIP.
    pub fn key(&self) -> shared::VipKey {
        shared::VipKey {
            addr_be: addr_to_words(self.addr.ip()),
            port_be: self.addr.port().to_be(),
            proto: self.protocol.number(),
            pad: 0,
        }
    }

    /// The VIP a services-map key names, or `None` for a key of an unknown protocol.
    pub fn from_key(key: &shared::VipKey) -> Option<Self> {
        Some(Vip {
            addr: SocketAddr::new(words_to_addr(key.addr_be), u16::from_be(key.port_be)),
            protocol: Protocol::from_number(key.proto)?,
        })
    }
}

/// One backend of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableBackend {
    /// Where connects are sent.
    pub addr: SocketAddr,
    /// Counter id of this backend (unique across the datapath, see [`super::IdAllocator`]).
    pub id: u32,
}

/// The whole selection table of one VIP: what one map write installs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipTable {
    /// The VIP.
    pub vip: Vip,
    /// Counter id of the VIP.
    pub vip_id: u32,
    /// Backends the slots point into.
    pub backends: Vec<TableBackend>,
    /// Indexes into `backends`, repeated by weight; empty = refuse connects.
    /// Shared between tables with the same weights (see [`crate::select::shared`]).
    pub slots: Arc<[u8]>,
    /// Where the kernel sends a connect when every backend the slots name is marked
    /// suspect by kernel-observed failures (passive health), before the daemon has even
    /// woken: the live backends of the next priority. Never named by a slot; as many as
    /// fit beside `backends` in the layout are kept.
    pub fallback: Vec<TableBackend>,
    /// Passive health: this many kernel-observed connect failures in a row mark a backend
    /// of this table suspect, so new connects avoid it at once. 0 = off.
    pub passive_threshold: u32,
}

/// Why a table cannot be encoded into the map layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// The weights cannot become slots.
    #[error("VIP {vip}: {source}")]
    Slots {
        /// The VIP.
        vip: Vip,
        /// What is wrong with the weights.
        #[source]
        source: SlotError,
    },
    /// More slots than the layout holds.
    #[error("VIP {vip}: {count} slots, the layout holds {}", shared::MAX_SLOTS)]
    TooManySlots {
        /// The VIP.
        vip: Vip,
        /// Slots given.
        count: usize,
    },
    /// A slot names a backend that is not in the table.
    #[error("VIP {vip}: slot names backend #{index} but the table has {count}")]
    SlotOutOfRange {
        /// The VIP.
        vip: Vip,
        /// The slot's backend index.
        index: u8,
        /// Backends in the table.
        count: usize,
    },
    /// An IPv4 VIP with an IPv6 backend or the other way round.
    #[error("VIP {vip}: backend {backend} is not of the VIP's address family")]
    FamilyMismatch {
        /// The VIP.
        vip: Vip,
        /// The backend.
        backend: SocketAddr,
    },
}

impl VipTable {
    /// A table whose slots follow `weights` (one per backend, 0 = no slots).
    pub fn weighted(
        vip: Vip,
        vip_id: u32,
        backends: Vec<TableBackend>,
        weights: &[u32],
    ) -> Result<Self, TableError> {
        let slots = fill_slots(weights).map_err(|source| TableError::Slots { vip, source })?;
        Ok(VipTable {
            vip,
            vip_id,
            backends,
            slots: crate::select::shared(slots),
            fallback: Vec::new(),
            passive_threshold: 0,
        })
    }

    /// The same table with `fallback` as its fallback group (see [`VipTable::fallback`]).
    pub fn with_fallback(mut self, fallback: Vec<TableBackend>) -> Self {
        self.fallback = fallback;
        self
    }

    /// The same table with passive health marking backends suspect after `threshold`
    /// failures in a row (0 = off).
    pub fn with_passive_threshold(mut self, threshold: u32) -> Self {
        self.passive_threshold = threshold;
        self
    }

    /// Every backend the table names: the slot group, then the fallback group.
    pub fn all_backends(&self) -> impl Iterator<Item = &TableBackend> {
        self.backends.iter().chain(&self.fallback)
    }

    /// A table with no slots: connects to the VIP are refused with ECONNREFUSED.
    pub fn refusing(vip: Vip, vip_id: u32) -> Self {
        VipTable {
            vip,
            vip_id,
            backends: Vec::new(),
            slots: Arc::from([]),
            fallback: Vec::new(),
            passive_threshold: 0,
        }
    }

    /// The map value for this table, stamped with `generation`.
    pub fn encode(&self, generation: u64) -> Result<shared::Service, TableError> {
        let vip = self.vip;
        if self.backends.len() > shared::MAX_BACKENDS {
            return Err(TableError::Slots {
                vip,
                source: SlotError::TooManyBackends {
                    count: self.backends.len(),
                },
            });
        }
        if self.slots.len() > shared::MAX_SLOTS {
            return Err(TableError::TooManySlots {
                vip,
                count: self.slots.len(),
            });
        }
        // The fallback group is best effort: what does not fit beside the slot group is
        // left out rather than failing the write of the table that matters.
        let fallback = self
            .fallback
            .len()
            .min(shared::MAX_BACKENDS - self.backends.len());
        let mut value = shared::Service {
            generation,
            vip_id: self.vip_id,
            passive_threshold: self.passive_threshold.min(u32::from(u16::MAX)) as u16,
            backend_count: (self.backends.len() + fallback) as u16,
            active_count: self.backends.len() as u16,
            slot_count: self.slots.len() as u16,
            ..Default::default()
        };
        let named = self.backends.iter().chain(&self.fallback[..fallback]);
        for (slot, b) in value.backends.iter_mut().zip(named) {
            if b.addr.is_ipv4() != vip.addr.is_ipv4() {
                return Err(TableError::FamilyMismatch {
                    vip,
                    backend: b.addr,
                });
            }
            *slot = shared::Backend {
                addr_be: addr_to_words(b.addr.ip()),
                port_be: b.addr.port().to_be(),
                flags: 0,
                id: b.id,
            };
        }
        for (slot, &index) in value.slots.iter_mut().zip(self.slots.iter()) {
            if usize::from(index) >= self.backends.len() {
                return Err(TableError::SlotOutOfRange {
                    vip,
                    index,
                    count: self.backends.len(),
                });
            }
            *slot = index;
        }
        Ok(value)
    }

    /// The table a map value holds (counts clamped to the layout's bounds).
    pub fn decode(vip: Vip, value: &shared::Service) -> Self {
        let backend_count = usize::from(value.backend_count).min(shared::MAX_BACKENDS);
        let active_count = usize::from(value.active_count).min(backend_count);
        let slot_count = usize::from(value.slot_count).min(shared::MAX_SLOTS);
        let entry = |b: &shared::Backend| TableBackend {
            addr: SocketAddr::new(words_to_addr(b.addr_be), u16::from_be(b.port_be)),
            id: b.id,
        };
        VipTable {
            vip,
            vip_id: value.vip_id,
            backends: value.backends[..active_count].iter().map(entry).collect(),
            slots: crate::select::shared(value.slots[..slot_count].to_vec()),
            fallback: value.backends[active_count..backend_count]
                .iter()
                .map(entry)
                .collect(),
            passive_threshold: u32::from(value.passive_threshold),
        }
    }

    /// Each backend's share of new connections, in slots out of `slots.len()`.
    pub fn slot_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.backends.len()];
        for &s in self.slots.iter() {
            if let Some(c) = counts.get_mut(usize::from(s)) {
                *c += 1;
            }
        }
        counts
    }
}

/// Map address words for an IP: IPv4 becomes `::ffff:a.b.c.d`.
fn addr_to_words(ip: IpAddr) -> [u32; 4] {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    shared::addr_words(v6.octets())
}

/// The IP that map address words name: `::ffff:a.b.c.d` is IPv4.
pub(crate) fn words_to_addr(words: [u32; 4]) -> IpAddr {
    let v6 = Ipv6Addr::from(shared::addr_octets(words));
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(s: &str) -> Vip {
        Vip {
            addr: s.parse().unwrap(),
            protocol: Protocol::Tcp,
        }
    }

    fn backend(s: &str, id: u32) -> TableBackend {
        TableBackend {
            addr: s.parse().unwrap(),
            id,
        }
    }

    #[test]
    fn ipv4_vip_key_is_v4_mapped_in_network_order() {
        let key = vip("1.2.3.4:5432").key();
        assert_eq!(
            shared::addr_octets(key.addr_be),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4]
        );
        assert_eq!(key.port_be.to_ne_bytes(), 5432u16.to_be_bytes());
        assert_eq!(key.proto, 6);
        assert_eq!(Vip::from_key(&key), Some(vip("1.2.3.4:5432")));
    }

    #[test]
    fn ipv6_vip_round_trips() {
        let v = Vip {
            addr: "[2001:db8::1]:53".parse().unwrap(),
            protocol: Protocol::Udp,
        };
        assert_eq!(Vip::from_key(&v.key()), Some(v));
    }

    #[test]
    fn table_round_trips_through_the_map_layout() {
        let table = VipTable::weighted(
            vip("127.1.0.1:80"),
            7,
            vec![backend("127.0.0.1:8080", 8), backend("127.0.0.2:8081", 9)],
            &[3, 1],
        )
        .unwrap();
        let value = table.encode(42).unwrap();
        assert_eq!(value.generation, 42);
        assert_eq!(value.slot_count, 256);
        assert_eq!(VipTable::decode(table.vip, &value), table);
        assert_eq!(table.slot_counts(), vec![192, 64]);
    }

    #[test]
    fn fallback_group_and_threshold_round_trip_and_slots_never_name_the_fallback() {
        let table = VipTable::weighted(
            vip("127.1.0.1:80"),
            7,
            vec![backend("127.0.0.1:8080", 8)],
            &[1],
        )
        .unwrap()
        .with_fallback(vec![
            backend("127.0.0.2:8080", 9),
            backend("127.0.0.3:8080", 10),
        ])
        .with_passive_threshold(3);
        let value = table.encode(1).unwrap();
        assert_eq!((value.backend_count, value.active_count), (3, 1));
        assert!(value.slots[..usize::from(value.slot_count)]
            .iter()
            .all(|&s| s == 0));
        assert_eq!(value.passive_threshold, 3);
        assert_eq!(VipTable::decode(table.vip, &value), table);
    }

    #[test]
    fn a_fallback_group_that_does_not_fit_is_cut_not_refused() {
        let many = (0..40)
            .map(|i| backend(&format!("127.0.1.{i}:80"), 100 + i))
            .collect();
        let table = VipTable::weighted(
            vip("127.1.0.1:80"),
            1,
            vec![backend("127.0.0.1:80", 2)],
            &[1],
        )
        .unwrap()
        .with_fallback(many);
        let value = table.encode(1).unwrap();
        assert_eq!(usize::from(value.backend_count), shared::MAX_BACKENDS);
        assert_eq!(
            VipTable::decode(table.vip, &value).fallback.len(),
            shared::MAX_BACKENDS - 1
        );
    }

    #[test]
    fn mixed_families_are_refused() {
        let table =
            VipTable::weighted(vip("127.1.0.1:80"), 1, vec![backend("[::1]:80", 2)], &[1]).unwrap();
        assert!(matches!(
            table.encode(1),
            Err(TableError::FamilyMismatch { .. })
        ));
    }

    #[test]
    fn slot_naming_a_missing_backend_is_refused() {
        let table = VipTable {
            vip: vip("127.1.0.1:80"),
            vip_id: 1,
            backends: vec![backend("127.0.0.1:80", 2)],
            slots: vec![0, 1].into(),
            fallback: Vec::new(),
            passive_threshold: 0,
        };
        assert_eq!(
            table.encode(1),
            Err(TableError::SlotOutOfRange {
                vip: table.vip,
                index: 1,
                count: 1
            })
        );
    }

    #[test]
    fn refusing_table_has_no_slots() {
        let value = VipTable::refusing(vip("127.1.0.1:80"), 3)
            .encode(1)
            .unwrap();
        assert_eq!(
            (value.slot_count, value.backend_count, value.vip_id),
            (0, 0, 3)
        );
    }
}
