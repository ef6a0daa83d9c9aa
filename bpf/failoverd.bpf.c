// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * failoverd's datapath: cgroup socket hooks that translate a VIP into a live
 * backend when a socket connects or sends, and back when the application asks
 * who its peer is. The technique is Cilium's socket load balancer
 * (bpf/bpf_sock.c): no packet is ever rewritten, so there is no NAT state and
 * no extra hop.
 *
 * Every entry point is thin: it reads the context, calls an always-inline
 * worker that returns 0 or -errno, and turns that into proceed or reject.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "failoverd.h"

#define SYS_REJECT  0
#define SYS_PROCEED 1

#ifndef SOL_TCP
#define SOL_TCP 6
#endif
/* bpf_setsockopt/getsockopt of a TCP socket's sock_ops callback flags (Linux 6.14);
 * older kernels refuse it with EINVAL and sockets get storage instead. */
#ifndef TCP_BPF_SOCK_OPS_CB_FLAGS
#define TCP_BPF_SOCK_OPS_CB_FLAGS 1008
#endif

/* Returned by the translate worker when the address is not a VIP. */
#define NOT_A_VIP 1

/* VIP -> the VIP's whole selection table (one value, one write). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FO_MAX_SERVICES);
	/*
	 * No preallocation: an updated element is a new allocation, and the old
	 * one is freed only after an RCU grace period, so a reader that looked up
	 * the old table keeps reading the old table, never a torn one.
	 */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fo_vip_key);
	__type(value, struct fo_service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failoverd_services_v4 SEC(".maps");

/* Per-socket reverse translations; the kernel frees them with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct fo_sock_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failoverd_sockets_v4 SEC(".maps");

/*
 * Counter id (VIP id or backend id) -> per-CPU counters, split by how often they
 * are counted (struct fo_hot_counters and struct fo_counters in failoverd.h).
 *
 * Hot: what every translated connect counts (connects in the connect hook,
 * established in sock_ops), in an array indexed by id (the daemon hands out ids
 * below FO_MAX_COUNTERS). The verifier inlines the lookup and no element is
 * ever created: in a per-CPU hash (layout v3) the two counts of connect4 cost
 * ~70 ns of its ~310 ns, and established ~35 ns of sock_ops per connect. The
 * array is allocated up front, whatever is in use:
 *   FO_MAX_COUNTERS * sizeof(struct fo_hot_counters) = 262,144 * 16 B
 *     = 4 MiB per possible CPU (8 MiB on 2 CPUs, 256 MiB on 64),
 *   + 262,144 * 8 B = 2 MiB of per-element pointers, once.
 * All 9 counters in the array (72 B each) took 18 MiB per possible CPU
 * (1,152 MiB on 64); connects alone (8 B) would take 2 MiB.
 *
 * Cold: the other counters, in a per-CPU hash without preallocation. Fixed:
 * its buckets, 262,144 * 16 B = 4 MiB once (as in layout v3). An id's entry,
 * sizeof(struct fo_counters) = 56 B per possible CPU plus the element, exists
 * only once something was counted under it: refusals, failures, SYN timeouts
 * and diversions that never happen cost no memory.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FO_MAX_COUNTERS);
	__type(key, __u32);
	__type(value, struct fo_hot_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failoverd_connects_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, FO_MAX_COUNTERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct fo_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failoverd_counters_v4 SEC(".maps");

/*
 * Backend -> the one VIP that names it: the reverse translation of a marked TCP
 * socket, derived at getpeername time instead of written at every connect.
 * Written by user space with the tables; a backend two VIPs share is flagged
 * FO_BACKEND_SHARED in the non-owner's table and uses socket storage instead.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FO_MAX_COUNTERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fo_vip_key);
	__type(value, struct fo_reverse);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failoverd_reverse_v4 SEC(".maps");

/* Backend id -> failures in a row and the suspect threshold (an array: the
 * connect hook's lookup is inlined by the verifier, a few ns). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FO_MAX_COUNTERS);
	__type(key, __u32);
	__type(value, struct fo_passive);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failoverd_passive_v4 SEC(".maps");

/* Failed translated connects, read by the daemon without polling. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FO_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failoverd_events_v4 SEC(".maps");

/* Backend ids whose translated sockets the termination iterators report. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FO_MAX_TERMINATE_TARGETS);
	__type(key, __u32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failoverd_terminate_v4 SEC(".maps");

/* What layout the pinned maps hold; written by user space, never read here. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fo_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failoverd_meta_v4 SEC(".maps");

enum fo_counter {
	FO_CONNECTS,
	FO_REJECTED,
	FO_NO_SOCK_STORAGE,
	FO_BAD_TABLE,
	FO_FAMILY_MISMATCH,
	FO_CONNECT_FAILURES,
	FO_ESTABLISHED,
	FO_SYN_TIMEOUTS,
	FO_DIVERTED,
};

/* The hot counters of an id; NULL only for an id beyond the array, which no
 * writer hands out. */
static __always_inline struct fo_hot_counters *hot_counters(__u32 id)
{
	return bpf_map_lookup_elem(&failoverd_connects_v4, &id);
}

/* The cold counters of an id, created at zero on first use. */
static __always_inline struct fo_counters *cold_counters(__u32 id)
{
	struct fo_counters *c = bpf_map_lookup_elem(&failoverd_counters_v4, &id);

	if (!c) {
		struct fo_counters zero = {};

		/* Two CPUs may race to create it: NOEXIST lets one win. */
		bpf_map_update_elem(&failoverd_counters_v4, &id, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&failoverd_counters_v4, &id);
	}
	return c;
}

/* `which` is known at each call site (connect_failed's two choices are both
 * cold), so each count compiles to a lookup in one map. */
static __always_inline void count(__u32 id, enum fo_counter which)
{
	struct fo_hot_counters *h;
	struct fo_counters *c;

	/* Per-CPU values: no other CPU writes this one, no atomics needed. */
	if (which == FO_CONNECTS || which == FO_ESTABLISHED) {
		h = hot_counters(id);
		if (!h)
			return;
		if (which == FO_CONNECTS)
			h->connects++;
		else
			h->established++;
		return;
	}
	c = cold_counters(id);
	if (!c)
		return;
	switch (which) {
	case FO_CONNECTS: /* hot: counted above */
		break;
	case FO_REJECTED:
		c->rejected++;
		break;
	case FO_NO_SOCK_STORAGE:
		c->no_sock_storage++;
		break;
	case FO_BAD_TABLE:
		c->bad_table++;
		break;
	case FO_FAMILY_MISMATCH:
		c->family_mismatch++;
		break;
	case FO_CONNECT_FAILURES:
		c->connect_failures++;
		break;
	case FO_ESTABLISHED: /* hot: counted above */
		break;
	case FO_SYN_TIMEOUTS:
		c->syn_timeouts++;
		break;
	case FO_DIVERTED:
		c->diverted++;
		break;
	}
}

static __always_inline void addr_v4_mapped(__u32 out[4], __u32 ip4_be)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = bpf_htonl(0x0000ffff);
	out[3] = ip4_be;
}

