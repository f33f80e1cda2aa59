// SPDX-License-Identifier: GPL-2.0
/* polc datapath: the policy-independent eBPF program that every compiled object carries.
 *
 * A policy is pure data: the compiler fills the maps below with decision tables (as map
 * images inside the object), and this code looks a packet up in a fixed number of steps,
 * whatever the number of rules:
 *
 *   address -> endpoint              polc_hosts (hash of whole addresses), else polc_ipcache
 *                                    (LPM of prefixes): subject class, peer class and group
 *   (dir, subject, peer) -> profile  polc_pairs     which rule set applies between the two;
 *                                    misses fall back to the peer's group, then the default
 *   (profile, proto) -> intervals    polc_verdicts  the profile's port intervals in polc_ranges
 *   port -> verdict                  polc_ranges    binary search: allow/deny, the deciding rule
 *
 * Connection tracking (polc_ct) lets replies and established connections through; it is
 * shared across policy versions by the runtime.  Until the loader has written the object's
 * generation into polc_ctrl, every packet is dropped (fail closed).
 *
 * Regenerate datapath.ll after editing: bpf_runtime/regen.sh
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "polc_abi.h"

/* Capacities are placeholders that the compiler replaces with the size of each table;
 * the values are unusual on purpose so that each occurs once in the generated IR.  The C
 * that `polc compile --emit-c` writes defines them (and the generation) before including
 * this file. */
#ifndef POLC_CAP_IPCACHE
#define POLC_CAP_IPCACHE 8323073
#define POLC_CAP_HOSTS 8323071
#define POLC_CAP_PAIRS 8323079
#define POLC_CAP_VERDICTS 8323081
#define POLC_CAP_RANGES 8323077
#define POLC_CAP_L7 8323087
#define POLC_CAP_DFA 8323093
#endif
#ifndef POLC_GENERATION
#define POLC_GENERATION 0
#endif
#define POLC_CT_ENTRIES 65536

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, POLC_CAP_IPCACHE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct polc_lpm_key);
	__type(value, struct polc_ep_info);
} polc_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, POLC_CAP_HOSTS);
	__type(key, struct polc_host_key);
	__type(value, struct polc_ep_info);
} polc_hosts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, POLC_CAP_PAIRS);
	__type(key, struct polc_pair_key);
	__type(value, __u32);
} polc_pairs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, POLC_CAP_VERDICTS);
	__type(key, struct polc_verdict_key);
	__type(value, struct polc_range_list);
} polc_verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, POLC_CAP_RANGES);
	__type(key, __u32);
	__type(value, struct polc_range);
} polc_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, POLC_CAP_L7);
	__type(key, __u32);
	__type(value, struct polc_l7_profile);
} polc_l7 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, POLC_CAP_DFA);
	__type(key, __u32);
	__type(value, struct polc_dfa_state);
} polc_dfa SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} polc_ctrl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, POLC_CT_ENTRIES);
	__type(key, struct polc_ct_key);
	__type(value, struct polc_ct_entry);
} polc_ct SEC(".maps");

/* The table generation this program was compiled with; the compiler sets it. */
const volatile __u64 polc_generation = POLC_GENERATION;

#define ETH_P_IP_BE bpf_htons(ETH_P_IP)
#define ETH_P_IPV6_BE bpf_htons(ETH_P_IPV6)
#define IPV6_EXT_MAX 6

enum parse_result { PARSE_OK = 0, PARSE_NOT_IP = 1, PARSE_BAD = -1 };

/* What the policy judges of one packet. */
struct flow {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* connection tracking ports (ICMP echo: the identifier) */
	__u16 dport;
	__u16 pport; /* the port the policy sees: destination port or ICMP type */
	__u8 l4proto; /* IP protocol number */
	__u8 pidx;    /* POLC_PROTO_* */
	__u8 version; /* 4 or 6 */
	__u8 tcp_flags;
	__u32 ip_end;      /* offset just past the IP packet (frames may be padded) */
	__u32 payload_off; /* TCP/UDP payload; == ip_end when there is none */
	__u32 tcp_seq;
	__u32 tcp_ack;
};

static __always_inline void map_v4(__u8 *dst, __u32 addr_be)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr_be, 4);
}

static __always_inline int parse_ports(struct __sk_buff *skb, __u32 off, struct flow *f)
{
	__u16 ports[2];

	if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
		return PARSE_BAD;
	f->sport = bpf_ntohs(ports[0]);
	f->dport = bpf_ntohs(ports[1]);
	f->pport = f->dport;
	return PARSE_OK;
}

