"""Pieces shared by the policy frontends: the strict base model, label selectors, CIDRs,
and the translation of pydantic validation errors into positioned ``CompileError``s.

Models validate shape and types; cross-field rules (``except`` inside ``cidr``, one peer
kind per rule, ...) are checked in model validators that raise ``fail(...)``, which carries
the path of the offending field so the error can point at it.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..errors import CompileError, PolcError, UnsupportedError, raise_all
from ..source import Document

# --------------------------------------------------------------------------- errors


def fail(message: str, *path: str | int, key: bool = False, unsupported: bool = False) -> PydanticCustomError:
    """An error for a model validator to raise, about the field at ``path`` (relative)."""
    return PydanticCustomError(
        "polc_unsupported" if unsupported else "polc",
        "{message}",
        {"message": message, "polc_path": tuple(path), "polc_key": key},
    )


def unsupported(field: str, what: str) -> PydanticCustomError:
    """A positioned 'not supported yet' error pointing at the field's key."""
    return fail(f"{what} ('{field}') is not supported by polc yet", field, key=True, unsupported=True)


def _resolve(data: Any, loc: tuple) -> tuple:
    """Map a pydantic ``loc`` to a path in the YAML data, dropping union/validator tags."""
    path: list = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, dict) and isinstance(part, str) and not _is_tag(part):
            path.append(part)  # a missing or unknown key: keep it, positions fall back
            cur = None
    return tuple(path)


def _is_tag(part: str) -> bool:
    return "[" in part or part in ("int", "str", "bool", "float", "list", "dict", "none")


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)
    shown = repr(value) if not isinstance(value, (list, dict)) else ""
    return f"{kind} {shown}".strip()


_TYPE_NAMES = {
    "string_type": "a string", "int_type": "an integer", "bool_type": "true or false",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "int_from_float": "an integer",
}


def _message(err: dict) -> str:
    kind = err["type"]
    if kind.startswith("polc"):
        return err["ctx"]["message"]
    if kind == "missing":
        return f"missing required field '{err['loc'][-1]}'"
    if kind == "extra_forbidden":
        return f"unknown field '{err['loc'][-1]}'"
    if kind in _TYPE_NAMES:
        value = err.get("input")
        hint = " (quote it in YAML)" if kind == "string_type" and isinstance(value, (int, float, bool)) else ""
        return f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}{hint}"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    if kind == "literal_error":
        return f"invalid value {err.get('input')!r}: expected {err['ctx']['expected']}"
    return err["msg"]


def validation_errors(doc: Document, exc: ValidationError, base: tuple = ()) -> list[PolcError]:
    """Positioned errors for a pydantic ``ValidationError`` raised on data at ``base`` of ``doc``."""
    out: list[PolcError] = []
    seen: set = set()
    for err in exc.errors():
        ctx = err.get("ctx") or {}
        path = base + _resolve(_at(doc.data, base), tuple(err["loc"]))
        if err["type"] == "missing":
            path = path[:-1]
        path = path + tuple(ctx.get("polc_path", ()))
        key = ctx.get("polc_key", False) or err["type"] == "extra_forbidden"
        if path in seen:
            continue  # one error per place: a union reports each alternative
        seen.add(path)
        cls = UnsupportedError if err["type"] == "polc_unsupported" else CompileError
        out.append(doc.error(path, _message(err), key=key, cls=cls))
    return out


def _at(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


# --------------------------------------------------------------------------- base model


class Model(BaseModel):
    """Strict base: unknown fields are errors (with a did-you-mean), values keep their type."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _unknown_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = _known_keys(cls)
        if known is None:
            return data
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise fail(f"unknown field '{key}'{hint}", key, key=True)
        return data


@functools.cache
def _known_keys(model: type[Model]) -> tuple[str, ...] | None:
    """The keys ``model`` accepts (aliases where set), or None when it ignores unknown keys.

    Computed once per class: ``model_fields`` goes through pydantic's deprecation descriptor on
    every access, and this runs for every mapping of every policy.
    """
    if model.model_config.get("extra") != "forbid":
        return None
    return tuple(f.alias or name for name, f in model.model_fields.items())


# --------------------------------------------------------------------------- scalar types


def _int_or_str(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PydanticCustomError("polc", "{message}", {
            "message": f"expected an integer or a string, got {_describe(value)}"})
    return value


IntOrStr = Annotated[Union[int, str], BeforeValidator(_int_or_str)]
Str = StrictStr

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _label_value(value: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise PydanticCustomError("polc", "{message}", {"message": (
            f"invalid label value {value!r}: at most 63 characters, alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric")})
    return value


LabelValue = Annotated[StrictStr, AfterValidator(_label_value)]


def check_label_key(key: str) -> str | None:
    """Why ``key`` is not a valid Kubernetes label key, or None when it is."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return f"invalid label key {key!r}: the prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (f"invalid label key {key!r}: the name must be at most 63 characters, alphanumerics, "
                "'-', '_' or '.', starting and ending with an alphanumeric")
    return None


def check_dns_label(value: str, what: str) -> str | None:
    if len(value) > 63 or not _DNS1123_LABEL.match(value):
        return f"invalid {what} {value!r}: must be a DNS label (lowercase alphanumerics and '-')"
    return None


def check_dns_subdomain(value: str, what: str) -> str | None:
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value):
        return f"invalid {what} {value!r}: must be a DNS subdomain (lowercase alphanumerics, '-', '.')"
    return None


