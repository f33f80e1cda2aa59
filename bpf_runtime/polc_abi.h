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

/* Address to endpoint.  IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d). */
struct polc_lpm_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct polc_ep_info {
	__u32 identity;
	__u32 peer_class;
	__u32 subject_class[2]; /* per direction; 0 = not an endpoint polc guards */
	__u32 isolated_by[2];   /* per direction; 0 = not isolated, else the rule id that isolates */
};

#define POLC_PEER_CLASS_ANY 0      /* polc_pairs: the subject's default profile */
#define POLC_PORT_CLASS_ANY 0xffff /* polc_verdicts: the profile's default verdict */

struct polc_pair_key {
	__u32 dir;
	__u32 subject_class;
	__u32 peer_class;
};

/* Port to port class: key = dir * POLC_NPROTO + proto, value = one class per port (or ICMP type). */
struct polc_port_classes {
	__u16 cls[65536];
};

struct polc_verdict_key {
	__u32 profile;
	__u16 port_class;
	__u8 proto;
	__u8 pad;
};

struct polc_verdict {
	__u32 rule;
	__u32 action;
	__u32 l7; /* with POLC_ACTION_L7: index into polc_l7 */
};

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

struct polc_ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto; /* IP protocol number */
	__u8 dir;
	__u8 pad[2];
};

struct polc_ct_entry {
	__u64 created_ns;
	__u32 rule;
	__u32 l7; /* 0, or the polc_l7 profile that judges each request of the connection */
};

#endif