static __always_inline int parse_tcp(struct __sk_buff *skb, __u32 off, struct flow *f)
{
	__u8 hdr[14];

	if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
		return PARSE_BAD;
	f->sport = ((__u16)hdr[0] << 8) | hdr[1];
	f->dport = ((__u16)hdr[2] << 8) | hdr[3];
	f->pport = f->dport;
	f->tcp_seq = bpf_ntohl(*(__u32 *)&hdr[4]);
	f->tcp_ack = bpf_ntohl(*(__u32 *)&hdr[8]);
	f->tcp_flags = hdr[13];
	__u32 doff = (hdr[12] >> 4) * 4;
	if (doff < 20 || off + doff > f->ip_end)
		return PARSE_BAD;
	f->payload_off = off + doff;
	return PARSE_OK;
}

/* ICMP echo requests carry their identifier as source port and echo replies as destination
 * port, so that a reply's tuple is the reverse of its request's. */
static __always_inline int parse_icmp(struct __sk_buff *skb, __u32 off, struct flow *f,
				      __u8 echo_request, __u8 echo_reply)
{
	__u8 hdr[8];

	if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
		return PARSE_BAD;
	__u16 id = ((__u16)hdr[4] << 8) | hdr[5];
	f->pport = hdr[0];
	if (hdr[0] == echo_request)
		f->sport = id;
	else if (hdr[0] == echo_reply)
		f->dport = id;
	return PARSE_OK;
}

static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, __u8 proto, int first_fragment,
				    struct flow *f)
{
	f->l4proto = proto;
	if (!first_fragment) {
		/* Later fragments carry no L4 header: only rules for every protocol match. */
		f->pidx = POLC_PROTO_OTHER;
		return PARSE_OK;
	}
	switch (proto) {
	case IPPROTO_TCP:
		f->pidx = POLC_PROTO_TCP;
		return parse_tcp(skb, off, f);
	case IPPROTO_UDP:
		f->pidx = POLC_PROTO_UDP;
		if (off + 8 > f->ip_end)
			return PARSE_BAD;
		f->payload_off = off + 8;
		return parse_ports(skb, off, f);
	case IPPROTO_SCTP:
		f->pidx = POLC_PROTO_SCTP;
		return parse_ports(skb, off, f);
	case IPPROTO_ICMP:
		f->pidx = POLC_PROTO_ICMP;
		return parse_icmp(skb, off, f, 8, 0);
	case 58: /* IPPROTO_ICMPV6 */
		f->pidx = POLC_PROTO_ICMPV6;
		return parse_icmp(skb, off, f, 128, 129);
	default:
		f->pidx = POLC_PROTO_OTHER;
		return PARSE_OK;
	}
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct flow *f)
{
	__u8 hdr[20];

	if (bpf_skb_load_bytes(skb, ETH_HLEN, hdr, sizeof(hdr)) < 0)
		return PARSE_BAD;
	__u8 ihl = hdr[0] & 0xf;
	if ((hdr[0] >> 4) != 4 || ihl < 5)
		return PARSE_BAD;
	__u16 frag = ((__u16)hdr[6] << 8) | hdr[7];
	__u16 tot_len = ((__u16)hdr[2] << 8) | hdr[3];
	if (tot_len < ihl * 4 || ETH_HLEN + tot_len > skb->len)
		return PARSE_BAD;
	f->version = 4;
	f->ip_end = ETH_HLEN + tot_len;
	f->payload_off = f->ip_end;
	map_v4(f->saddr, *(__u32 *)&hdr[12]);
	map_v4(f->daddr, *(__u32 *)&hdr[16]);
	return parse_l4(skb, ETH_HLEN + ihl * 4, hdr[9], (frag & 0x1fff) == 0, f);
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct flow *f)
{
	__u8 hdr[40];
	__u8 ext[8];

	if (bpf_skb_load_bytes(skb, ETH_HLEN, hdr, sizeof(hdr)) < 0)
		return PARSE_BAD;
	if ((hdr[0] >> 4) != 6)
		return PARSE_BAD;
	__u16 plen = ((__u16)hdr[4] << 8) | hdr[5];
	if (ETH_HLEN + 40 + plen > skb->len)
		return PARSE_BAD;
	f->version = 6;
	f->ip_end = ETH_HLEN + 40 + plen;
	f->payload_off = f->ip_end;
	__builtin_memcpy(f->saddr, &hdr[8], 16);
	__builtin_memcpy(f->daddr, &hdr[24], 16);
	__u8 next = hdr[6];
	__u32 off = ETH_HLEN + 40;
	int first_fragment = 1;

#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		if (next != 0 && next != 43 && next != 60 && next != 44 && next != 51)
			return parse_l4(skb, off, next, first_fragment, f);
		if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
			return PARSE_BAD;
		if (next == 44) { /* fragment header: fixed 8 bytes */
			if ((((__u16)ext[2] << 8 | ext[3]) & 0xfff8) != 0)
				first_fragment = 0;
			off += 8;
		} else if (next == 51) { /* authentication header: length in 4-byte units */
			off += ((__u32)ext[1] + 2) * 4;
		} else {
			off += ((__u32)ext[1] + 1) * 8;
		}
		next = ext[0];
	}
	return PARSE_BAD; /* more extension headers than we walk: cannot judge, drop */
}

