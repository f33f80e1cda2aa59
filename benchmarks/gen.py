"""Synthetic clusters and policy sets for the benchmarks, written as real YAML files.

Everything is deterministic for a given :class:`Scenario` (a seeded ``random.Random``), so a
benchmark run can be repeated and two runs compared.  The files go through the whole
frontend: ``polc.compiler.pipeline.compile_paths(policy_dir, [cluster.yaml])``.

The shape follows what large clusters look like:

* namespaces with ``team`` and ``env`` labels; in each, a few apps with a few versions
  (identity = namespace x app x version x tier), pods spread over nodes, every pod
  serving a named ``http`` port;
* ``mixed`` policy sets: per app, a NetworkPolicy (same-namespace clients, clients from
  other teams' namespaces, named and numeric ports, a few ``endPort`` ranges, egress to
  DNS and to external CIDRs with ``except``) and a CiliumNetworkPolicy (``fromEndpoints``
  across namespaces, ``ingressDeny``, ``toCIDRSet`` with ``except``, ``fromEntities``);
* ``cidr`` sets: thousands of prefixes, most with ``except`` (egress allow lists and
  ingress from partner networks, plus deny lists);
* ``ports`` sets: overlapping port ranges (``endPort``) on TCP, UDP and SCTP.

A "rule" is one ingress/egress item of a policy (one ``ir.Rule`` after lowering), which is
also what a linear classifier would check one by one.
"""

from __future__ import annotations

import ipaddress
import os
import random
from dataclasses import dataclass, field

import yaml

KINDS = ("mixed", "cidr", "ports")


@dataclass(frozen=True)
class Scenario:
    """One synthetic cluster plus policy set."""

    kind: str  # one of KINDS
    rules: int  # target number of rules (ingress/egress items)
    namespaces: int
    pods: int
    identities: int  # target: namespaces x apps x versions
    seed: int = 1

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.rules}r-{self.identities}id"


# The standard sizes: rules 10 .. 100,000; pods and identities 10 .. 50,000 / 10,000.
SIZES = {
    10: dict(namespaces=2, pods=10, identities=10),
    100: dict(namespaces=5, pods=100, identities=50),
    1000: dict(namespaces=20, pods=1000, identities=500),
    10000: dict(namespaces=100, pods=10000, identities=2000),
    100000: dict(namespaces=500, pods=50000, identities=10000),
}


