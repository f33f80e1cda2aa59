"""Load the cluster inventory (Namespaces, Pods, Nodes) into ``ir.Inventory``.

Input is typically ``kubectl get ns,pods,nodes -A -o yaml`` (a ``kind: List``).  Those
objects carry many fields polc does not model: unknown fields are ignored here (unlike in
policies), but the fields we use are validated and errors point at them.

Pod identity labels follow Cilium: every pod label with source ``k8s`` (minus the
rollout-specific hashes), plus ``io.kubernetes.pod.namespace``,
``io.cilium.k8s.policy.serviceaccount``, ``io.cilium.k8s.policy.cluster`` and one
``io.cilium.k8s.namespace.labels.<key>`` per label of the pod's namespace.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, Literal, Sequence

from pydantic import ConfigDict, Field, model_validator

from . import ir
from .errors import PolcError, raise_all
from .frontends.common import Model, Str, check_port_name, fail, validate
from .source import Document, gc_paused, load_paths

CLUSTER_NAME = "default"
NS_NAME_LABEL = "kubernetes.io/metadata.name"
# Labels that change with every rollout; Cilium leaves them out of identities.
EXCLUDED_POD_LABELS = frozenset({"pod-template-hash", "controller-revision-hash", "pod-template-generation"})
# Pods in these phases have no endpoint any more (and their IP may be reused).
FINISHED_PHASES = ("Succeeded", "Failed")
POLICY_KINDS = ("NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")


class _Inv(Model):
    """Inventory objects: unknown fields are ignored, known ones validated."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def _ip(value: str, *path) -> ir.IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise fail(f"invalid IP address {value!r}", *path) from None


class Meta(_Inv):
    name: Str
    namespace: Str | None = None
    labels: dict[Str, Str] | None = None


class NamespaceObj(_Inv):
    kind: Literal["Namespace"]
    metadata: Meta


class ContainerPortSpec(_Inv):
    name: Str | None = None
    container_port: int = Field(alias="containerPort", strict=True)
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None

    @model_validator(mode="after")
    def _check(self):
        if not 1 <= self.container_port <= 65535:
            raise fail(f"containerPort {self.container_port} is out of range 1..65535", "containerPort")
        if self.name is not None and check_port_name(self.name):
            raise fail(check_port_name(self.name), "name")
        return self


class Container(_Inv):
    name: Str | None = None
    ports: list[ContainerPortSpec] | None = None


class PodSpec(_Inv):
    service_account_name: Str | None = Field(None, alias="serviceAccountName")
    node_name: Str | None = Field(None, alias="nodeName")
    host_network: bool | None = Field(None, alias="hostNetwork", strict=True)
    containers: list[Container] | None = None


class PodIP(_Inv):
    ip: Str


class PodStatus(_Inv):
    phase: Str | None = None
    pod_ip: Str | None = Field(None, alias="podIP")
    pod_ips: list[PodIP] | None = Field(None, alias="podIPs")

    @model_validator(mode="after")
    def _ips(self):
        if self.pod_ip:
            _ip(self.pod_ip, "podIP")
        for i, entry in enumerate(self.pod_ips or ()):
            _ip(entry.ip, "podIPs", i, "ip")
        return self

    def ips(self) -> tuple[ir.IPAddress, ...]:
        texts = [e.ip for e in self.pod_ips or ()] + ([self.pod_ip] if self.pod_ip else [])
        return tuple(dict.fromkeys(ipaddress.ip_address(t) for t in texts))


class PodObj(_Inv):
    kind: Literal["Pod"]
    metadata: Meta
    spec: PodSpec = PodSpec()
    status: PodStatus = PodStatus()


class NodeAddress(_Inv):
    type: Str
    address: Str


class NodeStatus(_Inv):
    addresses: list[NodeAddress] | None = None

    @model_validator(mode="after")
    def _ips(self):
        for i, a in enumerate(self.addresses or ()):
            if a.type in ("InternalIP", "ExternalIP"):
                _ip(a.address, "addresses", i, "address")
        return self


class NodeObj(_Inv):
    kind: Literal["Node"]
    metadata: Meta
    status: NodeStatus = NodeStatus()


_MODELS = {"Namespace": NamespaceObj, "Pod": PodObj, "Node": NodeObj}


