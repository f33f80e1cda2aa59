"""Inventory loading from realistic ``kubectl get ns,pods,nodes -A -o yaml`` output."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from polc.compiler import ir
from polc.compiler.errors import CompileError, ErrorList, PolcError
from polc.compiler.inventory import load_inventory

DATA = Path(__file__).parent / "data" / "frontend" / "inventory"


@pytest.fixture(scope="module")
def inv() -> ir.Inventory:
    return load_inventory([DATA / "kubectl.yaml"])


def pod(inv, ref):
    (p,) = [p for p in inv.pods if p.ref == ref]
    return p


def test_namespaces_get_the_metadata_name_label(inv):
    assert [ns.name for ns in inv.namespaces] == ["shop", "kube-system"]
    assert dict(inv.namespaces[0].labels) == {"kubernetes.io/metadata.name": "shop", "team": "payments"}


def test_pod_identity_labels(inv):
    api = pod(inv, "shop/api-7d9c6b5f4-x2x9k")
    assert dict(api.labels) == {
        ("k8s", "app"): "api",
        ("k8s", "version"): "v2",
        ("k8s", "io.kubernetes.pod.namespace"): "shop",
        ("k8s", "io.cilium.k8s.policy.serviceaccount"): "api",
        ("k8s", "io.cilium.k8s.policy.cluster"): "default",
        ("k8s", "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"): "shop",
        ("k8s", "io.cilium.k8s.namespace.labels.team"): "payments",
    }
    assert list(api.labels) == sorted(api.labels)
    coredns = pod(inv, "kube-system/coredns-5d78c9869d-qq7lm")
    assert ("k8s", "pod-template-hash") not in coredns.label_map


def test_pod_addresses_ports_and_node(inv):
    api = pod(inv, "shop/api-7d9c6b5f4-x2x9k")
    assert api.ips == (ipaddress.ip_address("10.244.1.17"), ipaddress.ip_address("fd00:10:244:1::17"))
    assert api.ports == (
        ir.ContainerPort("http", ir.Proto.TCP, 8080),
        ir.ContainerPort("metrics", ir.Proto.TCP, 9090),
        ir.ContainerPort("dns", ir.Proto.UDP, 5353),
    )
    assert api.node == "node-a"
    assert api.origin.policy == "Pod shop/api-7d9c6b5f4-x2x9k"
    assert api.origin.line == 39  # the list item


def test_skipped_pods_and_defaults(inv):
    refs = [p.ref for p in inv.pods]
    assert "kube-system/kube-proxy-abcde" not in refs  # hostNetwork: not an endpoint
    assert "shop/migrate-7xk2p" not in refs  # Succeeded: endpoint gone (its IP was reused)
    debug = pod(inv, "default/debug")  # no namespace, no service account, no IP yet
    assert debug.ips == () and debug.node is None
    assert debug.label_map[("k8s", "io.cilium.k8s.policy.serviceaccount")] == "default"
    # The namespace is not in the inventory: it still gets its metadata.name label.
    assert debug.label_map[("k8s", "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name")] == "default"


def test_nodes(inv):
    a, b = inv.nodes
    assert a.ips == (ipaddress.ip_address("192.168.10.11"), ipaddress.ip_address("203.0.113.11"))
    assert b.ips == (ipaddress.ip_address("192.168.10.12"), ipaddress.ip_address("fd00::12"))
    assert dict(a.labels)["node-role.kubernetes.io/control-plane"] == ""


def test_duplicate_pod_ip_is_an_error():
    with pytest.raises(CompileError) as info:
        load_inventory([DATA / "duplicate_ip.yaml"])
    err = info.value
    assert "pod IP 10.0.0.5 of shop/b is also the IP of shop/a" in err.message
    assert (err.location.line, err.location.col) == (14, 11)


def test_fields_we_use_are_validated():
    with pytest.raises(ErrorList) as info:
        load_inventory([DATA / "bad_fields.yaml"])
    got = [(e.location.line, e.location.col, e.message) for e in info.value.errors]
    assert got == [
        (5, 18, "expected a string, got integer 1 (quote it in YAML)"),
        (10, 22, "expected an integer, got string '80'"),
        (12, 10, "invalid IP address '10.0.0.300'"),
    ]


def test_policy_in_inventory_is_an_error(tmp_path):
    (tmp_path / "np.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {}\n")
    with pytest.raises(PolcError, match="is a policy, not inventory"):
        load_inventory([tmp_path / "np.yaml"])


def test_starwars_inventory():
    inv = load_inventory([Path(__file__).parent.parent / "examples" / "starwars" / "cluster.yaml"])
    assert sorted(p.ref for p in inv.pods) == [
        "default/deathstar-1", "default/deathstar-2", "default/tiefighter", "default/xwing"]
    assert all(ip in ipaddress.ip_network("198.18.0.0/15") for p in inv.pods for ip in p.ips)
    assert [n.name for n in inv.nodes] == ["kind-worker"]
