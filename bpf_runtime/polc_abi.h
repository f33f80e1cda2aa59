/* polc datapath ABI: the layouts shared by the compiler (which writes map images), the
 * runtime (which loads them) and the datapath (which reads them).  polc/abi.py mirrors
 * this file; tests/test_abi.py checks that the two agree. */
#ifndef POLC_ABI_H
#define POLC_ABI_H

#define POLC_DIR_INGRESS 0 /* traffic entering the endpoint */
#define POLC_DIR_EGRESS 1  /* traffic leaving the endpoint */

#define POLC_NPROTO 6 /* TCP, UDP, SCTP, ICMP, ICMPv6, other */
#define POLC_PROTO_TCP 0
#define POLC_PROTO_UDP 1
#define POLC_PROTO_SCTP 2
#define POLC_PROTO_ICMP 3
#define POLC_PROTO_ICMPV6 4
#define POLC_PROTO_OTHER 5

#define POLC_ACTION_ALLOW 1
#define POLC_ACTION_DENY 2
#define POLC_ACTION_L7 3 /* allow the connection, judge each request with polc_l7[l7] */

#define POLC_L7_HTTP 1
#define POLC_L7_DNS 2
#define POLC_L7_MAX_BYTES 1024  /* longest HTTP request head / DNS message judged */
#define POLC_DFA_CLASSES 128     /* byte classes per DFA */
#define POLC_DFA_REJECT 0
#define POLC_DFA_ACCEPT 1
#define POLC_DFA_DEAD 2          /* rejecting and absorbing: the walk can stop */

/* Why a packet got its verdict; written to skb->cb[0] (rule id to cb[1]). */
#define POLC_STAGE_FAIL_CLOSED 1  /* tables not filled / generation mismatch: drop */
#define POLC_STAGE_NOT_POLICED 2  /* the local side is not a known endpoint: pass */
#define POLC_STAGE_CT_ESTABLISHED 3
#define POLC_STAGE_CT_REPLY 4
#define POLC_STAGE_DENY_RULE 5
#define POLC_STAGE_ALLOW_RULE 6
#define POLC_STAGE_NOT_ISOLATED 7 /* no policy isolates the endpoint: pass */
#define POLC_STAGE_DEFAULT_DENY 8
#define POLC_STAGE_MALFORMED 9    /* an IP packet the parser cannot judge: drop */
#define POLC_STAGE_NOT_IP 10      /* ARP and other non-IP traffic: pass */
#define POLC_STAGE_NEIGHBOR 11    /* IPv6 neighbor discovery: pass, as the network needs it */
#define POLC_STAGE_L7_ALLOW 12    /* a request an L7 rule allows */
#define POLC_STAGE_L7_DENY 13     /* a request no L7 rule allows: answered (reset, REFUSED) or dropped */

/* Address to endpoint.  IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d).  Whole
 * addresses (/128, IPv4 /32) live in the polc_hosts hash, prefixes in the polc_ipcache LPM
 * trie: one hash lookup finds a pod or node whatever the number of prefixes. */
struct polc_lpm_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct polc_host_key {
	__u8 addr[16];
};

struct polc_ep_info {
	__u32 identity;
	__u32 peer_class;
	__u32 subject_class[2]; /* per direction; 0 = not an endpoint polc guards */
	__u32 isolated_by[2];   /* per direction; 0 = not isolated, else the rule id that isolates */
	__u32 peer_group;       /* 0, or the group of broad peer selectors the address matches */
};

#define POLC_PEER_CLASS_ANY 0      /* polc_pairs: the subject's default profile */
#define POLC_PEER_GROUP 0x80000000 /* polc_pairs: peer_class = POLC_PEER_GROUP | group */

struct polc_pair_key {
	__u32 dir;
	__u32 subject_class;
	__u32 peer_class;
};

/* (profile, protocol) -> the profile's port intervals for that protocol: entries
 * first .. first + count - 1 of polc_ranges, disjoint and sorted.  A binary search finds
 * the last interval that starts at or below the packet's port (or ICMP type); the port
 * has a verdict if it is also at or below that interval's end.  Intervals come from the
 * profile's own rules only, so a wide port range costs one interval, however many other
 * rules cut it; ports no rule of the profile covers need no entry. */
struct polc_verdict_key {
	__u32 profile;
	__u8 proto;
	__u8 pad[3];
};

struct polc_range_list {
	__u32 first;
	__u32 count;
};

struct polc_verdict {
	__u32 rule;
	__u32 action;
	__u32 l7; /* with POLC_ACTION_L7: index into polc_l7 */
};

struct polc_range {
	__u16 lo; /* first and last port of the interval */
	__u16 hi;
	struct polc_verdict v;
};

#define POLC_RANGE_SEARCH_STEPS 17 /* a list has at most 65,536 intervals */

struct polc_l7_profile {
	__u32 kind;  /* POLC_L7_HTTP or POLC_L7_DNS */
	__u32 start; /* index of the DFA's start state in polc_dfa */
	__u32 rule;  /* a rule the profile comes from, for reports */
	__u32 pad;
	__u8 classes[256]; /* byte -> class */
};

struct polc_dfa_state {
	__u32 next[POLC_DFA_CLASSES]; /* class -> index of the next state in polc_dfa */
	__u32 accept;                 /* POLC_DFA_REJECT, _ACCEPT or _DEAD */
};

/* A connection is stored once, under the orientation of its tuple with the smaller
 * (address, port) first: a packet and its reply find the same entry with one lookup, and
 * `swapped` of the entry against the packet's tells which of the two the packet is. */
struct polc_ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto; /* IP protocol number */
	__u8 dir;   /* the direction the connection was judged in, in this orientation */
	__u8 pad[2];
};

struct polc_ct_entry {
	__u64 created_ns;
	__u32 rule;
	__u32 l7;      /* 0, or the polc_l7 profile that judges each request of the connection */
	__u32 swapped; /* 1: the key is the reverse of the connection's first packet */
	__u32 pad;
};

#endif