static __always_inline int parse(struct __sk_buff *skb, struct flow *f)
{
	__u16 proto;

	if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0)
		return PARSE_BAD;
	if (proto == ETH_P_IP_BE)
		return parse_ipv4(skb, f);
	if (proto == ETH_P_IPV6_BE)
		return parse_ipv6(skb, f);
	return PARSE_NOT_IP;
}

static __always_inline int finish(struct __sk_buff *skb, __u32 stage, __u32 rule, int verdict)
{
	skb->cb[0] = stage;
	skb->cb[1] = rule;
	return verdict;
}

/* 1 when (daddr, dport) orders before (saddr, sport): the connection key is then the
 * reverse of the packet's tuple (any fixed total order works; this one compares words). */
static __always_inline __u32 ct_swapped(const struct flow *f)
{
	const __u64 *s = (const __u64 *)f->saddr, *d = (const __u64 *)f->daddr;

	if (s[0] != d[0])
		return d[0] < s[0];
	if (s[1] != d[1])
		return d[1] < s[1];
	return f->dport < f->sport;
}

/* The connection key of a packet judged (or to be judged) in direction `dir`: a packet and
 * its reply (the reverse tuple, seen in the other direction) give the same key. */
static __always_inline __u32 ct_key(struct polc_ct_key *k, const struct flow *f, __u32 dir)
{
	__u32 swapped = ct_swapped(f);

	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->saddr, swapped ? f->daddr : f->saddr, 16);
	__builtin_memcpy(k->daddr, swapped ? f->saddr : f->daddr, 16);
	k->sport = swapped ? f->dport : f->sport;
	k->dport = swapped ? f->sport : f->dport;
	k->proto = f->l4proto;
	k->dir = swapped ? !dir : dir;
	return swapped;
}

#include "l7.h"

static __always_inline void track(const struct flow *f, __u32 dir, __u32 rule, __u32 l7)
{
	struct polc_ct_key k;
	struct polc_ct_entry e = { .created_ns = bpf_ktime_get_ns(), .rule = rule, .l7 = l7 };

	e.swapped = ct_key(&k, f, dir);
	bpf_map_update_elem(&polc_ct, &k, &e, BPF_ANY);
}

static __always_inline struct polc_ep_info *endpoint(const __u8 *addr)
{
	struct polc_host_key h;

	__builtin_memcpy(h.addr, addr, 16);
	struct polc_ep_info *ep = bpf_map_lookup_elem(&polc_hosts, &h);
	if (ep) /* a whole address is the longest prefix there is */
		return ep;
	struct polc_lpm_key k = { .prefixlen = 128 };

	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&polc_ipcache, &k);
}

static __always_inline struct polc_verdict *rule_verdict(const struct polc_ep_info *subject,
							 const struct polc_ep_info *peer,
							 const struct flow *f, __u32 dir)
{
	struct polc_pair_key pk = {
		.dir = dir,
		.subject_class = subject->subject_class[dir],
		.peer_class = peer->peer_class,
	};
	__u32 *profile = bpf_map_lookup_elem(&polc_pairs, &pk);
	if (!profile && peer->peer_group) { /* only broad selectors single the peer out */
		pk.peer_class = POLC_PEER_GROUP | peer->peer_group;
		profile = bpf_map_lookup_elem(&polc_pairs, &pk);
	}
	if (!profile) { /* peer classes no rule singles out share the subject's default */
		pk.peer_class = POLC_PEER_CLASS_ANY;
		profile = bpf_map_lookup_elem(&polc_pairs, &pk);
		if (!profile)
			return 0;
	}
	struct polc_verdict_key vk = { .profile = *profile, .proto = f->pidx };
	struct polc_range_list *list = bpf_map_lookup_elem(&polc_verdicts, &vk);
	if (!list || !list->count)
		return 0;
	/* The last interval starting at or below the port stays in [lo, hi) (if any does). */
	__u32 lo = list->first, hi = list->first + list->count;
	for (int i = 0; i < POLC_RANGE_SEARCH_STEPS && hi - lo > 1; i++) {
		__u32 mid = lo + (hi - lo) / 2;
		struct polc_range *r = bpf_map_lookup_elem(&polc_ranges, &mid);
		if (!r)
			return 0;
		if (r->lo <= f->pport)
			lo = mid;
		else
			hi = mid;
	}
	struct polc_range *r = bpf_map_lookup_elem(&polc_ranges, &lo);
	return r && r->lo <= f->pport && f->pport <= r->hi ? &r->v : 0;
}

