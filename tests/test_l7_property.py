"""Property tests of L7 in the kernel: the datapath's DFA walk agrees with the reference.

For generated path regexes and request targets, the kernel's verdict on a real request head
equals ``re.fullmatch`` (through ``compiler/reference_l7.py``, which also rejects targets a
server would normalise); for generated DNS patterns and names, it equals the reference
evaluator's pattern semantics.  Each example compiles one policy and judges many requests.
"""

from __future__ import annotations

import os
import struct
import textwrap
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel_helpers import loaded_engine
from polc.compiler import reference_l7

CLUSTER = """
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: default}}
- apiVersion: v1
  kind: Pod
  metadata: {name: server, namespace: default, labels: {app: server}}
  spec: {nodeName: n1, containers: [{name: c}]}
  status: {podIP: 198.18.3.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: default, labels: {app: client}}
  spec: {nodeName: n1, containers: [{name: c}]}
  status: {podIP: 198.18.3.11}
"""
SERVER, CLIENT = "198.18.3.10", "198.18.3.11"
EXAMPLES = int(os.environ.get("POLC_L7_EXAMPLES", "20"))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for bpf(2) (CAP_BPF, CAP_NET_ADMIN)")


def _kernel(engine, payload: bytes, proto: str, port: int) -> str:
    from polc.runtime.testrun import Flow

    return engine.run(Flow(src_ip=CLIENT, dst_ip=SERVER, proto=proto, port=port, payload=payload,
                           src_local_node="n1", dst_local_node="n1")).verdict


# -- HTTP paths ------------------------------------------------------------------------------

_ATOMS = ["a", "b", "/", "x", "1", r"\.", "[a-c]", "[^/]", ".", r"\d", "(a|bc)", "(?:/a)", "%41", r"\?", "="]
_QUANT = ["", "", "", "*", "+", "?", "{1,2}"]


@st.composite
def path_regexes(draw):
    parts = draw(st.lists(st.tuples(st.sampled_from(_ATOMS), st.sampled_from(_QUANT)), min_size=1, max_size=5))
    body = "".join(a + q for a, q in parts)
    return draw(st.sampled_from(["/" + body, "/" + body + ".*", "/(" + body + ")|/other", body]))


_TARGET_CHARS = "ab/x1.c?=%41d"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(regex=path_regexes(), data=st.data())
def test_http_path_verdicts_agree_with_re_fullmatch(tmp_path_factory, regex, data):
    policy = textwrap.dedent(f"""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {{name: p, namespace: default}}
        spec:
          endpointSelector: {{matchLabels: {{app: server}}}}
          ingress:
          - fromEndpoints: [{{matchLabels: {{app: client}}}}]
            toPorts:
            - ports: [{{port: "80", protocol: TCP}}]
              rules: {{http: [{{method: GET, path: '{regex}'}}]}}
        """)
    with loaded_engine(tmp_path_factory.mktemp("http"), CLUSTER, policy, "l7p") as engine:
        matching = data.draw(st.lists(st.from_regex(regex, fullmatch=True).filter(
            lambda t: t.isascii() and t.isprintable() and " " not in t and t), max_size=6))
        other = data.draw(st.lists(st.text(_TARGET_CHARS, min_size=1, max_size=12).map(lambda t: "/" + t),
                                   max_size=8))
        rule = SimpleNamespace(method="GET", path=regex, host=None, headers=())
        for target in matching + other:
            payload = f"GET {target} HTTP/1.1\r\nHost: server\r\n\r\n".encode()
            want = "allow" if reference_l7.http_allowed([rule], payload) else "deny"
            assert _kernel(engine, payload, "TCP", 80) == want, (regex, target)


# -- DNS patterns ----------------------------------------------------------------------------

_LABELS = ["a", "b", "ab", "x-1", "c_d"]


@st.composite
def dns_rules(draw):
    kind = draw(st.sampled_from(["name", "pattern", "pattern", "subdomains", "all"]))
    labels = draw(st.lists(st.sampled_from(_LABELS + ["*", "a*", "*b"]), min_size=1, max_size=3))
    if kind == "name":
        return {"matchName": ".".join(l.replace("*", "") or "z" for l in labels)}
    if kind == "all":
        return {"matchPattern": "*"}
    pattern = ".".join(labels)
    return {"matchPattern": ("**." if kind == "subdomains" else "") + pattern}


def _names_for(rule: dict, data) -> list[str]:
    text = rule.get("matchName") or rule["matchPattern"]
    filled = [".".join(data.draw(st.sampled_from(["", "a", "zz", "b-b"])).join(label.split("*"))
                       for label in text.replace("**.", "").split(".")) for _ in range(3)]
    prefixed = [data.draw(st.sampled_from(["q.", "q.r.", ""])) + n for n in filled]
    random = data.draw(st.lists(st.lists(st.sampled_from(_LABELS), min_size=1, max_size=4).map(".".join),
                                max_size=5))
    return [n for n in filled + prefixed + random + [n.upper() for n in filled[:1]] if n and ".." not in n
            and not n.startswith(".") and not n.endswith(".")]


def _query(name: str) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(rules=st.lists(dns_rules(), min_size=1, max_size=3), data=st.data())
def test_dns_verdicts_agree_with_reference(tmp_path_factory, rules, data):
    import yaml

    policy = yaml.safe_dump({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "client"}},
                 "egress": [{"toEndpoints": [{"matchLabels": {"app": "server"}}],
                             "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}], "rules": {"dns": rules}}]}]}})
    with loaded_engine(tmp_path_factory.mktemp("dns"), CLUSTER, policy, "l7p") as engine:
        models = [SimpleNamespace(match_name=r.get("matchName"), match_pattern=r.get("matchPattern")) for r in rules]
        for rule in rules:
            for name in _names_for(rule, data):
                want = "allow" if reference_l7.dns_allowed(models, name.lower()) else "deny"
                assert _kernel(engine, _query(name), "UDP", 53) == want, (rules, name)
