"""Hypothesis strategies for polc: inventories, policies (as YAML-ready data) and flows.

Everything is generated as plain data (what a user writes in YAML), so that a failing case
can be dumped as files a person can read and replay with ``polc compile`` / ``polc test``.
Addresses stay inside 198.18.0.0/15 and 2001:db8::/32: pods in 198.18.1.0/24, nodes in
198.18.0.0/24, the outside world in 198.19.0.0/16 (IPv6 likewise under 2001:db8::/32).

The alphabets are small on purpose: few labels, few namespaces and a few port numbers make
selectors, CIDRs and ranges collide with the inventory and with each other often.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import tempfile

import yaml
from hypothesis import strategies as st

PROFILE = os.environ.get("POLC_HYPOTHESIS_PROFILE", "ci")

NAMESPACES = ("a", "b", "c")
NODES = ("n1", "n2")
LABEL_KEYS = ("app", "tier")
LABEL_VALUES = ("web", "db", "x")
NS_LABEL_KEYS = ("team",)
NS_LABEL_VALUES = ("red", "blue")
PORT_NAMES = ("http", "dns", "metrics")
PORTS = (1, 53, 79, 80, 81, 443, 8080, 8081, 9000, 65535)
PROTOS = ("TCP", "UDP", "SCTP")
ICMP4_TYPES = (0, 3, 8, "EchoRequest", "EchoReply", "TimeExceeded")
ICMP6_TYPES = (1, 128, 129, "EchoRequest", "EchoReply")

V4 = ipaddress.ip_network("198.18.0.0/15")
V6 = ipaddress.ip_network("2001:db8::/32")
WORLD_V4 = ipaddress.ip_network("198.19.0.0/16")
WORLD_V6 = ipaddress.ip_network("2001:db8:ff::/48")


def in_test_ranges(ip) -> bool:
    ip = ipaddress.ip_address(ip)
    return ip in (V4 if ip.version == 4 else V6)


# --------------------------------------------------------------------------- inventory


@st.composite
def labels(draw, keys=LABEL_KEYS, values=LABEL_VALUES, max_size=2):
    return draw(st.dictionaries(st.sampled_from(keys), st.sampled_from(values), max_size=max_size))


@st.composite
def container_ports(draw):
    """Named ports: the same name maps to different numbers (and protocols) on different pods."""
    names = draw(st.lists(st.sampled_from(PORT_NAMES), unique=True, max_size=2))
    return [{"name": n, "containerPort": draw(st.sampled_from(PORTS[:-1])),
             "protocol": draw(st.sampled_from(("TCP", "TCP", "UDP")))} for n in names]


@st.composite
def inventories(draw, max_pods=5):
    """A ``kind: List`` of Namespaces, Nodes and Pods (dual-stack pods and nodes sometimes)."""
    namespaces = draw(st.lists(st.sampled_from(NAMESPACES), min_size=1, max_size=3, unique=True))
    items = []
    for ns in namespaces:
        meta = {"name": ns}
        ns_labels = draw(labels(NS_LABEL_KEYS, NS_LABEL_VALUES, 1))
        if ns_labels:
            meta["labels"] = ns_labels
        items.append({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    nodes = draw(st.lists(st.sampled_from(NODES), min_size=1, max_size=2, unique=True))
    for i, node in enumerate(nodes, start=1):
        addrs = [{"type": "InternalIP", "address": f"198.18.0.{i}"}]
        if draw(st.booleans()):
            addrs.append({"type": "InternalIP", "address": f"2001:db8::{i}"})
        items.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
                      "status": {"addresses": addrs}})
    n_pods = draw(st.integers(1, max_pods))
    for i in range(1, n_pods + 1):
        items.append(draw(pods(i, namespaces, nodes)))
    return {"apiVersion": "v1", "kind": "List", "items": items}


@st.composite
def pods(draw, i: int, namespaces, nodes):
    """Pod ``p<i>`` at 198.18.1.<i> (and sometimes 2001:db8:1::<i>), on one of ``nodes``."""
    meta = {"name": f"p{i}", "namespace": draw(st.sampled_from(namespaces))}
    pod_labels = draw(labels())
    if pod_labels:
        meta["labels"] = pod_labels
    ips = [{"ip": f"198.18.1.{i}"}]
    if draw(st.integers(0, 2)) == 0:
        ips.append({"ip": f"2001:db8:1::{i:x}"})
    spec = {"nodeName": draw(st.sampled_from(nodes)), "containers": [{"name": "c"}]}
    ports = draw(container_ports())
    if ports:
        spec["containers"][0]["ports"] = ports
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"podIPs": ips}}


# --------------------------------------------------------------------------- selectors


@st.composite
def requirement(draw, keys):
    key = draw(st.sampled_from(keys))
    op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
    req = {"key": key, "operator": op}
    if op in ("In", "NotIn"):
        req["values"] = draw(st.lists(st.sampled_from(LABEL_VALUES + NS_LABEL_VALUES), min_size=1,
                                      max_size=2, unique=True))
    return req


@st.composite
def label_selector(draw, keys=LABEL_KEYS, values=LABEL_VALUES, max_labels=1, max_exprs=2):
    # Each key once per selector (see test_regression_same_key_twice for why).
    used = draw(st.lists(st.sampled_from(keys), unique=True, max_size=max_labels + max_exprs))
    n_labels = draw(st.integers(0, min(max_labels, len(used))))
    sel = {}
    ml = {k: draw(st.sampled_from(values)) for k in used[:n_labels]}
    if ml:
        sel["matchLabels"] = ml
    exprs = [draw(requirement((k,))) for k in used[n_labels:]]
    if exprs:
        sel["matchExpressions"] = exprs
    return sel


# --------------------------------------------------------------------------- CIDRs

# CIDRs are drawn around the interesting addresses: the world, and (for ipBlock) the pods and
# nodes, so that cidr and except edges fall next to addresses flows use.
_V4_BASES = ("198.19.0.0", "198.19.128.0", "198.18.1.0", "198.18.0.0", "198.19.7.0")
_V6_BASES = ("2001:db8:ff::", "2001:db8:ff:8000::", "2001:db8:1::", "2001:db8::")


@st.composite
def cidr_with_excepts(draw, strict=True, allow_v6=True):
    """``(cidr, [except...])`` with every except inside cidr (strictly, for Kubernetes)."""
    v6 = allow_v6 and draw(st.integers(0, 3)) == 0
    bases, maxlen = (_V6_BASES, 128) if v6 else (_V4_BASES, 32)
    base = ipaddress.ip_address(draw(st.sampled_from(bases)))
    lo = 16 if not v6 else 48
    plen = draw(st.integers(lo, maxlen - 1 if strict else maxlen))
    net = ipaddress.ip_network(f"{base}/{plen}", strict=False)
    excepts = []
    for _ in range(draw(st.integers(0, 2))):
        elen = draw(st.integers(plen + (1 if strict else 0), min(maxlen, plen + 10)))
        if elen > maxlen:
            break
        # a sub-prefix at the start, the end or somewhere inside of net
        count = 1 << (elen - plen)
        idx = draw(st.sampled_from((0, count - 1, count // 2, draw(st.integers(0, count - 1)))))
        sub = ipaddress.ip_network((int(net.network_address) + idx * (1 << (maxlen - elen)), elen))
        if str(sub) not in excepts:
            excepts.append(str(sub))
    return str(net), excepts


# --------------------------------------------------------------------------- ports


@st.composite
def port_range(draw):
    port = draw(st.sampled_from(PORTS))
    if draw(st.integers(0, 3)) == 0:
        return port, None
    end = draw(st.sampled_from([p for p in PORTS if p >= port] + [min(port + 1, 65535)]))
    return port, end


@st.composite
def k8s_port(draw):
    out = {}
    proto = draw(st.sampled_from((None,) + PROTOS))
    if proto:
        out["protocol"] = proto
    kind = draw(st.sampled_from(("number", "number", "range", "named", "none")))
    if kind == "named":
        out["port"] = draw(st.sampled_from(PORT_NAMES + ("unserved",)))
    elif kind == "number":
        out["port"] = draw(st.sampled_from(PORTS))
    elif kind == "range":
        port, end = draw(port_range())
        out["port"] = port
        if end is not None:
            out["endPort"] = end
    return out


@st.composite
def cilium_port(draw, allow_named=True):
    out = {}
    proto = draw(st.sampled_from((None, "ANY") + PROTOS))
    if proto:
        out["protocol"] = proto
    kinds = ("number", "number", "range", "zero", "none") + (("named",) if allow_named else ())
    kind = draw(st.sampled_from(kinds))
    if kind == "named":
        name = draw(st.sampled_from(PORT_NAMES))
        out["port"] = name.upper() if draw(st.integers(0, 4)) == 0 else name
    elif kind == "number":
        out["port"] = str(draw(st.sampled_from(PORTS)))
    elif kind == "zero":
        out["port"] = "0"
    elif kind == "range":
        port, end = draw(port_range())
        out["port"] = str(port)
        if end is not None:
            out["endPort"] = end
    return out


@st.composite
def icmp_rules(draw):
    fields = []
    for _ in range(draw(st.integers(1, 2))):
        if draw(st.booleans()):
            fields.append({"family": "IPv6", "type": draw(st.sampled_from(ICMP6_TYPES))})
        else:
            f = {"type": draw(st.sampled_from(ICMP4_TYPES))}
            if draw(st.booleans()):
                f["family"] = "IPv4"
            fields.append(f)
    return [{"fields": fields}]


# --------------------------------------------------------------------------- Kubernetes


@st.composite
def k8s_peer(draw):
    kind = draw(st.sampled_from(("pod", "ns", "both", "ip")))
    if kind == "ip":
        cidr, excepts = draw(cidr_with_excepts(strict=True))
        block = {"cidr": cidr}
        if excepts:
            block["except"] = excepts
        return {"ipBlock": block}
    peer = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = draw(label_selector())
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = draw(label_selector(NS_LABEL_KEYS + ("kubernetes.io/metadata.name",),
                                                        NS_LABEL_VALUES + NAMESPACES))
    return peer


@st.composite
def k8s_rule(draw, direction):
    rule = {}
    peers = draw(st.lists(k8s_peer(), max_size=2))
    if peers or draw(st.booleans()):
        rule["from" if direction == "ingress" else "to"] = peers
    ports = draw(st.lists(k8s_port(), max_size=2))
    if ports or draw(st.booleans()):
        rule["ports"] = ports
    return rule


@st.composite
def network_policies(draw, name):
    spec = {"podSelector": draw(label_selector())}
    types = draw(st.sampled_from((None, ["Ingress"], ["Egress"], ["Ingress", "Egress"])))
    if types:
        spec["policyTypes"] = types
    for direction in ("ingress", "egress"):
        if draw(st.integers(0, 2)):
            spec[direction] = draw(st.lists(k8s_rule(direction), max_size=2))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": draw(st.sampled_from(NAMESPACES))}, "spec": spec}


# --------------------------------------------------------------------------- Cilium

_CILIUM_KEYS = ("app", "k8s:app", "any:tier", "k8s:io.kubernetes.pod.namespace",
                "k8s:io.cilium.k8s.namespace.labels.team")
_RESERVED_KEYS = ("reserved:host", "reserved:world", "reserved:remote-node", "reserved:world-ipv6")
ENTITIES = ("all", "world", "cluster", "host", "remote-node", "kube-apiserver", "health", "none")


# Subject selectors use every key, the namespace key included (an expression on it next to
# the namespace CNP lowering adds once crashed: test_regression_namespace_expression_in_subject).
_SUBJECT_KEYS = _CILIUM_KEYS


@st.composite
def cilium_endpoint_selector(draw, keys=_CILIUM_KEYS):
    if draw(st.integers(0, 6)) == 0:  # a reserved identity, as written
        key = draw(st.sampled_from(_RESERVED_KEYS))
        if draw(st.booleans()):
            return {"matchLabels": {key: ""}}
        return {"matchExpressions": [{"key": key, "operator": draw(st.sampled_from(("Exists", "DoesNotExist")))}]}
    return draw(label_selector(keys, LABEL_VALUES + NAMESPACES + NS_LABEL_VALUES))


@st.composite
def cilium_peer_part(draw, direction):
    """One peer field (or none) of a Cilium rule: {field: [values]}."""
    prefix = "from" if direction == "ingress" else "to"
    kind = draw(st.sampled_from(("none", "endpoints", "endpoints", "cidr", "cidrset", "entities")))
    if kind == "none":
        return {}
    if kind == "endpoints":
        return {prefix + "Endpoints": draw(st.lists(cilium_endpoint_selector(), min_size=1, max_size=2))}
    if kind == "cidr":
        out = []
        for _ in range(draw(st.integers(1, 2))):
            cidr, _ = draw(cidr_with_excepts(strict=False))
            if cidr.endswith(("/32", "/128")) and draw(st.booleans()):
                cidr = cidr.split("/")[0]  # a bare address is a host prefix
            out.append(cidr)
        return {prefix + "CIDR": out}
    if kind == "cidrset":
        out = []
        for _ in range(draw(st.integers(1, 2))):
            cidr, excepts = draw(cidr_with_excepts(strict=False))
            out.append({"cidr": cidr, **({"except": excepts} if excepts else {})})
        return {prefix + "CIDRSet": out}
    return {prefix + "Entities": draw(st.lists(st.sampled_from(ENTITIES), min_size=1, max_size=2))}


@st.composite
def cilium_rule_item(draw, direction, deny=False):
    item = draw(cilium_peer_part(direction))
    l4 = draw(st.sampled_from(("none", "ports", "ports", "icmps")))
    if l4 == "ports":
        ports = draw(st.lists(cilium_port(allow_named=True), min_size=1, max_size=2))
        item["toPorts"] = [{"ports": ports}]
    elif l4 == "icmps":
        item["icmps"] = draw(icmp_rules())
    return item


@st.composite
def cilium_rule(draw):
    rule = {"endpointSelector": draw(cilium_endpoint_selector(_SUBJECT_KEYS))}
    for section, direction, deny in (("ingress", "ingress", False), ("egress", "egress", False),
                                     ("ingressDeny", "ingress", True), ("egressDeny", "egress", True)):
        weight = 3 if not deny else 5
        if draw(st.integers(0, weight)) == 0 or (not deny and draw(st.booleans())):
            rule[section] = draw(st.lists(cilium_rule_item(direction, deny), max_size=2))
    if draw(st.integers(0, 3)) == 0:
        rule["enableDefaultDeny"] = draw(st.fixed_dictionaries({}, optional={
            "ingress": st.booleans(), "egress": st.booleans()}))
    return rule


@st.composite
def cilium_policies(draw, name, clusterwide=None):
    if clusterwide is None:
        clusterwide = draw(st.integers(0, 3)) == 0
    meta = {"name": name}
    if not clusterwide:
        meta["namespace"] = draw(st.sampled_from(NAMESPACES))
    doc = {"apiVersion": "cilium.io/v2",
           "kind": "CiliumClusterwideNetworkPolicy" if clusterwide else "CiliumNetworkPolicy",
           "metadata": meta}
    if draw(st.integers(0, 3)) == 0:
        doc["specs"] = draw(st.lists(cilium_rule(), min_size=1, max_size=2))
    else:
        doc["spec"] = draw(cilium_rule())
    return doc


@st.composite
def policy_sets(draw, min_size=1, max_size=3):
    """A list of policy documents of all three kinds, uniquely named."""
    n = draw(st.integers(min_size, max_size))
    out = []
    for i in range(n):
        if draw(st.integers(0, 2)) == 0:
            out.append(draw(network_policies(f"np{i}")))
        else:
            out.append(draw(cilium_policies(f"cnp{i}")))
    return out


# --------------------------------------------------------------------------- flows


def _cidrs_of(policies) -> list[str]:
    """Every cidr / except / fromCIDR text in the policy documents."""
    out: list[str] = []

    def walk(node, key=None):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and key in ("cidr", "except", "fromCIDR", "toCIDR"):
            out.append(node)

    walk(policies)
    return out


def _ports_of(policies, inventory) -> tuple[list[int], list[int]]:
    """``(edges, named)``: ports at and next to every rule's range ends, and container ports."""
    edges = {1, 65535}
    seen = []

    def walk(node):
        if isinstance(node, dict):
            port, end = node.get("port"), node.get("endPort")
            if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
                seen.append((int(port), end if end is not None else int(port)))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(policies)
    for lo, hi in seen:
        edges.update((lo - 1, lo, hi, hi + 1))
    named = {p["containerPort"] for item in inventory["items"]
             for c in (item.get("spec") or {}).get("containers") or () for p in c.get("ports") or ()}
    return sorted(p for p in edges if 0 <= p <= 65535), sorted(named) or [80]


