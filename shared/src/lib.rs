//! The `#[repr(C)]` map layouts failoverd shares with its BPF programs (`bpf/failoverd.h`).
//!
//! Every type here has a twin in the C header; both sides assert the size, so a
//! change on one side only fails the build. A layout change bumps
//! [`LAYOUT_VERSION`] and the `_vN` suffix of the map names.
#![no_std]

use core::mem::size_of;

/// Layout version of every map below; stored in the meta map when the maps are created.
pub const LAYOUT_VERSION: u32 = 2;
/// Backends one VIP can name at once.
pub const MAX_BACKENDS: usize = 32;
/// Slots of a VIP's selection table: weights are resolved to 1/256.
pub const MAX_SLOTS: usize = 256;
/// VIPs one datapath can serve.
pub const MAX_SERVICES: u32 = 65_536;
/// Counter ids (VIP ids and backend ids share one id space).
pub const MAX_COUNTERS: u32 = 262_144;
/// Counter ids below this are never handed out (0 means "no id" to tools
/// reading the maps): `MAX_COUNTERS - RESERVED_COUNTER_IDS` VIPs and backends fit.
pub const RESERVED_COUNTER_IDS: u32 = 1;
/// VIPs one unconnected UDP socket keeps reverse translations for.
pub const SOCK_ENTRIES: usize = 4;

/// Pinned map names, versioned with the layout.
pub mod map_names {
    /// VIP key → the VIP's whole selection table.
    pub const SERVICES: &str = "failoverd_services_v2";
    /// Socket-local storage: per-socket reverse translations.
    pub const SOCKETS: &str = "failoverd_sockets_v2";
    /// Counter id → per-CPU counters.
    pub const COUNTERS: &str = "failoverd_counters_v2";
    /// One [`super::Meta`] value: the layout the pinned maps hold.
    pub const META: &str = "failoverd_meta_v2";
    /// Every map, in the order they are checked.
    pub const ALL: [&str; 4] = [SERVICES, SOCKETS, COUNTERS, META];
}

/// Key of the services map: a VIP as the application names it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// VIP address as four words in network byte order; IPv4 as `::ffff:a.b.c.d`.
    pub addr_be: [u32; 4],
    /// VIP port, network byte order.
    pub port_be: u16,
    /// `IPPROTO_TCP` (6) or `IPPROTO_UDP` (17).
    pub proto: u8,
    /// Always zero: part of the hashed key.
    pub pad: u8,
}
const _: () = assert!(size_of::<VipKey>() == 20);

/// One backend a VIP can be translated to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Backend address as four words in network byte order; IPv4 as `::ffff:a.b.c.d`.
    pub addr_be: [u32; 4],
    /// Backend port, network byte order.
    pub port_be: u16,
    /// Always zero.
    pub pad: u16,
    /// Backend id: key of its counters.
    pub id: u32,
}
const _: () = assert!(size_of::<Backend>() == 24);

/// Value of the services map: the whole selection table of one VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// Changes on every write of this VIP.
    pub generation: u64,
    /// VIP id: key of its counters.
    pub vip_id: u32,
    /// Reserved for per-VIP options; zero today.
    pub flags: u32,
    /// Valid entries in `backends`.
    pub backend_count: u16,
    /// Valid entries in `slots`; 0 means no live backend (connect gets ECONNREFUSED).
    pub slot_count: u16,
    /// Always zero.
    pub pad: u32,
    /// Live backends.
    pub backends: [Backend; MAX_BACKENDS],
    /// Indexes into `backends`, each repeated in proportion to its weight.
    pub slots: [u8; MAX_SLOTS],
}
const _: () = assert!(size_of::<Service>() == 1048);

impl Default for Service {
    fn default() -> Self {
        Self {
            generation: 0,
            vip_id: 0,
            flags: 0,
            backend_count: 0,
            slot_count: 0,
            pad: 0,
            backends: [Backend::default(); MAX_BACKENDS],
            slots: [0; MAX_SLOTS],
        }
    }
}

/// Per-CPU counters of one VIP id or backend id; each field counts one thing.
///
/// Under a backend id only `connects`, `no_sock_storage` and
/// `connect_failures` are counted; the refusals are counted under the VIP id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `connect()`/`sendmsg()` calls translated.
    pub connects: u64,
    /// Calls refused with ECONNREFUSED: no live backend.
    pub rejected: u64,
    /// Calls translated without socket storage: getpeername/recvmsg show the backend.
    pub no_sock_storage: u64,
    /// Calls refused with EHOSTUNREACH: a slot of the table names no backend.
    pub bad_table: u64,
    /// Calls refused with EAFNOSUPPORT: an IPv6 backend for an AF_INET socket.
    pub family_mismatch: u64,
    /// Reserved: connects the kernel saw fail (a later passive health signal).
    pub connect_failures: u64,
}
const _: () = assert!(size_of::<Counters>() == 48);

/// One translation made on a socket: what getpeername/recvmsg undo.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockEntry {
    /// The VIP the application named.
    pub vip_addr_be: [u32; 4],
    /// The backend it was sent to.
    pub backend_addr_be: [u32; 4],
    /// VIP port, network byte order.
    pub vip_port_be: u16,
    /// Backend port, network byte order.
    pub backend_port_be: u16,
    /// Backend id.
    pub backend_id: u32,
    /// Table generation the backend was chosen from.
    pub generation: u64,
}
const _: () = assert!(size_of::<SockEntry>() == 48);

/// Socket-local storage value: released by the kernel with the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// Most recent VIPs this socket was translated for.
    pub entries: [SockEntry; SOCK_ENTRIES],
    /// Entry the next new VIP replaces (round robin).
    pub next: u32,
    /// Always zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<SockState>() == 200);

/// The single value of the meta map: what layout the pinned maps hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`LAYOUT_VERSION`] of the writer.
    pub layout_version: u32,
    /// `size_of::<Service>()`.
    pub service_size: u32,
    /// `size_of::<SockState>()`.
    pub sock_state_size: u32,
    /// `size_of::<Counters>()`.
    pub counters_size: u32,
}
const _: () = assert!(size_of::<Meta>() == 16);

impl Meta {
    /// The meta value this build writes and expects.
    pub const CURRENT: Meta = Meta {
        layout_version: LAYOUT_VERSION,
        service_size: size_of::<Service>() as u32,
        sock_state_size: size_of::<SockState>() as u32,
        counters_size: size_of::<Counters>() as u32,
    };
}

/// Address words in network byte order from the 16 octets of an IPv6 address.
///
/// ```
/// use failoverd_shared::{addr_octets, addr_words};
/// let octets = std::net::Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
/// assert_eq!(addr_octets(addr_words(octets)), octets);
/// ```
pub fn addr_words(octets: [u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// The 16 octets of an IPv6 address from address words in network byte order.
pub fn addr_octets(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    out
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data: repr(C), integer fields only, explicit padding,
    // every bit pattern valid.
    unsafe impl aya::Pod for super::VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Service {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Meta {}
}

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_carry_the_layout_version() {
        let suffix = std::format!("_v{LAYOUT_VERSION}");
        for name in map_names::ALL {
            assert!(name.ends_with(&suffix), "{name} does not end in {suffix}");
        }
    }

    #[test]
    fn address_words_round_trip_in_network_order() {
        let octets = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];
        let words = addr_words(octets);
        assert_eq!(words[2], u32::from_be(0x0000_ffff));
        assert_eq!(words[3].to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!(addr_octets(words), octets);
    }
}
