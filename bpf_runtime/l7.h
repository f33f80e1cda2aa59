/* polc L7 in the datapath: HTTP request heads and DNS queries judged by DFAs.
 *
 * A connection whose L3/L4 verdict names an L7 profile keeps that profile in its
 * connection-tracking entry, and every packet of the original direction that carries
 * payload is judged here.  The compiler builds one minimised DFA per profile that accepts
 * exactly the allowed inputs: for HTTP a complete request head (request line, headers,
 * empty line); the walk judges pipelined heads one after another and allows the segment only
 * when every head in it is complete and allowed, so a head split across segments, a body or
 * an oversize head is rejected — never allowed by accident; for DNS the query name,
 * lowercased, labels joined by dots.
 *
 * A rejected HTTP request (or DNS over TCP) is answered with a TCP reset to the client and
 * never reaches the server; a rejected DNS query over UDP is answered with REFUSED.  Both
 * answers are built in place and sent back with bpf_redirect.  Included by datapath.c.
 */
#ifndef POLC_L7_H
#define POLC_L7_H

struct answer {
	__u8 eth[14];
	__u8 ip[40];
	__u8 l4[20]; /* TCP reset, or the UDP header of a DNS answer */
};

/* Per-CPU working memory: the BPF stack (512 bytes) is too small for it.  Values the L7
 * loops depend on live here too and are read back with volatile loads: the verifier then
 * sees unknown scalars instead of path-specific ranges, its states at the loop heads meet,
 * and it walks each loop once instead of once per path that leads to it. */
#define WALK_MASK 2047
struct polc_scratch {
	__u8 data[POLC_L7_MAX_BYTES];
	__u8 name[256];
	__u8 spare[WALK_MASK + 1 - POLC_L7_MAX_BYTES - 256]; /* walks index data/name with WALK_MASK */
	struct answer answer;
	struct flow flow;
	__u32 remain;    /* DNS label bytes left */
	__u32 qend;      /* end of the DNS question, 0 if none */
	__u32 walk_base; /* offset of the DFA input in this struct */
	__u32 walk_len;  /* its length */
	/* Never used.  They put the complete types that struct __sk_buff points to into the
	 * object's BTF; otherwise LLVM emits forward declarations for them in an order that
	 * varies from run to run, and the same policy would not give the same bytes. */
	struct bpf_flow_keys btf_flow_keys[0];
	struct bpf_sock btf_sock[0];
};

#define READ_ONCE_U32(x) (*(volatile __u32 *)&(x))

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct polc_scratch);
} polc_scratch SEC(".maps");

#define L7_MASK (POLC_L7_MAX_BYTES - 1)
#define DNS_NAME_MAX 255
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Walk the DFA that starts at prof->start over the sc->walk_len bytes at sc->walk_base. */
static __always_inline int dfa_accepts(const struct polc_l7_profile *prof, struct polc_scratch *sc)
{
	__u32 state = prof->start;
	__u32 len = READ_ONCE_U32(sc->walk_len);
	__u32 base = READ_ONCE_U32(sc->walk_base);
	const __u8 *mem = (const __u8 *)sc;
	struct polc_dfa_state *st;

	for (__u32 i = 0; i < POLC_L7_MAX_BYTES; i++) {
		if (i >= len)
			break;
		st = bpf_map_lookup_elem(&polc_dfa, &state);
		if (!st || st->accept == POLC_DFA_DEAD)
			return 0;
		if (st->accept == POLC_DFA_ACCEPT && prof->kind == POLC_L7_HTTP) {
			/* One complete, allowed request head (no accepted head is a prefix of another);
			 * what follows is a pipelined request: judge it from the start. */
			state = prof->start;
			st = bpf_map_lookup_elem(&polc_dfa, &state);
			if (!st)
				return 0;
		}
		__u8 cls = prof->classes[mem[(base + i) & WALK_MASK]];
		state = st->next[cls & (POLC_DFA_CLASSES - 1)];
	}
	st = bpf_map_lookup_elem(&polc_dfa, &state);
	return st && st->accept == POLC_DFA_ACCEPT;
}

