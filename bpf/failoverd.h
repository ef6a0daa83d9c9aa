/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map layouts shared between the BPF programs and failoverd's user space.
 *
 * The Rust mirror of every type lives in shared/src/lib.rs. Both sides assert
 * the sizes; a change here without the same change there fails the build.
 * Any change to a layout bumps FO_LAYOUT_VERSION and the _vN suffix of the
 * map names, so a daemon never writes a pinned map of another layout.
 */
#ifndef FAILOVERD_H
#define FAILOVERD_H

#include <linux/types.h>

#define FO_LAYOUT_VERSION 4

/* Backends one VIP can name at once. */
#define FO_MAX_BACKENDS 32
/* Slots of a VIP's selection table: weights are resolved to 1/256. */
#define FO_MAX_SLOTS 256
/* VIPs one datapath can serve. */
#define FO_MAX_SERVICES 65536
/* Counter ids (VIP ids and backend ids share one id space). */
#define FO_MAX_COUNTERS 262144
/* VIPs one unconnected UDP socket keeps reverse translations for. */
#define FO_SOCK_ENTRIES 4
/* Ring buffer bytes for kernel-observed connect failures. */
#define FO_EVENTS_BYTES (256 * 1024)
/* Backend ids one termination pass can target. */
#define FO_MAX_TERMINATE_TARGETS 4096

/* fo_backend.flags: another VIP names the same address, so the reverse map cannot
 * tell which VIP a socket to it was meant for; the socket records it in storage. */
#define FO_BACKEND_SHARED 1

/*
 * The mark of a translated TCP socket: bpf_sock_ops_cb_flags, set by the connect
 * hook with bpf_setsockopt(TCP_BPF_SOCK_OPS_CB_FLAGS). It costs no allocation, and
 * it is exactly what the sock_ops program needs: RTO for the socket's life (SYN
 * timeouts; rare when healthy), and STATE while connecting (to see SYN_SENT ->
 * CLOSE). The connect hook sets RTO only; sock_ops adds STATE at TCP_CONNECT_CB,
 * after the socket entered SYN_SENT, so CLOSE -> SYN_SENT costs no callback.
 */
#define FO_MARK_TRANSLATED (1 /* RTO_CB */)
#define FO_MARK_CONNECTING (4 /* STATE_CB */ | 1 /* RTO_CB */)
#define FO_MARK_ESTABLISHED (1 /* RTO_CB */)
#define FO_MARK_BIT 1

/* fo_event.kind */
#define FO_EVENT_REFUSED 1
#define FO_EVENT_SYN_TIMEOUT 2

/* Key of the services map: a VIP as the application names it. */
struct fo_vip_key {
	__u32 addr_be[4]; /* VIP address, network byte order; IPv4 as ::ffff:a.b.c.d */
	__u16 port_be;   /* VIP port, network byte order */
	__u8 proto;      /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;        /* always zero: part of the hashed key */
};
_Static_assert(sizeof(struct fo_vip_key) == 20, "fo_vip_key layout");

/* One backend a VIP can be translated to. */
struct fo_backend {
	__u32 addr_be[4]; /* backend address, network byte order; IPv4 as ::ffff:a.b.c.d */
	__u16 port_be;   /* backend port, network byte order */
	__u16 flags;     /* FO_BACKEND_* */
	__u32 id;        /* backend id: key of its counters */
};
_Static_assert(sizeof(struct fo_backend) == 24, "fo_backend layout");

/*
 * Value of the services map: the whole selection table of one VIP, written in
 * one map update so a concurrent connect() sees the old or the new table and
 * never a mix of both.
 */
struct fo_service {
	__u64 generation;     /* changes on every write of this VIP */
	__u32 vip_id;         /* VIP id: key of its counters */
	__u16 passive_threshold; /* copied per backend into the passive map by user space */
	__u16 flags;          /* reserved for per-VIP options; zero today */
	__u16 backend_count;  /* valid entries in backends[]: slot group, then fallback */
	__u16 slot_count;     /* valid entries in slots[]; 0 = no live backend */
	__u16 active_count;   /* backends[0, active_count) is what slots[] names */
	__u16 pad;            /* always zero */
	struct fo_backend backends[FO_MAX_BACKENDS]; /* live backends */
	__u8 slots[FO_MAX_SLOTS]; /* indexes into backends[], repeated by weight */
};
_Static_assert(sizeof(struct fo_service) == 1048, "fo_service layout");