def interesting_addresses(policies, inventory) -> list[str]:
    """Pod and node addresses, plus the world around every CIDR edge (inside the test ranges)."""
    out: list[str] = []
    for item in inventory["items"]:
        if item["kind"] == "Pod":
            out += [e["ip"] for e in item["status"]["podIPs"]]
        elif item["kind"] == "Node":
            out += [a["address"] for a in item["status"]["addresses"]]
    out += ["198.19.255.254", "2001:db8:ff:ffff::1"]
    for text in _cidrs_of(policies):
        net = ipaddress.ip_network(text, strict=False)
        first, last = int(net.network_address), int(net.broadcast_address)
        cls = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
        for value in (first - 1, first, first + 1, (first + last) // 2, last - 1, last, last + 1):
            try:
                ip = cls(value)
            except ipaddress.AddressValueError:
                continue
            if in_test_ranges(ip):
                out.append(str(ip))
    return list(dict.fromkeys(out))


def interesting_flows(policies, inventory, rnd: random.Random, limit: int = 300) -> list[dict]:
    """Flows aimed at the edges: every address pair with a pod on one side, each protocol,
    ports at every range end and named-port number; sampled down to ``limit``.

    A flow is ``{src, dst, proto, port}`` (``port`` is the ICMP type for ICMP).
    """
    addrs = interesting_addresses(policies, inventory)
    pods = {e["ip"] for it in inventory["items"] if it["kind"] == "Pod" for e in it["status"]["podIPs"]}
    edges, named = _ports_of(policies, inventory)
    flows = []
    for src in addrs:
        for dst in addrs:
            if src == dst or (":" in src) != (":" in dst) or (src not in pods and dst not in pods):
                continue
            v6 = ":" in src
            for proto in PROTOS:
                # one port at a range edge, one a pod serves (named ports), one at random
                for port in {rnd.choice(edges), rnd.choice(named), rnd.randint(0, 65535)}:
                    flows.append({"src": src, "dst": dst, "proto": proto, "port": port})
            icmp = "ICMPv6" if v6 else "ICMP"
            types = (1, 128, 129, 0) if v6 else (0, 3, 8, 11)
            flows.append({"src": src, "dst": dst, "proto": icmp, "port": rnd.choice(types)})
    if len(flows) > limit:
        flows = rnd.sample(flows, limit)
    return flows


def dump_yaml(data, documents: bool = True) -> str:
    """YAML a person can read (keys in the order written); a list is one document per item."""
    if isinstance(data, list) and documents:
        return yaml.safe_dump_all(data, sort_keys=False, default_flow_style=None, width=110)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)