static __always_inline int judge(struct __sk_buff *skb, __u32 dir)
{
	__u32 zero = 0;
	__u64 *generation = bpf_map_lookup_elem(&polc_ctrl, &zero);
	if (!generation || *generation != polc_generation)
		return finish(skb, POLC_STAGE_FAIL_CLOSED, 0, TC_ACT_SHOT);

	struct polc_scratch *sc = bpf_map_lookup_elem(&polc_scratch, &zero);
	if (!sc)
		return finish(skb, POLC_STAGE_FAIL_CLOSED, 0, TC_ACT_SHOT);
	struct flow *f = &sc->flow; /* per-CPU: the BPF stack is too small for everything */
	__builtin_memset(f, 0, sizeof(*f));
	int parsed = parse(skb, f);
	if (parsed == PARSE_NOT_IP)
		return finish(skb, POLC_STAGE_NOT_IP, 0, TC_ACT_OK);
	if (parsed != PARSE_OK)
		return finish(skb, POLC_STAGE_MALFORMED, 0, TC_ACT_SHOT);
	/* Neighbor discovery (router/neighbor solicitation and advertisement, redirect) keeps
	 * IPv6 working at all; like Cilium, it is not subject to policy. */
	if (f->pidx == POLC_PROTO_ICMPV6 && f->pport >= 133 && f->pport <= 137)
		return finish(skb, POLC_STAGE_NEIGHBOR, 0, TC_ACT_OK);

	/* Connection tracking first: established connections and replies cost one lookup.
	 * Only packets of policed endpoints ever create entries. */
	__u32 l7, rule, stage;
	struct polc_ct_key k;
	__u32 swapped = ct_key(&k, f, dir);
	struct polc_ct_entry *ct = bpf_map_lookup_elem(&polc_ct, &k);
	if (ct) {
		if (ct->swapped != swapped) /* the reverse of the connection's first packet */
			return finish(skb, POLC_STAGE_CT_REPLY, ct->rule, TC_ACT_OK);
		if (!ct->l7)
			return finish(skb, POLC_STAGE_CT_ESTABLISHED, ct->rule, TC_ACT_OK);
		l7 = ct->l7;
		rule = ct->rule;
		stage = POLC_STAGE_CT_ESTABLISHED;
		goto judge_l7;
	}

	int ingress = dir == POLC_DIR_INGRESS;
	struct polc_ep_info *subject = endpoint(ingress ? f->daddr : f->saddr);
	if (!subject || !subject->subject_class[dir])
		return finish(skb, POLC_STAGE_NOT_POLICED, 0, TC_ACT_OK);

	struct polc_ep_info *peer = endpoint(ingress ? f->saddr : f->daddr);
	if (!peer) /* the tables always cover ::/0; a miss means they are damaged */
		return finish(skb, POLC_STAGE_FAIL_CLOSED, 0, TC_ACT_SHOT);

	struct polc_verdict *v = rule_verdict(subject, peer, f, dir);
	if (v && v->action == POLC_ACTION_DENY)
		return finish(skb, POLC_STAGE_DENY_RULE, v->rule, TC_ACT_SHOT);
	if (v && v->action == POLC_ACTION_L7) { /* L7 rules judge even where L3/L4 would allow */
		l7 = v->l7;
		rule = v->rule;
		stage = POLC_STAGE_ALLOW_RULE;
		track(f, dir, rule, l7);
		goto judge_l7; /* the first packet may carry a request already (DNS over UDP) */
	}
	if (!subject->isolated_by[dir]) {
		track(f, dir, 0, 0);
		return finish(skb, POLC_STAGE_NOT_ISOLATED, 0, TC_ACT_OK);
	}
	if (v && v->action == POLC_ACTION_ALLOW) {
		track(f, dir, v->rule, 0);
		return finish(skb, POLC_STAGE_ALLOW_RULE, v->rule, TC_ACT_OK);
	}
	return finish(skb, POLC_STAGE_DEFAULT_DENY, subject->isolated_by[dir], TC_ACT_SHOT);

judge_l7: /* one place, so that the verifier walks the L7 loops once */
	return l7_judge(skb, f, dir, l7, rule, sc, stage);
}

/* Packets leaving an endpoint (its egress policy): attach where the pod's packets arrive,
 * e.g. tcx/ingress of the host-side veth. */
SEC("tc")
int polc_from_ep(struct __sk_buff *skb)
{
	return judge(skb, POLC_DIR_EGRESS);
}

/* Packets entering an endpoint (its ingress policy): tcx/egress of the host-side veth. */
SEC("tc")
int polc_to_ep(struct __sk_buff *skb)
{
	return judge(skb, POLC_DIR_INGRESS);
}

char _license[] SEC("license") = "GPL";