/*
 * Per-CPU counters of one VIP id or backend id, in two maps (see the maps in
 * failoverd.bpf.c for their memory). What every healthy translated connect
 * counts is in a per-CPU array indexed by id (struct fo_hot_counters); the
 * rest, counted when something is refused or goes wrong, in a per-CPU hash
 * whose entry for an id is created on first use (struct fo_counters). Each
 * field counts one thing; the refusals are counted under VIP ids, the rest
 * under backend ids.
 */
struct fo_hot_counters {
	__u64 connects;          /* connect()/sendmsg() translated */
	__u64 established;       /* translated TCP connects that completed the handshake */
};
_Static_assert(sizeof(struct fo_hot_counters) == 16, "fo_hot_counters layout");

struct fo_counters {
	__u64 rejected;          /* refused with ECONNREFUSED: no live backend */
	__u64 no_sock_storage;   /* translated, but no socket storage: the peer shows as the backend */
	__u64 bad_table;         /* refused with EHOSTUNREACH: a slot names no backend */
	__u64 family_mismatch;   /* refused with EAFNOSUPPORT: an IPv6 backend for an AF_INET socket */
	__u64 connect_failures;  /* translated TCP connects refused or reset in SYN_SENT */
	__u64 syn_timeouts;      /* SYN retransmission timeouts of translated connects */
	__u64 diverted;          /* connects sent elsewhere: this backend was suspect */
};
_Static_assert(sizeof(struct fo_counters) == 56, "fo_counters layout");

/* Value of the reverse map, keyed by a backend (in fo_vip_key form). */
struct fo_reverse {
	struct fo_vip_key vip; /* the one VIP that names this backend */
	__u32 vip_id;
	__u32 backend_id;      /* the backend's counter id under that VIP */
};
_Static_assert(sizeof(struct fo_reverse) == 28, "fo_reverse layout");

/* Value of the passive map, indexed by backend id. */
struct fo_passive {
	__u32 failures;  /* kernel-observed connect failures in a row */
	__u32 threshold; /* failures in a row that make the backend suspect; 0 = never */
};
_Static_assert(sizeof(struct fo_passive) == 8, "fo_passive layout");

/* Ring buffer record: a failed translated connect. */
struct fo_event {
	__u64 ktime_ns;
	__u32 backend_id;
	__u32 vip_id;
	__u32 addr_be[4];  /* the backend; IPv4 as ::ffff:a.b.c.d */
	__u16 port_be;
	__u8 kind;         /* FO_EVENT_* */
	__u8 suspect;      /* 1: this failure reached the threshold */
	__u32 consecutive; /* failures in a row, counting this one */
};
_Static_assert(sizeof(struct fo_event) == 40, "fo_event layout");

/* What the termination iterators write per socket to abort (sock_diag SOCK_DESTROY). */
struct fo_doomed {
	__u64 cookie;
	__u32 src_be[4];
	__u32 dst_be[4];
	__u16 src_port;    /* host byte order */
	__u16 dst_port_be;
	__u8 family;
	__u8 proto;
	__u16 pad;
};
_Static_assert(sizeof(struct fo_doomed) == 48, "fo_doomed layout");

/* One translation made on a socket: what getpeername/recvmsg undo. */
struct fo_sock_entry {
	__u32 vip_addr_be[4];     /* the VIP the application named */
	__u32 backend_addr_be[4]; /* the backend it was sent to */
	__u16 vip_port_be;      /* VIP port, network byte order */
	__u16 backend_port_be;  /* backend port, network byte order */
	__u32 backend_id;       /* backend id, for counters and later termination */
	__u64 generation;       /* table generation the backend was chosen from */
};
_Static_assert(sizeof(struct fo_sock_entry) == 48, "fo_sock_entry layout");

/* Socket-local storage: released by the kernel with the socket. */
struct fo_sock_state {
	struct fo_sock_entry entries[FO_SOCK_ENTRIES]; /* most recent VIPs */
	__u32 next;  /* entry the next new VIP replaces (round robin) */
	__u32 pad;   /* always zero */
};
_Static_assert(sizeof(struct fo_sock_state) == 200, "fo_sock_state layout");

/* The single value of the meta map: what layout the pinned maps hold. */
struct fo_meta {
	__u32 layout_version;   /* FO_LAYOUT_VERSION of the writer */
	__u32 service_size;     /* sizeof(struct fo_service) */
	__u32 sock_state_size;  /* sizeof(struct fo_sock_state) */
	__u32 counters_size;    /* sizeof(struct fo_counters) */
};
_Static_assert(sizeof(struct fo_meta) == 16, "fo_meta layout");

#endif /* FAILOVERD_H */