# --------------------------------------------------------------------------- the harness


class Case:
    """One generated case: policy documents, an inventory (a ``kind: List``) and flows."""

    def __init__(self, policies: list, inventory: dict, flows: list | None = None):
        self.policies = policies
        self.inventory = inventory
        self.flows = flows or []

    def __repr__(self) -> str:  # what Hypothesis prints for a falsifying example
        return (f"Case(<{len(self.flows)} flows>)\n--- policy.yaml\n{dump_yaml(self.policies)}"
                f"--- cluster.yaml\n{dump_yaml(self.inventory)}")

    def write(self, directory: str) -> tuple[str, str]:
        """Write ``policy.yaml`` and ``cluster.yaml`` into ``directory``; return their paths."""
        os.makedirs(directory, exist_ok=True)
        policy, cluster = os.path.join(directory, "policy.yaml"), os.path.join(directory, "cluster.yaml")
        with open(policy, "w") as f:
            f.write(dump_yaml(self.policies))
        with open(cluster, "w") as f:
            f.write(dump_yaml(self.inventory))
        return policy, cluster


def pod_index(inventory: dict) -> dict[str, dict]:
    """Pod address -> {ref, node, family} from an inventory ``List``."""
    out = {}
    for item in inventory["items"]:
        if item["kind"] == "Pod":
            ref = f"{item['metadata']['namespace']}/{item['metadata']['name']}"
            for e in item["status"]["podIPs"]:
                out[e["ip"]] = {"ref": ref, "node": item["spec"].get("nodeName")}
    return out