static __always_inline int addr_is_v4_mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int addr_eq(const __u32 a[4], const __u32 b[4])
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void addr_copy(__u32 dst[4], const __u32 src[4])
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

/* The slot a random draw lands on, or NULL when the table is inconsistent. */
static __always_inline const struct fo_backend *
pick_backend(const struct fo_service *svc, __u32 draw)
{
	__u32 slot_count = svc->slot_count;
	__u32 slot, idx;

	if (slot_count == 0 || slot_count > FO_MAX_SLOTS)
		return NULL;
	/* Multiply-shift maps the draw onto [0, slot_count) without a division. */
	slot = ((__u64)draw * slot_count) >> 32;
	/* The masks change nothing, but clang proves that and drops them while
	 * the verifier cannot: the empty asm hides the value from clang. */
	asm volatile("" : "+r"(slot));
	idx = svc->slots[slot & (FO_MAX_SLOTS - 1)];
	/* Slots name the slot group only; the fallback group is never drawn. */
	if (idx >= svc->active_count || idx >= svc->backend_count)
		return NULL;
	asm volatile("" : "+r"(idx));
	return &svc->backends[idx & (FO_MAX_BACKENDS - 1)];
}

/* The socket's entry for this VIP, or NULL. */
static __always_inline struct fo_sock_entry *
find_vip_entry(struct fo_sock_state *st, const struct fo_vip_key *key)
{
#pragma unroll
	for (int i = 0; i < FO_SOCK_ENTRIES; i++) {
		struct fo_sock_entry *e = &st->entries[i];

		if (e->vip_port_be == key->port_be && addr_eq(e->vip_addr_be, key->addr_be))
			return e;
	}
	return NULL;
}

