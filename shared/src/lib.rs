//! The `#[repr(C)]` map layouts failoverd shares with its BPF programs (`bpf/failoverd.h`).
//!
//! Every type here has a twin in the C header; both sides assert the size, so a
//! change on one side only fails the build. A layout change bumps
//! [`LAYOUT_VERSION`] and the `_vN` suffix of the map names.
#![no_std]

use core::mem::size_of;

/// Layout version of every map below; stored in the meta map when the maps are created.
pub const LAYOUT_VERSION: u32 = 4;
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

/// Ring buffer bytes for kernel-observed connect failures (a power of two, page multiple).
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Backend ids one `terminate` pass can target at once.
pub const MAX_TERMINATE_TARGETS: u32 = 4096;

/// Flags of [`Backend::flags`].
pub mod backend_flags {
    /// Another VIP names the same backend address, so the reverse map cannot tell which
    /// VIP a socket to it was meant for: the connect hook records it in socket storage.
    pub const SHARED: u16 = 1;
}

/// What a translated TCP socket carries in its `bpf_sock_ops_cb_flags` (the mark that says
/// "translated" at no allocation): the callbacks the `sock_ops` program needs.
pub mod sock_mark {
    /// `BPF_SOCK_OPS_RTO_CB_FLAG`: kept for the socket's life; RTOs are rare when healthy.
    pub const RTO: u32 = 1;
    /// `BPF_SOCK_OPS_STATE_CB_FLAG`: only while connecting, to see `SYN_SENT → CLOSE`; added by
    /// `sock_ops` once the socket is in `SYN_SENT` (the connect hook sets [`RTO`] alone).
    pub const STATE: u32 = 4;
}

/// Pinned map names, versioned with the layout.
pub mod map_names {
    /// VIP key → the VIP's whole selection table.
    pub const SERVICES: &str = "failoverd_services_v4";
    /// Socket-local storage: per-socket reverse translations (UDP, and TCP to shared backends).
    pub const SOCKETS: &str = "failoverd_sockets_v4";
    /// Counter id → per-CPU [`super::Counters`]: a hash, an id's entry made on first use.
    pub const COUNTERS: &str = "failoverd_counters_v4";
    /// Counter id → per-CPU [`super::HotCounters`] (connects, established): an array indexed
    /// by id.
    pub const CONNECTS: &str = "failoverd_connects_v4";
    /// One [`super::Meta`] value: the layout the pinned maps hold.
    pub const META: &str = "failoverd_meta_v4";
    /// Backend address → the one VIP that names it: TCP's reverse translation.
    pub const REVERSE: &str = "failoverd_reverse_v4";
    /// Backend id → consecutive kernel-observed failures and the suspect threshold.
    pub const PASSIVE: &str = "failoverd_passive_v4";
    /// Ring buffer of [`super::ConnectEvent`]s.
    pub const EVENTS: &str = "failoverd_events_v4";
    /// Backend ids whose translated sockets the termination iterators report.
    pub const TERMINATE: &str = "failoverd_terminate_v4";
    /// Every map, in the order they are checked.
    pub const ALL: [&str; 9] = [
        SERVICES, SOCKETS, COUNTERS, CONNECTS, META, REVERSE, PASSIVE, EVENTS, TERMINATE,
    ];
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
    /// [`backend_flags`]; set by the datapath when it writes the table.
    pub flags: u16,
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
    /// Passive health threshold of this VIP's backends (0 = off); the datapath copies it
    /// into the passive map per backend id, where the kernel reads it.
    pub passive_threshold: u16,
    /// Reserved for per-VIP options; zero today.
    pub flags: u16,
    /// Valid entries in `backends`: the slot group, then the fallback group.
    pub backend_count: u16,
    /// Valid entries in `slots`; 0 means no live backend (connect gets ECONNREFUSED).
    pub slot_count: u16,
    /// `backends[..active_count]` is what the slots name; the rest is the fallback group,
    /// used only when every backend of the slot group is suspect.
    pub active_count: u16,
    /// Always zero.
    pub pad: u16,
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
            passive_threshold: 0,
            flags: 0,
            backend_count: 0,
            slot_count: 0,
            active_count: 0,
            pad: 0,
            backends: [Backend::default(); MAX_BACKENDS],
            slots: [0; MAX_SLOTS],
        }
    }
}