def flow_entry(flow: dict, pods: dict, expect: str | None = None) -> dict:
    """A flow as a line of a ``polc test`` flow file (pods by name so their node is known)."""
    out = {"from": pods[flow["src"]]["ref"] if flow["src"] in pods else flow["src"],
           "to": pods[flow["dst"]]["ref"] if flow["dst"] in pods else flow["dst"],
           "proto": flow["proto"]}
    if ":" in flow["src"]:
        out["family"] = 6
    out["icmp_type" if flow["proto"].startswith("ICMP") else "port"] = flow["port"]
    if expect:
        out["expect"] = expect
    return out


class KernelCase:
    """A case compiled with the real pipeline and loaded into the kernel, next to the reference."""

    def __init__(self, case: Case, directory: str, load=None):
        """``load(obj, path)`` -> a live ``Collection`` (default: ``Collection.load(obj)``)."""
        from polc.compiler.backend import emit_object
        from polc.compiler.inventory import load_inventory
        from polc.compiler.lower import load_policies
        from polc.compiler.pipeline import compile_paths
        from polc.compiler.reference import ReferenceEvaluator
        from polc.runtime.elfobj import ObjectFile
        from polc.runtime.loader import Collection
        from polc.runtime.testrun import KernelEngine

        self.case = case
        self.directory = directory
        policy, cluster = case.write(directory)
        compiled = compile_paths([policy], [cluster])
        out = os.path.join(directory, "out.o")
        data = emit_object(compiled.spec)
        with open(out, "wb") as f:
            f.write(data)
        obj = ObjectFile.from_bytes(data, name="case", path=out)
        self.collection = load(obj, out) if load is not None else Collection.load(obj)
        self.engine = KernelEngine(self.collection, obj.meta)
        self.nodes = set(obj.meta.get("nodes") or {})
        self.reference = ReferenceEvaluator(load_policies([policy]), load_inventory([cluster]))
        self.pods = pod_index(case.inventory)

    def close(self) -> None:
        self.collection.close()

    def kernel(self, flow: dict):
        from polc.runtime.testrun import Flow

        def node(ip):
            pod = self.pods.get(ip)
            return pod["node"] if pod and pod["node"] in self.nodes else None

        icmp = flow["proto"].startswith("ICMP")
        return self.engine.run(Flow(src_ip=flow["src"], dst_ip=flow["dst"], proto=flow["proto"],
                                    port=None if icmp else flow["port"], icmp_type=flow["port"] if icmp else None,
                                    src_local_node=node(flow["src"]), dst_local_node=node(flow["dst"])))

    def mismatches(self, flows: list[dict]) -> list[tuple[dict, str, str, object]]:
        """``(flow, reference verdict, its explanation, kernel result)`` for every disagreement."""
        out = []
        for flow in flows:
            want, why = self.reference.verdict(flow["src"], flow["dst"], flow["proto"], flow["port"])
            got = self.kernel(flow)
            if got.verdict != want:
                out.append((flow, want, why, got))
        return out

    def report(self, bad: list, total: int) -> str:
        """A readable, replayable account of the disagreements (also written to files)."""
        first = bad[:5]
        flows = [flow_entry(f, self.pods, expect=want) for f, want, _, _ in first]
        digest = hashlib.sha256((dump_yaml(self.case.policies) + dump_yaml(self.case.inventory)
                                 + dump_yaml(flows)).encode()).hexdigest()[:12]
        keep = os.path.join(FAILURE_DIR, digest)
        self.case.write(keep)
        with open(os.path.join(keep, "flows.yaml"), "w") as f:
            f.write(dump_yaml(flows, documents=False))
        lines = [f"kernel and reference disagree on {len(bad)} of {total} flows", "",
                 "--- policy.yaml", dump_yaml(self.case.policies), "--- cluster.yaml",
                 dump_yaml(self.case.inventory), "--- flows.yaml (expect = the reference's verdict)",
                 dump_yaml(flows, documents=False)]
        for flow, want, why, got in first:
            runs = ", ".join(f"{r.program} {r.stage} rule {r.rule_id}"
                             + (f" ({r.rule.get('policy')} {r.rule.get('where')})" if r.rule else "")
                             for r in got.runs)
            lines.append(f"{flow}: reference {want} [{why}]; kernel {got.verdict} [{runs}]")
        lines += ["", f"replay (files in {keep}):",
                  f"  polc compile {keep}/policy.yaml --cluster {keep}/cluster.yaml -o {keep}/out.o",
                  f"  sudo polc test {keep}/out.o {keep}/flows.yaml --cluster {keep}/cluster.yaml",
                  f"  polc test {keep}/out.o {keep}/flows.yaml --cluster {keep}/cluster.yaml --engine reference"]
        return "\n".join(lines)


FAILURE_DIR = os.environ.get("POLC_HYPOTHESIS_FAILURES", os.path.join(tempfile.gettempdir(), "polc-hypothesis"))