/* Turn the wire-format question name at data[12..] into ".label.label" (lowercase) in
 * sc->name; the DFA walk skips the leading dot.  Returns the offset just past the question
 * (name, type, class), 0 if the message is not a plain standard query we can judge.
 * Both branches of the loop body leave the same registers, so the verifier's states meet
 * again at the loop head and the walk stays linear. */
static __always_inline __u32 dns_question(struct polc_scratch *sc, __u32 len, __u32 *name_len)
{
	if (len < 12 + 1 + 4)
		return 0;
	if ((sc->data[2] & 0xf8) != 0) /* QR must be 0 (a query), opcode 0 (QUERY) */
		return 0;
	if (sc->data[4] != 0 || sc->data[5] != 1) /* exactly one question */
		return 0;
	__u32 pos = 12;
	sc->remain = 0;
	for (__u32 out = 0; out < DNS_NAME_MAX + 1; out++) {
		if (pos >= len)
			return 0;
		__u8 c = sc->data[pos & L7_MASK];
		pos++;
		if (sc->remain == 0) {
			if (c == 0) {
				if (out < 2 || pos + 4 > len) /* the root name is no query we judge */
					return 0;
				*name_len = out;
				return pos + 4;
			}
			if (c > 63) /* compression pointers have no place in a question */
				return 0;
			sc->remain = c;
			c = '.';
		} else {
			if (c == '.') /* a dot inside a label would make the joined name ambiguous */
				return 0;
			sc->remain -= 1;
			if (c >= 'A' && c <= 'Z')
				c += 'a' - 'A';
		}
		sc->name[out & 0xff] = c;
	}
	return 0;
}