/* The socket's entry whose backend is this peer, or NULL. */
static __always_inline struct fo_sock_entry *
find_backend_entry(struct fo_sock_state *st, const __u32 peer[4], __u16 port_be)
{
#pragma unroll
	for (int i = 0; i < FO_SOCK_ENTRIES; i++) {
		struct fo_sock_entry *e = &st->entries[i];

		if (e->backend_port_be == port_be && e->backend_port_be != 0 &&
		    addr_eq(e->backend_addr_be, peer))
			return e;
	}
	return NULL;
}

/* Whether kernel-observed failures marked this backend suspect. */
static __always_inline int is_suspect(__u32 id)
{
	struct fo_passive *p = bpf_map_lookup_elem(&failoverd_passive_v4, &id);

	return p && p->threshold && p->failures >= p->threshold;
}

/* Redraws in the slot group before the fallback group is tried. */
#define FO_REDRAWS 8

/*
 * A backend that is not suspect when the draw landed on one that is: a few more
 * draws in the slot group (weights still apply), then the fallback group (the
 * next priority's live backends). NULL when every one is suspect: the caller
 * keeps its first pick, so a mark never leaves a VIP with nothing to pick.
 */
static __always_inline const struct fo_backend *
avoid_suspect(const struct fo_service *svc, __u32 draw)
{
	const struct fo_backend *b;
	__u32 count = svc->backend_count;
	__u32 active = svc->active_count;

	for (__u32 i = 1; i <= FO_REDRAWS; i++) {
		/* Fibonacci hashing: distinct, well-spread draws from one random value. */
		b = pick_backend(svc, draw + i * 0x9e3779b9u);
		if (b && !is_suspect(b->id))
			return b;
	}
	if (count > FO_MAX_BACKENDS)
		count = FO_MAX_BACKENDS;
	for (__u32 i = 0; i < FO_MAX_BACKENDS; i++) {
		__u32 idx = active + i;

		if (idx >= count)
			break;
		asm volatile("" : "+r"(idx));
		b = &svc->backends[idx & (FO_MAX_BACKENDS - 1)];
		if (!is_suspect(b->id))
			return b;
	}
	return NULL;
}

/* Marks a TCP socket as translated (see FO_MARK_TRANSLATED); 0 when marked. */
static __always_inline long mark_translated(struct bpf_sock_addr *ctx)
{
	int mark = FO_MARK_TRANSLATED;

	return bpf_setsockopt(ctx, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, &mark, sizeof(mark));
}

/*
 * Translates a VIP into a backend, written to *out. Returns 0 when
 * translated, NOT_A_VIP when the address is not a VIP, -errno to refuse.
 * sticky: the sendmsg hooks (unconnected UDP): reuse the backend this socket
 * already has for the VIP while the table is unchanged, so one flow stays on
 * one backend. Constant at every call site, so the connect-only code below is
 * compiled out of the sendmsg programs (which may not call bpf_setsockopt).
 * v4_only: the socket is AF_INET and cannot reach an IPv6 backend.
 *
 * A TCP connect writes no per-socket state when it can avoid it: the socket is
 * marked through its sock_ops callback flags, and getpeername derives the VIP
 * from the reverse map. Socket storage (an allocation: most of the cost of a
 * connect) is used only by UDP, by TCP to a backend two VIPs share, and on
 * kernels that cannot set the mark.
 */