_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def check_port_name(name: str) -> str | None:
    """Why ``name`` is not an IANA service name (a named port), or None."""
    if (len(name) > 15 or not _SVC_NAME.match(name) or "--" in name
            or not re.search(r"[a-z]", name)):
        return (f"invalid port name {name!r}: a named port is at most 15 lowercase letters, digits "
                "and '-', with at least one letter")
    return None


# --------------------------------------------------------------------------- CIDRs


def parse_cidr(text: str, allow_bare_ip: bool) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse ``a.b.c.d/n`` (host bits are masked off, as Go's netip does when matching)."""
    if "/" not in text and not allow_bare_ip:
        raise ValueError(f"invalid CIDR {text!r}: expected address/prefix-length")
    addr, _, bits = text.partition("/")
    if "/" in text and not bits.isdigit():
        raise ValueError(f"invalid CIDR {text!r}: the prefix length must be a number")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"invalid CIDR {text!r}") from None


def validate_cidr_except(cidr_text: str, except_texts, strict: bool) -> None:
    """Model-validator check of a ``cidr`` with its ``except`` list (errors name the entry).

    ``strict``: Kubernetes wants each except a strict subset; Cilium accepts the cidr itself.
    """
    try:
        cidr = parse_cidr(cidr_text, allow_bare_ip=False)
    except ValueError as exc:
        raise fail(str(exc), "cidr")
    excepts = []
    for i, text in enumerate(except_texts or ()):
        try:
            excepts.append(parse_cidr(text, allow_bare_ip=False))
        except ValueError as exc:
            raise fail(str(exc), "except", i)
    bad = check_except(cidr, excepts, strict=strict)
    if bad:
        raise fail(bad[1], "except", bad[0])


def cidr_networks(cidr_text: str, except_texts) -> tuple:
    """The parsed ``(cidr, excepts)`` of a validated cidr/except pair."""
    return parse_cidr(cidr_text, False), tuple(parse_cidr(e, False) for e in except_texts or ())


def check_except(cidr, excepts: list, strict: bool) -> tuple[int, str] | None:
    """The index and reason of the first ``except`` entry not inside ``cidr``."""
    for i, exc in enumerate(excepts):
        if exc.version != cidr.version:
            return i, f"except {exc} is not the same address family as cidr {cidr}"
        if not exc.subnet_of(cidr) or (strict and exc.prefixlen <= cidr.prefixlen):
            subset = "a strict subset of" if strict else "inside"
            return i, f"except {exc} must be {subset} cidr {cidr}"
    return None


# --------------------------------------------------------------------------- selectors


Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


class LabelSelectorRequirement(Model):
    key: Str
    operator: Operator
    values: list[LabelValue] | None = None

    @model_validator(mode="after")
    def _values_match_operator(self):
        if self.operator in ("In", "NotIn") and not self.values:
            raise fail(f"operator {self.operator} needs a non-empty 'values' list", "operator")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise fail(f"operator {self.operator} must not have 'values'", "values", key=True)
        return self


class LabelSelector(Model):
    """A Kubernetes label selector (``matchLabels`` AND ``matchExpressions``)."""

    match_labels: dict[Str, LabelValue] | None = Field(None, alias="matchLabels")
    match_expressions: list[LabelSelectorRequirement] | None = Field(None, alias="matchExpressions")

    def keys(self) -> list[str]:
        keys = list(self.match_labels or {})
        keys += [r.key for r in self.match_expressions or ()]
        return keys


class ObjectMeta(Model):
    """The parts of ``metadata`` we use; the other standard fields are accepted and ignored."""

    name: Str | None = None
    namespace: Str | None = None
    labels: dict[Str, Str] | None = None
    annotations: dict[Str, Str] | None = None
    generate_name: Any = Field(None, alias="generateName")
    uid: Any = None
    resource_version: Any = Field(None, alias="resourceVersion")
    generation: Any = None
    creation_timestamp: Any = Field(None, alias="creationTimestamp")
    deletion_timestamp: Any = Field(None, alias="deletionTimestamp")
    deletion_grace_period_seconds: Any = Field(None, alias="deletionGracePeriodSeconds")
    managed_fields: Any = Field(None, alias="managedFields")
    finalizers: Any = None
    owner_references: Any = Field(None, alias="ownerReferences")
    self_link: Any = Field(None, alias="selfLink")

    @model_validator(mode="after")
    def _names(self):
        if not self.name:
            raise fail("missing required field 'name'", key=True)
        problem = check_dns_subdomain(self.name, "name")
        if problem:
            raise fail(problem, "name")
        if self.namespace is not None:
            problem = check_dns_label(self.namespace, "namespace")
            if problem:
                raise fail(problem, "namespace")
        return self


# --------------------------------------------------------------------------- loaded objects


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy object together with the document it came from."""

    kind: str
    namespace: str | None  # None for cluster-scoped kinds
    name: str
    model: Any
    doc: Document

    @property
    def ref(self) -> str:
        """``"CiliumNetworkPolicy default/rule1"`` (cluster-scoped: ``"Kind name"``)."""
        scoped = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {scoped}"


def validate(doc: Document, model: type[BaseModel]):
    """Validate ``doc.data`` against ``model``; raise positioned errors on failure."""
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        errors = validation_errors(doc, exc)
    raise_all(errors)