static __always_inline __u32 csum_bytes(__u32 sum, const __u8 *p, __u32 n)
{
	for (__u32 i = 0; i + 1 < n; i += 2)
		sum += ((__u32)p[i] << 8) | p[i + 1];
	if (n & 1)
		sum += (__u32)p[n - 1] << 8;
	return sum;
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

static __always_inline void put16(__u8 *p, __u16 v)
{
	p[0] = v >> 8;
	p[1] = v & 0xff;
}

static __always_inline void put32(__u8 *p, __u32 v)
{
	p[0] = v >> 24;
	p[1] = (v >> 16) & 0xff;
	p[2] = (v >> 8) & 0xff;
	p[3] = v & 0xff;
}

/* Ethernet header of the answer: the addresses swapped. */
static __always_inline int answer_eth(struct __sk_buff *skb, __u8 *eth, __u16 proto)
{
	__u8 orig[12];

	if (bpf_skb_load_bytes(skb, 0, orig, sizeof(orig)) < 0)
		return -1;
	__builtin_memcpy(eth, orig + 6, 6);
	__builtin_memcpy(eth + 6, orig, 6);
	put16(eth + 12, proto);
	return 0;
}

static __always_inline void answer_ipv4(__u8 *ip, const struct flow *f, __u8 proto, __u16 l4len)
{
	__builtin_memset(ip, 0, 20);
	ip[0] = 0x45;
	put16(ip + 2, 20 + l4len);
	ip[6] = 0x40; /* DF */
	ip[8] = 64;
	ip[9] = proto;
	__builtin_memcpy(ip + 12, f->daddr + 12, 4);
	__builtin_memcpy(ip + 16, f->saddr + 12, 4);
	put16(ip + 10, csum_fold(csum_bytes(0, ip, 20)));
}

static __always_inline void answer_ipv6(__u8 *ip, const struct flow *f, __u8 proto, __u16 l4len)
{
	__builtin_memset(ip, 0, 8);
	ip[0] = 0x60;
	put16(ip + 4, l4len);
	ip[6] = proto;
	ip[7] = 64;
	__builtin_memcpy(ip + 8, f->daddr, 16);
	__builtin_memcpy(ip + 24, f->saddr, 16);
}

/* The pseudo-header sum of the answer (addresses already swapped). */
static __always_inline __u32 pseudo_sum(const struct flow *f, __u8 proto, __u32 l4len)
{
	__u32 sum = proto + l4len;

	if (f->version == 4)
		return csum_bytes(csum_bytes(sum, f->daddr + 12, 4), f->saddr + 12, 4);
	return csum_bytes(csum_bytes(sum, f->daddr, 16), f->saddr, 16);
}

/* Send the answer back where the request came from: from a pod (ingress hook of its
 * host-side veth) back out to the pod; towards a pod (egress hook) back into the host. */
static __always_inline int send_back(struct __sk_buff *skb, __u32 dir)
{
	return bpf_redirect(skb->ifindex, dir == POLC_DIR_EGRESS ? 0 : BPF_F_INGRESS);
}

/* Rewrite the packet into a reset from the server to the client. */
static __always_inline int reset_client(struct __sk_buff *skb, const struct flow *f, __u32 dir,
					struct polc_scratch *sc)
{
	struct answer *r = &sc->answer;
	__u32 iplen = f->version == 4 ? 20 : 40;
	__u32 payload = f->ip_end - f->payload_off;

	__builtin_memset(r, 0, sizeof(*r));
	if (answer_eth(skb, r->eth, f->version == 4 ? ETH_P_IP : ETH_P_IPV6) < 0)
		return TC_ACT_SHOT;
	put16(r->l4, f->dport);
	put16(r->l4 + 2, f->sport);
	put32(r->l4 + 4, f->tcp_ack);
	put32(r->l4 + 8, f->tcp_seq + payload + ((f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN)) ? 1 : 0));
	r->l4[12] = 5 << 4;
	r->l4[13] = TCP_FLAG_RST | TCP_FLAG_ACK;
	put16(r->l4 + 16, csum_fold(csum_bytes(pseudo_sum(f, IPPROTO_TCP, 20), r->l4, 20)));
	if (f->version == 4)
		answer_ipv4(r->ip, f, IPPROTO_TCP, 20);
	else
		answer_ipv6(r->ip, f, IPPROTO_TCP, 20);
	if (bpf_skb_change_tail(skb, ETH_HLEN + iplen + 20, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, r->eth, ETH_HLEN + iplen, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + iplen, r->l4, 20, 0) < 0)
		return TC_ACT_SHOT;
	return send_back(skb, dir);
}

/* Rewrite a DNS query (its first qend bytes are in sc->data) into a REFUSED answer. */
static __always_inline int refuse_query(struct __sk_buff *skb, const struct flow *f, __u32 dir,
					struct polc_scratch *sc, __u32 qend)
{
	struct answer *a = &sc->answer;
	__u32 iplen = f->version == 4 ? 20 : 40;

	if (qend < 17 || qend > 12 + DNS_NAME_MAX + 1 + 4)
		return TC_ACT_SHOT;
	__builtin_memset(a, 0, sizeof(*a));
	sc->data[2] = (sc->data[2] | 0x80) & ~0x06; /* QR=1; AA=0, TC=0; opcode and RD kept */
	sc->data[3] = 0x05;                          /* RA=0, RCODE=REFUSED */
	__builtin_memset(sc->data + 6, 0, 6);        /* no answer, authority or additional records */
	if (answer_eth(skb, a->eth, f->version == 4 ? ETH_P_IP : ETH_P_IPV6) < 0)
		return TC_ACT_SHOT;
	put16(a->l4, f->dport);
	put16(a->l4 + 2, f->sport);
	put16(a->l4 + 4, 8 + qend);
	if (f->version == 4) {
		answer_ipv4(a->ip, f, IPPROTO_UDP, 8 + qend); /* UDP checksum 0: none, as IPv4 allows */
	} else {
		answer_ipv6(a->ip, f, IPPROTO_UDP, 8 + qend);
		__u32 sum = csum_bytes(pseudo_sum(f, IPPROTO_UDP, 8 + qend), a->l4, 8);
		sc->data[qend & L7_MASK] = 0; /* pad an odd length; the byte is not sent */
		for (__u32 i = 0; i < 12 + DNS_NAME_MAX + 1 + 4; i += 2) {
			if (i >= qend)
				break;
			sum += ((__u32)sc->data[i & L7_MASK] << 8) | sc->data[(i + 1) & L7_MASK];
		}
		__u16 c = csum_fold(sum);
		put16(a->l4 + 6, c ? c : 0xffff);
	}
	if (bpf_skb_change_tail(skb, ETH_HLEN + iplen + 8 + qend, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, a->eth, ETH_HLEN + iplen, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + iplen, a->l4, 8, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + iplen + 8, sc->data, qend & L7_MASK, 0) < 0)
		return TC_ACT_SHOT;
	return send_back(skb, dir);
}