static __always_inline int translate(struct bpf_sock_addr *ctx, const struct fo_vip_key *key,
				     const int sticky, int v4_only, struct fo_backend *out)
{
	struct fo_service *svc;
	struct fo_sock_state *st = NULL;
	struct fo_sock_entry *e = NULL;
	const struct fo_backend *b, *other;
	struct bpf_sock *sk;
	__u32 draw;

	svc = bpf_map_lookup_elem(&failoverd_services_v4, key);
	if (!svc)
		return NOT_A_VIP;
	if (svc->slot_count == 0) {
		/* No live backend: refuse now rather than let the application
		 * wait for a timeout, and never send a packet to the VIP. */
		count(svc->vip_id, FO_REJECTED);
		return -ECONNREFUSED;
	}

	sk = ctx->sk;
	if (sticky && sk) {
		st = bpf_sk_storage_get(&failoverd_sockets_v4, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (st)
			e = find_vip_entry(st, key);
	}

	if (sticky && e && e->generation == svc->generation && e->backend_port_be != 0) {
		addr_copy(out->addr_be, e->backend_addr_be);
		out->port_be = e->backend_port_be;
		out->flags = 0;
		out->id = e->backend_id;
	} else {
		draw = bpf_get_prandom_u32();
		b = pick_backend(svc, draw);
		if (!b) {
			count(svc->vip_id, FO_BAD_TABLE);
			return -EHOSTUNREACH;
		}
		if (is_suspect(b->id)) {
			other = avoid_suspect(svc, draw);
			if (other) {
				count(b->id, FO_DIVERTED);
				b = other;
			}
		}
		addr_copy(out->addr_be, b->addr_be);
		out->port_be = b->port_be;
		out->flags = b->flags;
		out->id = b->id;
	}
	/* Checked before anything is recorded or counted as translated: the
	 * writer never installs such a table, but a table it did not write may. */
	if (v4_only && !addr_is_v4_mapped(out->addr_be)) {
		count(svc->vip_id, FO_FAMILY_MISMATCH);
		return -EAFNOSUPPORT;
	}

	if (!sticky && key->proto == IPPROTO_TCP && sk) {
		if (mark_translated(ctx) == 0 && !(out->flags & FO_BACKEND_SHARED))
			goto translated;
	}

	if (!st && sk) {
		st = bpf_sk_storage_get(&failoverd_sockets_v4, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (st)
			e = find_vip_entry(st, key);
	}
	if (st) {
		if (!e) {
			e = &st->entries[st->next % FO_SOCK_ENTRIES];
			st->next++;
		}
		addr_copy(e->vip_addr_be, key->addr_be);
		e->vip_port_be = key->port_be;
		addr_copy(e->backend_addr_be, out->addr_be);
		e->backend_port_be = out->port_be;
		e->backend_id = out->id;
		e->generation = svc->generation;
	} else {
		/* Translated, but getpeername/recvmsg will show the backend. */
		count(svc->vip_id, FO_NO_SOCK_STORAGE);
		count(out->id, FO_NO_SOCK_STORAGE);
	}

translated:
	count(svc->vip_id, FO_CONNECTS);
	count(out->id, FO_CONNECTS);
	return 0;
}

/*
 * A UDP socket re-connected to a non-VIP must not keep answering with a VIP.
 * Only connect() forgets: an unconnected socket that sends to a VIP and then
 * elsewhere still gets the VIP backend's late replies, and they must still
 * read as coming from the VIP. (A reply from an address that is also one of
 * the socket's VIP backends reads as the VIP; the entry cannot tell them apart.)
 */
static __always_inline void forget_translations(struct bpf_sock_addr *ctx)
{
	struct fo_sock_state *st;
	struct bpf_sock *sk = ctx->sk;

	if (!sk || ctx->protocol != IPPROTO_UDP)
		return;
	st = bpf_sk_storage_get(&failoverd_sockets_v4, sk, 0, 0);
	if (st)
		bpf_sk_storage_delete(&failoverd_sockets_v4, sk);
}

static __always_inline int xlate4(struct bpf_sock_addr *ctx, int sticky)
{
	struct fo_vip_key key = {};
	struct fo_backend b = {};
	int ret;

	addr_v4_mapped(key.addr_be, ctx->user_ip4);
	key.port_be = (__u16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;

	ret = translate(ctx, &key, sticky, 1, &b);
	if (ret == NOT_A_VIP) {
		/* sendmsg (sticky) never forgets: see forget_translations. */
		if (!sticky)
			forget_translations(ctx);
		return 0;
	}
	if (ret < 0)
		return ret;
	ctx->user_ip4 = b.addr_be[3];
	ctx->user_port = (__u32)b.port_be;
	return 0;
}

static __always_inline int xlate6(struct bpf_sock_addr *ctx, int sticky)
{
	struct fo_vip_key key = {};
	struct fo_backend b = {};
	int ret;

	/* An IPv4-mapped address here is a dual-stack socket reaching an IPv4
	 * VIP: only this hook runs for it, and the key form already matches. */
	key.addr_be[0] = ctx->user_ip6[0];
	key.addr_be[1] = ctx->user_ip6[1];
	key.addr_be[2] = ctx->user_ip6[2];
	key.addr_be[3] = ctx->user_ip6[3];
	key.port_be = (__u16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;

	ret = translate(ctx, &key, sticky, 0, &b);
	if (ret == NOT_A_VIP) {
		if (!sticky)
			forget_translations(ctx);
		return 0;
	}
	if (ret < 0)
		return ret;
	ctx->user_ip6[0] = b.addr_be[0];
	ctx->user_ip6[1] = b.addr_be[1];
	ctx->user_ip6[2] = b.addr_be[2];
	ctx->user_ip6[3] = b.addr_be[3];
	ctx->user_port = (__u32)b.port_be;
	return 0;
}

/* Whether a TCP socket carries the translated mark (see FO_MARK_CONNECTING). */
static __always_inline int is_marked(struct bpf_sock_addr *ctx)
{
	int flags = 0;

	if (bpf_getsockopt(ctx, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, &flags, sizeof(flags)))
		return 0;
	return flags & FO_MARK_BIT;
}

/*
 * Shows the VIP instead of the backend the socket was translated to: from the
 * socket's own storage when it has an entry for this peer, else, for a marked
 * TCP socket, from the reverse map. A socket that connected to a backend's own
 * address is neither, and keeps seeing the backend.
 * getpeername: TCP or connected UDP; recvmsg: UDP only (never marked).
 */
static __always_inline int reverse(struct bpf_sock_addr *ctx, __u32 peer[4], __u16 *port_be,
				   const int may_be_tcp)
{
	struct fo_sock_state *st;
	struct fo_sock_entry *e;
	struct fo_reverse *r;
	struct fo_vip_key bkey = {};
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return 0;
	st = bpf_sk_storage_get(&failoverd_sockets_v4, sk, 0, 0);
	if (st) {
		/* The entry names the backend: a peer that is not that backend
		 * means the entry is stale and nothing is rewritten. */
		e = find_backend_entry(st, peer, *port_be);
		if (e) {
			addr_copy(peer, e->vip_addr_be);
			*port_be = e->vip_port_be;
			return 1;
		}
	}
	if (!may_be_tcp || sk->protocol != IPPROTO_TCP || !is_marked(ctx))
		return 0;
	addr_copy(bkey.addr_be, peer);
	bkey.port_be = *port_be;
	bkey.proto = IPPROTO_TCP;
	r = bpf_map_lookup_elem(&failoverd_reverse_v4, &bkey);
	if (!r)
		return 0;
	addr_copy(peer, r->vip.addr_be);
	*port_be = r->vip.port_be;
	return 1;
}

/*
 * The context is written once, after the lookup: clang would otherwise merge
 * the stores of both branches into one through a computed context pointer,
 * which the verifier refuses.
 */
static __always_inline void reverse4(struct bpf_sock_addr *ctx, const int may_be_tcp)
{
	__u32 peer[4];
	__u16 port_be = (__u16)ctx->user_port;

	addr_v4_mapped(peer, ctx->user_ip4);
	if (!reverse(ctx, peer, &port_be, may_be_tcp) || !addr_is_v4_mapped(peer))
		return;
	ctx->user_ip4 = peer[3];
	ctx->user_port = (__u32)port_be;
}

static __always_inline void reverse6(struct bpf_sock_addr *ctx, const int may_be_tcp)
{
	__u32 peer[4];
	__u16 port_be = (__u16)ctx->user_port;

	peer[0] = ctx->user_ip6[0];
	peer[1] = ctx->user_ip6[1];
	peer[2] = ctx->user_ip6[2];
	peer[3] = ctx->user_ip6[3];
	if (!reverse(ctx, peer, &port_be, may_be_tcp))
		return;
	ctx->user_ip6[0] = peer[0];
	ctx->user_ip6[1] = peer[1];
	ctx->user_ip6[2] = peer[2];
	ctx->user_ip6[3] = peer[3];
	ctx->user_port = (__u32)port_be;
}

static __always_inline int verdict(int ret)
{
	if (ret < 0) {
		/* Without this the caller would see EPERM. */
		bpf_set_retval(ret);
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int fo_connect4(struct bpf_sock_addr *ctx)
{
	return verdict(xlate4(ctx, 0));
}

SEC("cgroup/connect6")
int fo_connect6(struct bpf_sock_addr *ctx)
{
	return verdict(xlate6(ctx, 0));
}

SEC("cgroup/sendmsg4")
int fo_sendmsg4(struct bpf_sock_addr *ctx)
{
	return verdict(xlate4(ctx, 1));
}

SEC("cgroup/sendmsg6")
int fo_sendmsg6(struct bpf_sock_addr *ctx)
{
	return verdict(xlate6(ctx, 1));
}

SEC("cgroup/recvmsg4")
int fo_recvmsg4(struct bpf_sock_addr *ctx)
{
	reverse4(ctx, 0);
	return SYS_PROCEED;
}

SEC("cgroup/recvmsg6")
int fo_recvmsg6(struct bpf_sock_addr *ctx)
{
	reverse6(ctx, 0);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int fo_getpeername4(struct bpf_sock_addr *ctx)
{
	reverse4(ctx, 1);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int fo_getpeername6(struct bpf_sock_addr *ctx)
{
	reverse6(ctx, 1);
	return SYS_PROCEED;
}

/* ---- Kernel-observed connect outcomes (passive health) ---- */

/* The backend a marked TCP socket was translated to, or 0 when unknown. */
static __always_inline __u32 sockops_backend(struct bpf_sock_ops *ops, struct fo_vip_key *bkey,
					     __u32 *vip_id)
{
	struct fo_sock_state *st;
	struct fo_sock_entry *e;
	struct fo_reverse *r;
	struct bpf_sock *sk = ops->sk;

	/* Every context field is loaded once, unconditionally: clang would
	 * otherwise merge the loads of both branches into one through a computed
	 * context pointer, which the verifier refuses. */
	__u32 ip4 = ops->remote_ip4;
	__u32 ip6_0 = ops->remote_ip6[0], ip6_1 = ops->remote_ip6[1];
	__u32 ip6_2 = ops->remote_ip6[2], ip6_3 = ops->remote_ip6[3];

	asm volatile("" : "+r"(ip4), "+r"(ip6_0), "+r"(ip6_1), "+r"(ip6_2), "+r"(ip6_3));
	if (ops->family == 2 /* AF_INET */) {
		addr_v4_mapped(bkey->addr_be, ip4);
	} else {
		bkey->addr_be[0] = ip6_0;
		bkey->addr_be[1] = ip6_1;
		bkey->addr_be[2] = ip6_2;
		bkey->addr_be[3] = ip6_3;
	}
	/* remote_port holds the port in network byte order in its upper 16 bits. */
	bkey->port_be = (__u16)(ops->remote_port >> 16);
	bkey->proto = IPPROTO_TCP;

	if (sk) {
		st = bpf_sk_storage_get(&failoverd_sockets_v4, sk, 0, 0);
		if (st) {
			e = find_backend_entry(st, bkey->addr_be, bkey->port_be);
			if (e) {
				*vip_id = 0;
				return e->backend_id;
			}
		}
	}
	r = bpf_map_lookup_elem(&failoverd_reverse_v4, bkey);
	if (!r)
		return 0;
	*vip_id = r->vip_id;
	return r->backend_id;
}

/* One failed translated connect: count it, bump the run, tell the daemon. */
static __always_inline void connect_failed(struct bpf_sock_ops *ops, __u8 kind)
{
	struct fo_vip_key bkey = {};
	struct fo_passive *p;
	struct fo_event *ev;
	__u32 vip_id = 0, id, run = 1, threshold = 0;

	id = sockops_backend(ops, &bkey, &vip_id);
	if (!id)
		return;
	count(id, kind == FO_EVENT_REFUSED ? FO_CONNECT_FAILURES : FO_SYN_TIMEOUTS);
	p = bpf_map_lookup_elem(&failoverd_passive_v4, &id);
	if (p) {
		/* Connects to one backend fail on every CPU at once: atomic. */
		run = __sync_fetch_and_add(&p->failures, 1) + 1;
		threshold = p->threshold;
	}
	ev = bpf_ringbuf_reserve(&failoverd_events_v4, sizeof(*ev), 0);
	if (!ev)
		return; /* the daemon is behind; the counters still hold the truth */
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->backend_id = id;
	ev->vip_id = vip_id;
	addr_copy(ev->addr_be, bkey.addr_be);
	ev->port_be = bkey.port_be;
	ev->kind = kind;
	ev->suspect = threshold && run == threshold;
	ev->consecutive = run;
	/* Wake the daemon at once: this is the failover's latency budget. */
	bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP);
}

/* A translated connect completed: the run of failures, if any, is over. */
static __always_inline void connect_established(struct bpf_sock_ops *ops)
{
	struct fo_vip_key bkey = {};
	struct fo_passive *p;
	__u32 vip_id = 0, id;

	/* From here on only RTOs matter (and keep the mark); state callbacks
	 * would cost on every close of a long-lived connection. */
	bpf_sock_ops_cb_flags_set(ops, FO_MARK_ESTABLISHED);
	id = sockops_backend(ops, &bkey, &vip_id);
	if (!id)
		return;
	count(id, FO_ESTABLISHED);
	p = bpf_map_lookup_elem(&failoverd_passive_v4, &id);
	/* Read before write: a healthy backend's entry stays clean in every cache. */
	if (p && p->failures)
		p->failures = 0;
}

SEC("sockops")
int fo_sockops(struct bpf_sock_ops *ops)
{
	__u32 op = ops->op;

	if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		/* The socket is in SYN_SENT now: from here on its state changes
		 * matter. Kernels that cannot set the mark from the connect hook: a
		 * socket it gave storage to is marked here instead. */
		if ((ops->bpf_sock_ops_cb_flags & FO_MARK_BIT) ||
		    (ops->sk && bpf_sk_storage_get(&failoverd_sockets_v4, ops->sk, 0, 0)))
			bpf_sock_ops_cb_flags_set(ops, FO_MARK_CONNECTING);
		return 1;
	}
	if (!(ops->bpf_sock_ops_cb_flags & FO_MARK_BIT))
		return 1;
	switch (op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		connect_established(ops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* Refused (RST to the SYN) or reset before the handshake completed. */
		if (ops->args[0] == BPF_TCP_SYN_SENT && ops->args[1] == BPF_TCP_CLOSE)
			connect_failed(ops, FO_EVENT_REFUSED);
		break;
	case BPF_SOCK_OPS_RTO_CB:
		/* No answer to the SYN: a black-holed or frozen backend. */
		if (ops->state == BPF_TCP_SYN_SENT)
			connect_failed(ops, FO_EVENT_SYN_TIMEOUT);
		break;
	}
	return 1;
}

/* ---- Termination: iterators report translated sockets to doomed backends ---- */

/*
 * Kernel types the iterators read, declared with only the fields used: CO-RE
 * relocates every access against the running kernel's BTF at load time.
 */
struct seq_file;
struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock;
struct tcp_sock {
	__u8 bpf_sock_ops_cb_flags;
} __attribute__((preserve_access_index));

struct udp_sock;
struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

/* The socket's remote and local addresses in map form; 0 for other families. */
static __always_inline int sock_addrs(const struct sock_common *skc, struct fo_doomed *rec)
{
	rec->family = skc->skc_family;
	if (rec->family == 2 /* AF_INET */) {
		addr_v4_mapped(rec->dst_be, skc->skc_daddr);
		addr_v4_mapped(rec->src_be, skc->skc_rcv_saddr);
	} else if (rec->family == 10 /* AF_INET6 */) {
		__builtin_memcpy(rec->dst_be, &skc->skc_v6_daddr, 16);
		__builtin_memcpy(rec->src_be, &skc->skc_v6_rcv_saddr, 16);
	} else {
		return 0;
	}
	rec->dst_port_be = skc->skc_dport;
	rec->src_port = skc->skc_num;
	return 1;
}

/* The backend id a socket's storage says it was translated to for this peer, or 0. */
static __always_inline __u32 storage_backend(void *sk, struct fo_doomed *rec)
{
	struct fo_sock_state *st = bpf_sk_storage_get(&failoverd_sockets_v4, sk, 0, 0);
	struct fo_sock_entry *e;

	if (!st)
		return 0;
	e = find_backend_entry(st, rec->dst_be, rec->dst_port_be);
	return e ? e->backend_id : 0;
}

static __always_inline void report_if_doomed(struct seq_file *seq, __u32 id, struct fo_doomed *rec,
					     const void *sk)
{
	if (!id || !bpf_map_lookup_elem(&failoverd_terminate_v4, &id))
		return;
	rec->cookie = bpf_get_socket_cookie((void *)sk);
	bpf_seq_write(seq, rec, sizeof(*rec));
}

SEC("iter/tcp")
int fo_iter_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct fo_doomed rec = {};
	struct fo_vip_key bkey = {};
	struct fo_reverse *r;
	struct tcp_sock *tp;
	__u32 id;

	if (!skc)
		return 0;
	/* NULL for request and time-wait sockets: nothing to abort there. */
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp || !sock_addrs(skc, &rec))
		return 0;
	rec.proto = IPPROTO_TCP;
	id = storage_backend(tp, &rec);
	if (!id && (tp->bpf_sock_ops_cb_flags & FO_MARK_BIT)) {
		addr_copy(bkey.addr_be, rec.dst_be);
		bkey.port_be = rec.dst_port_be;
		bkey.proto = IPPROTO_TCP;
		r = bpf_map_lookup_elem(&failoverd_reverse_v4, &bkey);
		if (r)
			id = r->backend_id;
	}
	report_if_doomed(ctx->meta->seq, id, &rec, skc);
	return 0;
}

SEC("iter/udp")
int fo_iter_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;
	const struct sock_common *skc = (const void *)udp;
	struct fo_doomed rec = {};

	/* Only connected sockets have one peer to abort; an unconnected one
	 * already picks a live backend at its next sendmsg. */
	if (!udp || skc->skc_state != 1 /* TCP_ESTABLISHED */ || !sock_addrs(skc, &rec))
		return 0;
	rec.proto = IPPROTO_UDP;
	report_if_doomed(ctx->meta->seq, storage_backend(udp, &rec), &rec, skc);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