/// Per-CPU counters every healthy translated connect counts, of one VIP id or backend id:
/// the value of the [`map_names::CONNECTS`] array, indexed by id. The other counters are
/// [`Counters`], in a hash; together they are all of an id's counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotCounters {
    /// `connect()`/`sendmsg()` calls translated.
    pub connects: u64,
    /// Translated TCP connects that completed the handshake.
    pub established: u64,
}
const _: () = assert!(size_of::<HotCounters>() == 16);

/// Per-CPU counters of one VIP id or backend id that a healthy connect does not count: the
/// value of the [`map_names::COUNTERS`] hash, whose entry for an id exists once one of them
/// counted. Each field counts one thing.
///
/// Under a backend id: `no_sock_storage` and the kernel-observed failures (and
/// [`HotCounters`]); the refusals are counted under the VIP id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Calls refused with ECONNREFUSED: no live backend.
    pub rejected: u64,
    /// Calls translated without socket storage: getpeername/recvmsg show the backend.
    pub no_sock_storage: u64,
    /// Calls refused with EHOSTUNREACH: a slot of the table names no backend.
    pub bad_table: u64,
    /// Calls refused with EAFNOSUPPORT: an IPv6 backend for an AF_INET socket.
    pub family_mismatch: u64,
    /// Translated TCP connects refused or reset before the handshake completed.
    pub connect_failures: u64,
    /// SYN retransmission timeouts of translated TCP connects.
    pub syn_timeouts: u64,
    /// Connects sent elsewhere because this backend was marked suspect.
    pub diverted: u64,
}
const _: () = assert!(size_of::<Counters>() == 56);

/// Value of the reverse map (key: the backend as a [`VipKey`]): the one VIP that names it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reverse {
    /// The VIP a translated socket to this backend shows as its peer.
    pub vip: VipKey,
    /// That VIP's counter id.
    pub vip_id: u32,
    /// The backend's counter id under that VIP.
    pub backend_id: u32,
}
const _: () = assert!(size_of::<Reverse>() == 28);

/// Value of the passive map, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Passive {
    /// Kernel-observed connect failures in a row (an established connect resets it).
    pub failures: u32,
    /// Failures in a row that make the backend suspect; 0 = never.
    pub threshold: u32,
}
const _: () = assert!(size_of::<Passive>() == 8);

/// Kinds of [`ConnectEvent::kind`].
pub mod event_kinds {
    /// `SYN_SENT → CLOSE`: refused or reset.
    pub const REFUSED: u8 = 1;
    /// SYN retransmission timeout in `SYN_SENT`.
    pub const SYN_TIMEOUT: u8 = 2;
}

/// One ring buffer record: a failed translated connect.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectEvent {
    /// `bpf_ktime_get_ns()` when it was seen.
    pub ktime_ns: u64,
    /// Backend counter id.
    pub backend_id: u32,
    /// VIP counter id.
    pub vip_id: u32,
    /// Backend address words, network byte order; IPv4 as `::ffff:a.b.c.d`.
    pub addr_be: [u32; 4],
    /// Backend port, network byte order.
    pub port_be: u16,
    /// One of [`event_kinds`].
    pub kind: u8,
    /// 1 when this failure reached the threshold and marked the backend suspect.
    pub suspect: u8,
    /// Failures in a row, counting this one.
    pub consecutive: u32,
}
const _: () = assert!(size_of::<ConnectEvent>() == 40);

/// One record the termination iterators write: a translated socket to abort.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoomedSocket {
    /// Socket cookie.
    pub cookie: u64,
    /// Local address words, network byte order (IPv4 sockets: `::ffff:a.b.c.d`).
    pub src_be: [u32; 4],
    /// Remote address words, network byte order.
    pub dst_be: [u32; 4],
    /// Local port, host byte order.
    pub src_port: u16,
    /// Remote port, network byte order.
    pub dst_port_be: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// Always zero.
    pub pad: u16,
}
const _: () = assert!(size_of::<DoomedSocket>() == 48);

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
    unsafe impl aya::Pod for super::HotCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Meta {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Reverse {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Passive {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnectEvent {}
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