static __always_inline int l7_deny(struct __sk_buff *skb, const struct flow *f, __u32 dir, __u32 rule,
				   struct polc_scratch *sc, __u32 qend)
{
	int verdict;

	if (!sc)
		verdict = TC_ACT_SHOT;
	else if (f->pidx == POLC_PROTO_TCP)
		verdict = reset_client(skb, f, dir, sc);
	else if (qend)
		verdict = refuse_query(skb, f, dir, sc, qend);
	else
		verdict = TC_ACT_SHOT;
	return finish(skb, POLC_STAGE_L7_DENY, rule, verdict);
}

/* Judge one packet of a connection governed by L7 profile `l7`. */
static __always_inline int l7_judge(struct __sk_buff *skb, const struct flow *f, __u32 dir, __u32 l7,
				    __u32 rule, struct polc_scratch *sc, __u32 empty_stage)
{
	if (f->payload_off >= f->ip_end) /* handshake, pure ACKs, FIN: nothing to judge */
		return finish(skb, empty_stage, rule, TC_ACT_OK);
	struct polc_l7_profile *prof = bpf_map_lookup_elem(&polc_l7, &l7);
	if (!prof)
		return finish(skb, POLC_STAGE_FAIL_CLOSED, rule, TC_ACT_SHOT);
	__u32 skip = (prof->kind == POLC_L7_DNS && f->pidx == POLC_PROTO_TCP) ? 2 : 0; /* length prefix */
	__u32 total = f->ip_end - f->payload_off;
	if (total <= skip || total - skip > POLC_L7_MAX_BYTES)
		return l7_deny(skb, f, dir, prof->rule, sc, 0);
	/* The mask restates the bound in a form the verifier tracks: read back through a
	 * volatile load, the length is a value clang knows nothing about, so it keeps the mask
	 * (and cannot pass an unmasked copy instead).  The scratch value is larger than
	 * WALK_MASK, so any masked length is in bounds. */
	sc->walk_len = total - skip;
	__u32 len = READ_ONCE_U32(sc->walk_len) & WALK_MASK;
	if (len == 0)
		return l7_deny(skb, f, dir, prof->rule, sc, 0);
	if (bpf_skb_load_bytes(skb, f->payload_off + skip, sc->data, len) < 0)
		return l7_deny(skb, f, dir, prof->rule, sc, 0);
	/* One DFA walk for both kinds: the request head, or the query name without its dot. */
	sc->qend = 0;
	sc->walk_base = __builtin_offsetof(struct polc_scratch, data);
	sc->walk_len = len;
	if (prof->kind != POLC_L7_HTTP) {
		__u32 name_len = 0;
		__u32 qend = dns_question(sc, len, &name_len);
		if (!qend)
			return l7_deny(skb, f, dir, prof->rule, sc, 0);
		sc->qend = qend;
		sc->walk_base = __builtin_offsetof(struct polc_scratch, name) + 1;
		sc->walk_len = name_len - 1;
	}
	if (dfa_accepts(prof, sc))
		return finish(skb, POLC_STAGE_L7_ALLOW, prof->rule, TC_ACT_OK);
	return l7_deny(skb, f, dir, prof->rule, sc, READ_ONCE_U32(sc->qend));
}

#endif