def scenario(kind: str, rules: int, seed: int = 1, **overrides) -> Scenario:
    """The standard scenario of ``kind`` with ``rules`` rules (sizes from :data:`SIZES`)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    base = dict(SIZES[min(SIZES, key=lambda n: abs(n - rules))])
    base.update(overrides)
    return Scenario(kind, rules, seed=seed, **base)


# -- the cluster ---------------------------------------------------------------------------


@dataclass
class Cluster:
    """What the generator knows about the cluster it wrote (for policies and flows)."""

    namespaces: list[dict] = field(default_factory=list)  # {name, team, env}
    apps: dict[str, list[str]] = field(default_factory=dict)  # ns -> app names
    versions: int = 1
    pods: list[dict] = field(default_factory=list)  # {name, ns, app, version, ip, node}
    nodes: list[dict] = field(default_factory=list)  # {name, ip}
    objects: list[dict] = field(default_factory=list)  # the inventory items

    def pods_of(self, ns: str, app: str) -> list[dict]:
        return [p for p in self.pods if p["ns"] == ns and p["app"] == app]


POD_NET = ipaddress.ip_network("10.0.0.0/8")
NODE_NET = ipaddress.ip_network("172.16.0.0/16")
TEAMS = 8


def build_cluster(s: Scenario, pod_net=POD_NET, node_net=NODE_NET) -> Cluster:
    """Namespaces, apps, versions, pods and nodes for ``s`` (deterministic)."""
    c = Cluster()
    per_ns = max(1, s.identities // s.namespaces)
    c.versions = 1 if per_ns < 4 else 2 if per_ns < 20 else 4
    apps_per_ns = max(1, per_ns // c.versions)
    n_nodes = max(1, min(50, s.pods // 100))
    for i in range(n_nodes):
        ip = str(node_net.network_address + 10 + i)
        c.nodes.append({"name": f"node-{i}", "ip": ip})
        c.objects.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node-{i}"},
                          "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
    for i in range(s.namespaces):
        ns = {"name": f"ns-{i}", "team": f"t{i % TEAMS}", "env": "prod" if i % 3 else "dev"}
        c.namespaces.append(ns)
        c.apps[ns["name"]] = [f"app{j}" for j in range(apps_per_ns)]
        c.objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": ns["name"], "labels": {"kubernetes.io/metadata.name": ns["name"], "team": ns["team"],
                                           "env": ns["env"]}}})
    slots = [(ns["name"], app, v) for ns in c.namespaces for app in c.apps[ns["name"]] for v in range(c.versions)]
    hosts = pod_net.hosts()
    next(hosts)
    for k in range(max(s.pods, len(slots))):
        ns, app, v = slots[k % len(slots)]
        pod = {"name": f"{app}-v{v}-{k}", "ns": ns, "app": app, "version": v, "ip": str(next(hosts)),
               "node": c.nodes[k % n_nodes]["name"]}
        c.pods.append(pod)
        c.objects.append(_pod_object(pod))
    return c


def _pod_object(p: dict) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p["name"], "namespace": p["ns"],
                     "labels": {"app": p["app"], "version": f"v{p['version']}",
                                "tier": "db" if p["app"].endswith(("3", "7")) else "web"}},
        "spec": {"nodeName": p["node"], "serviceAccountName": p["app"],
                 "containers": [{"name": "main", "ports": [{"name": "http", "containerPort": 8080 + p["version"],
                                                            "protocol": "TCP"},
                                                           {"name": "metrics", "containerPort": 9090,
                                                            "protocol": "TCP"}]}]},
        "status": {"podIPs": [{"ip": p["ip"]}], "podIP": p["ip"]},
    }


# -- policies ------------------------------------------------------------------------------


class _Ext:
    """External prefixes (outside the cluster's pod and node networks)."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def prefix(self, length: int) -> ipaddress.IPv4Network:
        first = self.rng.choice((20, 23, 34, 35, 40, 52, 54, 64, 100, 104, 130, 141, 151, 185, 192, 203))
        addr = (first << 24) | self.rng.getrandbits(24)
        return ipaddress.ip_network((addr, length), strict=False)

    def cidr_rule(self, with_except: float = 0.7) -> dict:
        net = self.prefix(self.rng.choice((16, 20, 22, 24, 24, 26, 28)))
        out = {"cidr": str(net)}
        if net.prefixlen <= 26 and self.rng.random() < with_except:
            subs = list(net.subnets(new_prefix=min(32, net.prefixlen + self.rng.choice((2, 4, 6)))))
            out["except"] = [str(x) for x in self.rng.sample(subs, min(len(subs), self.rng.randint(1, 3)))]
        return out


def _k8s(ns: str, name: str, selector: dict, ingress: list, egress: list) -> dict:
    types = (["Ingress"] if ingress is not None else []) + (["Egress"] if egress is not None else [])
    spec = {"podSelector": {"matchLabels": selector} if selector else {}, "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def _cnp(ns: str, name: str, selector: dict, **sections) -> dict:
    spec = {"endpointSelector": {"matchLabels": selector}}
    spec.update({k: v for k, v in sections.items() if v})
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def _mixed(c: Cluster, rng: random.Random, target: int) -> list[dict]:
    ext = _Ext(rng)
    docs, count, serial = [], 0, 0
    while count < target:
        ns = rng.choice(c.namespaces)
        nsn = ns["name"]
        app = rng.choice(c.apps[nsn])
        serial += 1
        if serial % 2:
            ingress = []
            for _ in range(rng.randint(1, 4)):
                kind = rng.random()
                if kind < 0.4:
                    peer = {"podSelector": {"matchLabels": {"app": rng.choice(c.apps[nsn])}}}
                elif kind < 0.7:
                    peer = {"namespaceSelector": {"matchLabels": {"team": f"t{rng.randrange(TEAMS)}"}},
                            "podSelector": {"matchLabels": {"app": f"app{rng.randrange(len(c.apps[nsn]))}"}}}
                elif kind < 0.85:
                    peer = {"namespaceSelector": {"matchExpressions": [
                        {"key": "env", "operator": "In", "values": ["prod"]}]}}
                else:
                    peer = {"ipBlock": ext.cidr_rule()}
                port = rng.random()
                if port < 0.35:
                    ports = [{"port": "http", "protocol": "TCP"}]
                elif port < 0.8:
                    ports = [{"port": rng.choice((80, 443, 5432, 6379, 8080, 9000 + rng.randrange(50))),
                              "protocol": "TCP"}]
                else:
                    lo = rng.randrange(10000, 30000)
                    ports = [{"port": lo, "endPort": lo + rng.randrange(1, 2000), "protocol": rng.choice(("TCP", "UDP"))}]
                ingress.append({"from": [peer], "ports": ports})
            egress = [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns-0"}}}],
                       "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]
            if rng.random() < 0.5:
                egress.append({"to": [{"ipBlock": ext.cidr_rule()}], "ports": [{"port": 443, "protocol": "TCP"}]})
            docs.append(_k8s(nsn, f"np-{serial}", {"app": app}, ingress, egress))
            count += len(ingress) + len(egress)
        else:
            sel = {"app": app, "version": f"v{rng.randrange(c.versions)}"}
            other = rng.choice(c.namespaces)["name"]
            ingress = [{"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": other,
                                                           "app": rng.choice(c.apps[other])}}],
                        "toPorts": [{"ports": [{"port": str(rng.choice((80, 8080, 9090))), "protocol": "TCP"}]}]}]
            if rng.random() < 0.3:
                ingress.append({"fromEntities": ["host", "remote-node"]})
            deny = [{"fromCIDRSet": [ext.cidr_rule()]}] if rng.random() < 0.3 else []
            egress = [{"toCIDRSet": [ext.cidr_rule()],
                       "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}] if rng.random() < 0.5 else []
            docs.append(_cnp(nsn, f"cnp-{serial}", sel, ingress=ingress, ingressDeny=deny, egress=egress))
            count += len(ingress) + len(deny) + len(egress)
    return docs


def _cidr(c: Cluster, rng: random.Random, target: int) -> list[dict]:
    ext = _Ext(rng)
    docs, count, serial = [], 0, 0
    while count < target:
        serial += 1
        ns = rng.choice(c.namespaces)["name"]
        sel = {"app": rng.choice(c.apps[ns])}
        n = min(target - count, rng.randint(5, 40))
        if serial % 5 == 0:
            deny = [{"toCIDRSet": [ext.cidr_rule(0.3)]} for _ in range(n)]
            docs.append(_cnp(ns, f"cidr-deny-{serial}", sel, egressDeny=deny))
        elif serial % 2:
            egress = [{"to": [{"ipBlock": ext.cidr_rule()}],
                       "ports": [{"port": rng.choice((443, 80, 5432, 53)), "protocol": "TCP"}]} for _ in range(n)]
            docs.append(_k8s(ns, f"cidr-np-{serial}", sel, None, egress))
        else:
            ingress = [{"fromCIDRSet": [ext.cidr_rule()],
                        "toPorts": [{"ports": [{"port": str(rng.choice((443, 8080))), "protocol": "TCP"}]}]}
                       for _ in range(n)]
            docs.append(_cnp(ns, f"cidr-cnp-{serial}", sel, ingress=ingress))
        count += n
    return docs


def _ports(c: Cluster, rng: random.Random, target: int) -> list[dict]:
    docs, count, serial = [], 0, 0
    while count < target:
        serial += 1
        ns = rng.choice(c.namespaces)["name"]
        sel = {"app": rng.choice(c.apps[ns])}
        n = min(target - count, rng.randint(3, 20))
        ingress = []
        for _ in range(n):
            lo = rng.randrange(1024, 60000)
            proto = rng.choice(("TCP", "TCP", "UDP", "SCTP"))
            ports = [{"port": lo, "endPort": min(65535, lo + rng.choice((1, 10, 100, 1000, 5000))), "protocol": proto}]
            if rng.random() < 0.3:
                ports.append({"port": rng.randrange(1, 1024), "protocol": proto})
            peer = ({"podSelector": {"matchLabels": {"app": rng.choice(c.apps[ns])}}} if rng.random() < 0.6 else
                    {"namespaceSelector": {"matchLabels": {"team": f"t{rng.randrange(TEAMS)}"}}})
            ingress.append({"from": [peer], "ports": ports})
        docs.append(_k8s(ns, f"ports-{serial}", sel, ingress, None))
        count += n
    return docs


GENERATORS = {"mixed": _mixed, "cidr": _cidr, "ports": _ports}


@dataclass
class Written:
    """Paths of a written scenario and what was generated."""

    scenario: Scenario
    directory: str
    cluster_path: str
    policy_dir: str
    cluster: Cluster
    policy_count: int


def write_scenario(s: Scenario, directory: str) -> Written:
    """Write ``cluster.yaml`` and ``policies/*.yaml`` (a few hundred policies per file)."""
    rng = random.Random(f"{s.kind}-{s.rules}-{s.seed}")
    c = build_cluster(s)
    docs = GENERATORS[s.kind](c, rng, s.rules)
    os.makedirs(directory, exist_ok=True)
    cluster_path = os.path.join(directory, "cluster.yaml")
    # One document per object rather than one ``kind: List``: the List splitter of
    # compiler/source.py is quadratic in the number of items (see benchmarks/README.md).
    _dump(cluster_path, c.objects)
    policy_dir = os.path.join(directory, "policies")
    os.makedirs(policy_dir, exist_ok=True)
    for i in range(0, len(docs), 500):
        _dump(os.path.join(policy_dir, f"policies-{i // 500:04d}.yaml"), docs[i:i + 500])
    return Written(s, directory, cluster_path, policy_dir, c, len(docs))


def _dump(path: str, docs: list[dict]) -> None:
    loader = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    with open(path, "w") as f:
        yaml.dump_all(docs, f, Dumper=loader, sort_keys=False, default_flow_style=None)


if __name__ == "__main__":  # a quick look: python benchmarks/gen.py KIND RULES DIR
    import sys

    w = write_scenario(scenario(sys.argv[1], int(sys.argv[2])), sys.argv[3])
    print(f"wrote {w.policy_count} policies and {len(w.cluster.pods)} pods to {w.directory}")