@gc_paused()
def load_inventory(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> ir.Inventory:
    """Load inventory files/directories into an ``ir.Inventory`` (positioned errors)."""
    return build_inventory(load_paths(paths))


@gc_paused()
def build_inventory(docs: Sequence[Document]) -> ir.Inventory:
    """Validate loaded documents as inventory objects and build identities."""
    objects: dict[str, list[tuple[Document, Any]]] = {k: [] for k in _MODELS}
    errors: list[PolcError] = []
    for doc in docs:
        try:
            kind, obj = _parse(doc)
            objects[kind].append((doc, obj))
        except PolcError as exc:
            errors.append(exc)
    raise_all(errors)
    namespaces = _namespaces(objects["Namespace"], errors)
    ns_labels = {ns.name: dict(ns.labels) for ns in namespaces}
    pods = _pods(objects["Pod"], ns_labels, errors)
    nodes = _nodes(objects["Node"], errors)
    raise_all(errors)
    sources = tuple(dict.fromkeys(doc.file for doc in docs))
    return ir.Inventory(tuple(namespaces), tuple(pods), tuple(nodes), sources)


def _parse(doc: Document) -> tuple[str, Any]:
    if not isinstance(doc.data, dict):
        raise doc.error((), "an inventory document must be a mapping (a Namespace, Pod, Node or List)")
    kind = doc.data.get("kind")
    if kind in POLICY_KINDS:
        raise doc.error(("kind",), f"{kind} is a policy, not inventory: pass it as a policy file, not with --cluster")
    if kind not in _MODELS:
        raise doc.error(("kind",) if kind else (), f"{doc.describe()} is not inventory (expected Namespace, Pod or "
                        "Node, e.g. from `kubectl get ns,pods,nodes -A -o yaml`)")
    return kind, validate(doc, _MODELS[kind])


def _origin(doc: Document, what: str) -> ir.Origin:
    line, col = doc.position(())
    return ir.Origin(doc.file, line, col, what)


def _namespaces(items, errors: list[PolcError]) -> list[ir.Namespace]:
    out: dict[str, ir.Namespace] = {}
    for doc, obj in items:
        name = obj.metadata.name
        if name in out:
            errors.append(doc.error(("metadata", "name"), f"duplicate Namespace {name} (first at {out[name].origin})"))
            continue
        labels = dict(obj.metadata.labels or {})
        labels[NS_NAME_LABEL] = name  # set by the API server on every namespace
        out[name] = ir.Namespace(name, tuple(sorted(labels.items())), _origin(doc, f"Namespace {name}"))
    return list(out.values())


def pod_identity_labels(namespace: str, pod_labels: dict[str, str], service_account: str,
                        ns_labels: dict[str, str]) -> tuple[tuple[tuple[str, str], str], ...]:
    """The sorted identity labels Cilium derives for a pod."""
    labels = {("k8s", k): v for k, v in pod_labels.items() if k not in EXCLUDED_POD_LABELS}
    labels[("k8s", "io.kubernetes.pod.namespace")] = namespace
    labels[("k8s", "io.cilium.k8s.policy.serviceaccount")] = service_account
    labels[("k8s", "io.cilium.k8s.policy.cluster")] = CLUSTER_NAME
    for k, v in ns_labels.items():
        labels[("k8s", f"io.cilium.k8s.namespace.labels.{k}")] = v
    return tuple(sorted(labels.items()))


def _pods(items, ns_labels: dict[str, dict[str, str]], errors: list[PolcError]) -> list[ir.Pod]:
    out: dict[str, ir.Pod] = {}
    owners: dict = {}
    for doc, obj in items:
        if obj.spec.host_network or obj.status.phase in FINISHED_PHASES:
            continue  # host-network pods share the node's identity; finished pods have no endpoint
        ns = obj.metadata.namespace or "default"
        ref = f"{ns}/{obj.metadata.name}"
        if ref in out:
            errors.append(doc.error(("metadata", "name"), f"duplicate Pod {ref} (first at {out[ref].origin})"))
            continue
        pod = _pod(doc, obj, ns, ns_labels.get(ns, {NS_NAME_LABEL: ns}))
        for ip in pod.ips:
            if ip in owners:
                errors.append(doc.error(_ip_path(obj, ip), f"pod IP {ip} of {ref} is also the IP of {owners[ip]}"))
            owners.setdefault(ip, ref)
        out[ref] = pod
    return list(out.values())


def _ip_path(obj: PodObj, ip: ir.IPAddress) -> tuple:
    """Where ``ip`` is written in the pod (for error positions)."""
    for i, entry in enumerate(obj.status.pod_ips or ()):
        if ipaddress.ip_address(entry.ip) == ip:
            return ("status", "podIPs", i, "ip")
    return ("status", "podIP")


def _pod(doc: Document, obj: PodObj, ns: str, ns_labels: dict[str, str]) -> ir.Pod:
    sa = obj.spec.service_account_name or "default"
    labels = pod_identity_labels(ns, obj.metadata.labels or {}, sa, ns_labels)
    ports = tuple(
        ir.ContainerPort(p.name or "", ir.Proto[p.protocol or "TCP"], p.container_port)
        for c in obj.spec.containers or () for p in c.ports or ()
    )
    ref = f"{ns}/{obj.metadata.name}"
    return ir.Pod(ns, obj.metadata.name, labels, obj.status.ips(), ports, obj.spec.node_name,
                  _origin(doc, f"Pod {ref}"))


def _nodes(items, errors: list[PolcError]) -> list[ir.Node]:
    out: dict[str, ir.Node] = {}
    for doc, obj in items:
        name = obj.metadata.name
        if name in out:
            errors.append(doc.error(("metadata", "name"), f"duplicate Node {name} (first at {out[name].origin})"))
            continue
        ips = tuple(dict.fromkeys(ipaddress.ip_address(a.address) for a in obj.status.addresses or ()
                                  if a.type in ("InternalIP", "ExternalIP")))
        labels = tuple(sorted((obj.metadata.labels or {}).items()))
        out[name] = ir.Node(name, labels, ips, _origin(doc, f"Node {name}"))
    return list(out.values())
