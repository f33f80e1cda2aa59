"""Typed models of Kubernetes ``networking.k8s.io/v1`` NetworkPolicy.

Validation follows the API server (``pkg/apis/networking/validation``): one peer kind when
``ipBlock`` is used, ``except`` a strict subset of ``cidr``, ports 1..65535 or an IANA
service name, ``endPort`` only with a numeric ``port`` and not below it, label selector
operators with or without values as required.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .common import (
    IntOrStr, LabelSelector, Model, ObjectMeta, Str, cidr_networks, check_label_key, check_port_name,
    fail, validate_cidr_except,
)

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"


class K8sLabelSelector(LabelSelector):
    """A label selector whose keys must be valid Kubernetes label keys."""

    @model_validator(mode="after")
    def _keys(self):
        for key in self.match_labels or {}:
            problem = check_label_key(key)
            if problem:
                raise fail(problem, "matchLabels", key, key=True)
        for i, req in enumerate(self.match_expressions or ()):
            problem = check_label_key(req.key)
            if problem:
                raise fail(problem, "matchExpressions", i, "key")
        return self


class IPBlock(Model):
    cidr: Str
    except_: list[Str] | None = Field(None, alias="except")

    @model_validator(mode="after")
    def _cidrs(self):
        validate_cidr_except(self.cidr, self.except_, strict=True)
        return self

    def networks(self):
        """The parsed ``(cidr, excepts)``."""
        return cidr_networks(self.cidr, self.except_)


class NetworkPolicyPeer(Model):
    pod_selector: K8sLabelSelector | None = Field(None, alias="podSelector")
    namespace_selector: K8sLabelSelector | None = Field(None, alias="namespaceSelector")
    ip_block: IPBlock | None = Field(None, alias="ipBlock")

    @model_validator(mode="after")
    def _one_kind(self):
        if self.pod_selector is None and self.namespace_selector is None and self.ip_block is None:
            raise fail("a peer needs podSelector, namespaceSelector or ipBlock")
        if self.ip_block is not None and (self.pod_selector is not None or self.namespace_selector is not None):
            raise fail("ipBlock cannot be combined with podSelector or namespaceSelector in one peer; "
                       "use two peers", "ipBlock", key=True)
        return self


class NetworkPolicyPort(Model):
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None
    port: IntOrStr | None = None
    end_port: int | None = Field(None, alias="endPort", strict=True)

    @model_validator(mode="after")
    def _port(self):
        if isinstance(self.port, int) and not 1 <= self.port <= 65535:
            raise fail(f"port {self.port} is out of range 1..65535", "port")
        if isinstance(self.port, str):
            problem = check_port_name(self.port)
            if problem:
                raise fail(problem, "port")
        if self.end_port is not None:
            if not isinstance(self.port, int):
                raise fail("endPort needs a numeric port", "endPort", key=True)
            if not self.port <= self.end_port <= 65535:
                raise fail(f"endPort {self.end_port} must be between port {self.port} and 65535", "endPort")
        return self


class NetworkPolicyIngressRule(Model):
    from_: list[NetworkPolicyPeer] | None = Field(None, alias="from")
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicyEgressRule(Model):
    to: list[NetworkPolicyPeer] | None = None
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicySpec(Model):
    pod_selector: K8sLabelSelector | None = Field(None, alias="podSelector")
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None
    policy_types: list[Literal["Ingress", "Egress"]] | None = Field(None, alias="policyTypes")

    @model_validator(mode="after")
    def _unique_types(self):
        types = self.policy_types or []
        if len(set(types)) != len(types):
            raise fail("policyTypes lists a type twice", "policyTypes")
        return self

    def effective_policy_types(self) -> tuple[str, ...]:
        """``policyTypes``, defaulted as the API server does (``pkg/apis/networking/v1/defaults.go``)."""
        if self.policy_types:
            return tuple(t for t in ("Ingress", "Egress") if t in self.policy_types)
        return ("Ingress", "Egress") if self.egress else ("Ingress",)


class NetworkPolicy(Model):
    api_version: Literal["networking.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["NetworkPolicy"]
    metadata: ObjectMeta
    spec: NetworkPolicySpec = NetworkPolicySpec()
    status: Any = None
