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
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "failoverd.h"

#define SYS_REJECT  0
#define SYS_PROCEED 1

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
} failoverd_services_v2 SEC(".maps");

/* Per-socket reverse translations; the kernel frees them with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct fo_sock_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failoverd_sockets_v2 SEC(".maps");

/* Counter id (VIP id or backend id) -> per-CPU counters. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, FO_MAX_COUNTERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct fo_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failoverd_counters_v2 SEC(".maps");

/* What layout the pinned maps hold; written by user space, never read here. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fo_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failoverd_meta_v2 SEC(".maps");

enum fo_counter {
	FO_CONNECTS,
	FO_REJECTED,
	FO_NO_SOCK_STORAGE,
	FO_BAD_TABLE,
	FO_FAMILY_MISMATCH,
};

static __always_inline void count(__u32 id, enum fo_counter which)
{
	struct fo_counters *c = bpf_map_lookup_elem(&failoverd_counters_v2, &id);

	if (!c) {
		struct fo_counters zero = {};

		/* Two CPUs may race to create it: NOEXIST lets one win. */
		bpf_map_update_elem(&failoverd_counters_v2, &id, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&failoverd_counters_v2, &id);
		if (!c)
			return;
	}
	/* Per-CPU values: no other CPU writes this one, no atomics needed. */
	switch (which) {
	case FO_CONNECTS:
		c->connects++;
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
	if (idx >= svc->backend_count)
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

/*
 * Translates a VIP into a backend, written to *out. Returns 0 when
 * translated, NOT_A_VIP when the address is not a VIP, -errno to refuse.
 * sticky: reuse the backend this socket already has for the VIP while the
 * table is unchanged (unconnected UDP: one flow stays on one backend).
 * v4_only: the socket is AF_INET and cannot reach an IPv6 backend.
 */
static __always_inline int translate(struct bpf_sock_addr *ctx, const struct fo_vip_key *key,
				     int sticky, int v4_only, struct fo_backend *out)
{
	struct fo_service *svc;
	struct fo_sock_state *st;
	struct fo_sock_entry *e = NULL;
	const struct fo_backend *b;
	struct bpf_sock *sk;

	svc = bpf_map_lookup_elem(&failoverd_services_v2, key);
	if (!svc)
		return NOT_A_VIP;
	if (svc->slot_count == 0) {
		/* No live backend: refuse now rather than let the application
		 * wait for a timeout, and never send a packet to the VIP. */
		count(svc->vip_id, FO_REJECTED);
		return -ECONNREFUSED;
	}

	sk = ctx->sk;
	st = sk ? bpf_sk_storage_get(&failoverd_sockets_v2, sk, 0,
				     BPF_SK_STORAGE_GET_F_CREATE) : NULL;
	if (st)
		e = find_vip_entry(st, key);

	if (sticky && e && e->generation == svc->generation && e->backend_port_be != 0) {
		addr_copy(out->addr_be, e->backend_addr_be);
		out->port_be = e->backend_port_be;
		out->pad = 0;
		out->id = e->backend_id;
	} else {
		b = pick_backend(svc, bpf_get_prandom_u32());
		if (!b) {
			count(svc->vip_id, FO_BAD_TABLE);
			return -EHOSTUNREACH;
		}
		addr_copy(out->addr_be, b->addr_be);
		out->port_be = b->port_be;
		out->pad = 0;
		out->id = b->id;
	}
	/* Checked before anything is recorded or counted as translated: the
	 * writer never installs such a table, but a table it did not write may. */
	if (v4_only && !addr_is_v4_mapped(out->addr_be)) {
		count(svc->vip_id, FO_FAMILY_MISMATCH);
		return -EAFNOSUPPORT;
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
	st = bpf_sk_storage_get(&failoverd_sockets_v2, sk, 0, 0);
	if (st)
		bpf_sk_storage_delete(&failoverd_sockets_v2, sk);
}

static __always_inline int xlate4(struct bpf_sock_addr *ctx, int sticky)
{
	struct fo_vip_key key = {};
	struct fo_backend b;
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
	struct fo_backend b;
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

/* Shows the VIP instead of the backend the socket was translated to. */
static __always_inline void reverse(struct bpf_sock_addr *ctx, __u32 peer[4])
{
	struct fo_sock_state *st;
	struct fo_sock_entry *e;
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return;
	st = bpf_sk_storage_get(&failoverd_sockets_v2, sk, 0, 0);
	if (!st)
		return;
	/* The entry names the backend: a peer that is not that backend means
	 * the entry is stale and nothing is rewritten. */
	e = find_backend_entry(st, peer, (__u16)ctx->user_port);
	if (!e)
		return;
	addr_copy(peer, e->vip_addr_be);
	ctx->user_port = (__u32)e->vip_port_be;
}

static __always_inline void reverse4(struct bpf_sock_addr *ctx)
{
	__u32 peer[4];

	addr_v4_mapped(peer, ctx->user_ip4);
	reverse(ctx, peer);
	if (addr_is_v4_mapped(peer))
		ctx->user_ip4 = peer[3];
}

static __always_inline void reverse6(struct bpf_sock_addr *ctx)
{
	__u32 peer[4];

	peer[0] = ctx->user_ip6[0];
	peer[1] = ctx->user_ip6[1];
	peer[2] = ctx->user_ip6[2];
	peer[3] = ctx->user_ip6[3];
	reverse(ctx, peer);
	ctx->user_ip6[0] = peer[0];
	ctx->user_ip6[1] = peer[1];
	ctx->user_ip6[2] = peer[2];
	ctx->user_ip6[3] = peer[3];
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
	reverse4(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/recvmsg6")
int fo_recvmsg6(struct bpf_sock_addr *ctx)
{
	reverse6(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int fo_getpeername4(struct bpf_sock_addr *ctx)
{
	reverse4(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int fo_getpeername6(struct bpf_sock_addr *ctx)
{
	reverse6(ctx);
	return SYS_PROCEED;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
