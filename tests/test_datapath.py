"""The compiled datapath in the kernel: verdicts, fail-closed, replies, both families.

Each test compiles a small policy with the real pipeline, loads it with the runtime and
runs crafted packets through the programs with BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import pytest
from kernel_helpers import loaded_engine, skip_unless_root

from polc import abi

CLUSTER = """
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: prod, labels: {team: a}}}
- apiVersion: v1
  kind: Pod
  metadata: {name: web, namespace: prod, labels: {app: web}}
  spec:
    nodeName: n1
    containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
  status: {podIPs: [{ip: 198.18.1.1}, {ip: "2001:db8::1"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: prod, labels: {app: client}}
  spec: {nodeName: n1, containers: [{name: c}]}
  status: {podIPs: [{ip: 198.18.1.2}, {ip: "2001:db8::2"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: other, namespace: prod, labels: {app: other}}
  spec: {nodeName: n2, containers: [{name: c}]}
  status: {podIPs: [{ip: 198.18.1.3}]}
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}
- apiVersion: v1
  kind: Node
  metadata: {name: n2}
  status: {addresses: [{type: InternalIP, address: 198.18.0.2}]}
"""

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "http", protocol: TCP}, {port: "9000", endPort: 9010, protocol: ANY}]}]
  - fromCIDRSet: [{cidr: 198.19.0.0/16, except: [198.19.128.0/17]}]
  - fromEntities: [remote-node]
    icmps: [{fields: [{type: EchoRequest}, {family: IPv6, type: EchoRequest}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "9005", protocol: TCP}]}]
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    skip_unless_root()
    with loaded_engine(tmp_path_factory.mktemp("dp"), CLUSTER, POLICY, "dp") as eng:
        yield eng


def judge(engine, src, dst, proto="TCP", port=None, icmp_type=None, src_node="n1", dst_node="n1"):
    from polc.runtime.testrun import Flow

    res = engine.run(Flow(src_ip=src, dst_ip=dst, proto=proto, port=port, icmp_type=icmp_type,
                          src_local_node=src_node, dst_local_node=dst_node))
    return res.verdict, res.runs[-1].stage


WEB, CLIENT, OTHER = "198.18.1.1", "198.18.1.2", "198.18.1.3"


@pytest.mark.parametrize("src,dst,proto,port,want", [
    (CLIENT, WEB, "TCP", 8080, ("allow", "allow-rule")),        # named port resolved on web
    (CLIENT, WEB, "TCP", 8081, ("deny", "default-deny")),
    (CLIENT, WEB, "UDP", 8080, ("deny", "default-deny")),       # named port is TCP only
    (CLIENT, WEB, "UDP", 9000, ("allow", "allow-rule")),        # ANY covers UDP, range start
    (CLIENT, WEB, "SCTP", 9010, ("allow", "allow-rule")),       # range end (inclusive)
    (CLIENT, WEB, "TCP", 9011, ("deny", "default-deny")),       # one past the end
    (CLIENT, WEB, "TCP", 8999, ("deny", "default-deny")),       # one before the start
    (CLIENT, WEB, "TCP", 9005, ("deny", "deny-rule")),          # deny beats the range allow
    (CLIENT, WEB, "UDP", 9005, ("allow", "allow-rule")),        # the deny is TCP only
    (OTHER, WEB, "TCP", 8080, ("deny", "default-deny")),
    ("198.19.1.1", WEB, "TCP", 1, ("allow", "allow-rule")),     # CIDR, any port
    ("198.19.128.1", WEB, "TCP", 1, ("deny", "default-deny")),  # in the except
    ("198.20.0.1", WEB, "TCP", 1, ("deny", "default-deny")),    # outside the CIDR
    (WEB, CLIENT, "TCP", 80, ("allow", "not-isolated")),        # client has no policy
])
def test_verdicts(engine, src, dst, proto, port, want):
    assert judge(engine, src, dst, proto, port) == want


def test_host_and_remote_node(engine):
    # The local node reaches its pods (allow-localhost); a remote node only with ICMP echo.
    assert judge(engine, "198.18.0.1", WEB, "TCP", 22, src_node=None)[0] == "allow"
    assert judge(engine, "198.18.0.2", WEB, "TCP", 22, src_node=None) == ("deny", "default-deny")
    assert judge(engine, "198.18.0.2", WEB, "ICMP", icmp_type=8, src_node=None) == ("allow", "allow-rule")
    assert judge(engine, "198.18.0.2", WEB, "ICMP", icmp_type=13, src_node=None) == ("deny", "default-deny")
    # Seen from n2, 198.18.0.2 is the host and 198.18.0.1 a remote node.
    assert judge(engine, "198.18.0.2", WEB, "TCP", 22, src_node=None, dst_node="n2")[0] == "allow"


def test_ipv6(engine):
    assert judge(engine, "2001:db8::2", "2001:db8::1", "TCP", 8080) == ("allow", "allow-rule")
    assert judge(engine, "2001:db8::2", "2001:db8::1", "TCP", 8081) == ("deny", "default-deny")
    assert judge(engine, "2001:db8::99", "2001:db8::1", "ICMPv6", icmp_type=128)[0] == "deny"


def _run(engine, program, flow):
    from polc.runtime.testrun import build_packet

    prog = engine.collection.program(program)
    res = prog.test_run(build_packet(flow), bytes(192))
    stage = abi.STAGES[int.from_bytes(res.ctx_out[48:52], "little")]
    return res.retval, stage


def test_replies_pass_connection_tracking(engine):
    from polc.runtime.testrun import Flow

    engine.collection.map(abi.MAP_CT).clear()
    engine.set_local_node("n1")
    request = Flow(src_ip=CLIENT, dst_ip=WEB, proto="TCP", port=8080, src_port=40001)
    reply = Flow(src_ip=WEB, dst_ip=CLIENT, proto="TCP", port=40001, src_port=8080)
    assert _run(engine, abi.PROG_TO_EP, request) == (0, "allow-rule")
    # web's egress is not isolated here, but the reply is recognised before policy.
    assert _run(engine, abi.PROG_FROM_EP, reply) == (0, "ct-reply")
    assert _run(engine, abi.PROG_TO_EP, request) == (0, "ct-established")
    # A new connection from web to client's port 8080 is not a reply.
    engine.collection.map(abi.MAP_CT).clear()
    assert _run(engine, abi.PROG_FROM_EP, reply) == (0, "not-isolated")


def test_unfilled_tables_fail_closed(engine):
    from polc.runtime.loader import Collection
    from polc.runtime.testrun import Flow, build_packet

    with Collection.load(engine.obj, fill=False) as bare:
        for program in abi.PROGRAMS:
            for flow in (Flow(src_ip=CLIENT, dst_ip=WEB, proto="TCP", port=8080),
                         Flow(src_ip=OTHER, dst_ip=CLIENT, proto="UDP", port=53)):
                res = bare.program(program).test_run(build_packet(flow), bytes(192))
                assert res.retval == 2
                assert abi.STAGES[int.from_bytes(res.ctx_out[48:52], "little")] == "fail-closed"
