"""A small Kubernetes API server double: core/v1 Namespaces and Services, discovery.k8s.io/v1 EndpointSlices.

Written from the Kubernetes API reference and API concepts documentation
(kubernetes.io/docs/reference/using-api/api-concepts/, .../kubernetes-api/).
Model: one store of objects keyed by (resource, namespace, name) (namespace ""
for Namespaces) and one cluster-wide resourceVersion counter that every write
increases; each write appends an event (ADDED, MODIFIED, DELETED) to a bounded
history. The namespaces default, kube-system, kube-public and kube-node-lease
exist from the start.

- list (namespaced, or across all namespaces: /api/v1/services,
  /apis/discovery.k8s.io/v1/endpointslices): `items` plus
  `metadata.resourceVersion`, filtered by `labelSelector` (=, ==, !=, in,
  notin, exists, !exists) and `fieldSelector` (metadata.name,
  metadata.namespace; spec.clusterIP, spec.type on Services; status.phase on
  Namespaces; others are 400), paged by `limit`/`continue` (the token is
  opaque; later pages are read from the current state, not a snapshot);
  `Accept: ...;as=Table` gets a meta.k8s.io/v1 Table as kubectl asks;
- get: 404 NotFound Status when absent;
- create (POST): 404 when the namespace does not exist, 409 AlreadyExists,
  `metadata.generateName` completed with 5 random characters; the server
  sets uid, resourceVersion, creationTimestamp, generation, and a Service's
  defaults (clusterIP, sessionAffinity, ipFamilies; a port's protocol and
  targetPort only with `port_defaults`, see there);
- replace (PUT): 404 when absent, 409 Conflict when a given
  metadata.resourceVersion is not the current one;
- patch (PATCH), by Content-Type: application/json-patch+json (RFC 6902),
  application/merge-patch+json (RFC 7386), application/strategic-merge-patch+json
  (lists with a patch merge key merged by it: Service spec.ports by `port`,
  metadata.ownerReferences by `uid`; `$patch: delete|replace`,
  `$deleteFromPrimitiveList/`, `$setElementOrder/` and `$retainKeys` honoured;
  other lists replaced), application/apply-patch+yaml (server-side apply:
  `fieldManager` required, a YAML or JSON body; creates when absent; merged as
  a strategic merge patch and recorded in managedFields; per-field ownership
  conflicts are not modelled); anything else 415;
- validation as the API server's, 422 Invalid with a Status naming each field
  in details.causes: names (DNS-1035 label for Services and Namespaces, DNS-1123
  subdomain for EndpointSlices), label keys and values; Service type, ports
  required (unless ExternalName or headless), port and targetPort ranges,
  protocols, port names required when more than one port and unique,
  duplicate port/protocol, clusterIP immutable; EndpointSlice addressType
  (IPv4, IPv6, FQDN; immutable), 1..100 addresses per endpoint, each valid
  for the addressType, port numbers and names;
- delete: 404 when absent, 409 Conflict when DeleteOptions.preconditions
  (uid, resourceVersion) do not match; a Service or Namespace delete answers
  the deleted object, an EndpointSlice delete a Status (as the API server's
  registries do); deleting a Namespace deletes what is in it (at once: there
  is no namespace controller to wait for);
- `dryRun=All` on create, replace, patch and delete: validated and answered,
  nothing stored; another dryRun value is 400;
- watch (`?watch=true`), namespaced or across namespaces: events after
  `resourceVersion` streamed as JSON lines (for "" or "0" the current objects
  first as ADDED); an object that stops matching the selectors is sent as
  DELETED, one that starts matching as ADDED, as the API server's watch cache
  does; a version older than the kept history gets an ERROR event with a 410
  Gone Status; the stream ends after `timeoutSeconds`.
- discovery: /version (every field of version.Info), /api, /api/v1, /apis,
  /apis/discovery.k8s.io/v1, and OpenAPI v3 (/openapi/v3 and one document per
  group version, listing the paths and their query parameters, no schemas)
  which kubectl reads to learn that the server validates fields itself;
  /openapi/v2 (protobuf, read by kubectl before 1.27 to validate) is not served.
- `authorized` records each resource request as RBAC sees it (verb, API
  group, resource, namespace), so a Role can be checked against a client.

Authentication: when `token` is set, `Authorization: Bearer <token>` is
required (401 otherwise). Faults come from HTTPDouble.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import yaml

from testbed.doubles.httpdouble import HTTPDouble, Reply, Request

HISTORY = 10_000
MAX_WATCH_S = 30.0
VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "gitCommit": "0" * 40, "gitTreeState": "clean",
           "buildDate": "2024-08-13T07:28:49Z", "goVersion": "go1.22.5", "compiler": "gc", "platform": "linux/amd64"}
INITIAL_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")


@dataclass(frozen=True)
class Res:
    prefix: str
    group: str
    kind: str
    namespaced: bool
    short: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"


RESOURCES = {
    "services": Res("/api/v1", "", "Service", True, ("svc",)),
    "endpointslices": Res("/apis/discovery.k8s.io/v1", "discovery.k8s.io", "EndpointSlice", True),
    "namespaces": Res("/api/v1", "", "Namespace", False, ("ns",)),
}
FIELD_LABELS = {"services": ("spec.clusterIP", "spec.type"), "endpointslices": (), "namespaces": ("status.phase",)}
MERGE_KEYS = {"spec.ports": "port", "metadata.ownerReferences": "uid"}  # strategic merge patch: patchMergeKey
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json", "application/apply-patch+yaml")
_PATH = re.compile(r"^(/api/v1|/apis/discovery\.k8s\.io/v1)(?:/namespaces/([^/]+))?/([a-z]+)(?:/([^/]+))?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_IANA_SVC = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_PROTOCOLS = ("SCTP", "TCP", "UDP")
_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand alphanumerics


def status(code: int, reason: str, message: str, name: str = "", kind: str = "", group: str = "",
           causes: list[dict[str, str]] | None = None) -> Reply:
    details: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    if causes:
        details["causes"] = causes
    return Reply(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": message, "reason": reason, "details": details, "code": code})


class Invalid(Exception):
    """Field errors, as field.ErrorList: each (cause reason, field path, message)."""

    def __init__(self, errors: list[tuple[str, str, str]]) -> None:
        super().__init__(errors)
        self.errors = errors


def _q(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


def required(path: str) -> tuple[str, str, str]:
    return ("FieldValueRequired", path, "Required value")


def invalid(path: str, value: Any, detail: str) -> tuple[str, str, str]:
    return ("FieldValueInvalid", path, f"Invalid value: {_q(value)}: {detail}")


def unsupported(path: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, str, str]:
    return ("FieldValueNotSupported", path,
            f"Unsupported value: {_q(value)}: supported values: " + ", ".join(json.dumps(a) for a in allowed))


def duplicate(path: str, value: Any) -> tuple[str, str, str]:
    return ("FieldValueDuplicate", path, f"Duplicate value: {_q(value)}")


def invalid_status(res: Res, name: str, errors: list[tuple[str, str, str]]) -> Reply:
    texts = [f"{f}: {m}" for _, f, m in errors]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return status(422, "Invalid", f'{res.kind} "{name}" is invalid: {joined}', name, res.kind, res.group,
                  [{"reason": r, "message": m, "field": f} for r, f, m in errors])


# --- selectors -------------------------------------------------------------------
_REQ = re.compile(r"\s*(!?)\s*([A-Za-z0-9./_-]+)(?:\s*(==|!=|=)\s*([A-Za-z0-9._-]*)|\s+(in|notin)\s*(\([^)]*\)))?\s*")


def parse_selector(text: str) -> list[tuple[str, str, Any]]:
    """A label selector -> [(op, key, value)], op in =, !=, in, notin, exists, !exists. ValueError if malformed."""
    out: list[tuple[str, str, Any]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _REQ.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"unable to parse requirement: {text[pos:]!r}")
        neg, key, op, val, set_op, values = m.groups()
        if neg and (op or set_op):
            raise ValueError(f"unable to parse requirement: {m.group(0)!r}")
        if set_op:
            out.append((set_op, key, {v.strip() for v in values[1:-1].split(",") if v.strip()}))
        elif op:
            out.append(("!=" if op == "!=" else "=", key, val))
        else:
            out.append(("!exists" if neg else "exists", key, None))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"unable to parse requirement: found {text[pos]!r}, expected ','")
            pos += 1
    return out


def matches(obj: dict[str, Any], selector: list[tuple[str, str, Any]]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for op, k, v in selector:
        have = labels.get(k)
        if (op == "=" and have != v) or (op == "!=" and have == v) or (op == "exists" and k not in labels) \
                or (op == "!exists" and k in labels) or (op == "in" and have not in v) \
                or (op == "notin" and have in v):
            return False
    return True


def _field(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def parse_field_selector(resource: str, text: str) -> list[tuple[str, str, str]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.match(r"^([A-Za-z0-9.]+)\s*(==|=|!=)\s*(.*)$", part)
        if not m:
            raise ValueError(f"invalid selector: '{text}'; can't understand '{part}'")
        key, op, val = m.groups()
        if key not in ("metadata.name", "metadata.namespace") + FIELD_LABELS[resource]:
            raise ValueError(f'field label not supported: {key}')
        out.append(("!=" if op == "!=" else "=", key, val))
    return out


def field_matches(obj: dict[str, Any], selector: list[tuple[str, str, str]]) -> bool:
    return all((_field(obj, k) == v) == (op == "=") for op, k, v in selector)


# --- patches -----------------------------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


class PatchError(Exception):
    """A patch that cannot be applied: (HTTP code, message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def strategic_merge(cur: Any, patch: Any, path: str = "") -> Any:
    """Strategic merge patch: maps merged, lists with a patch merge key merged by it, other lists replaced."""
    if isinstance(patch, dict) and patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if not isinstance(patch, dict) or not isinstance(cur, dict):
        return _strip_directives(patch)
    result = dict(cur)
    retain = patch.get("$retainKeys")
    for k, v in patch.items():
        if k in ("$retainKeys", "$patch") or k.startswith("$setElementOrder/"):
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            f = k.split("/", 1)[1]
            result[f] = [x for x in result.get(f) or [] if x not in (v or [])]
            continue
        sub = f"{path}.{k}" if path else k
        if v is None or (isinstance(v, dict) and v.get("$patch") == "delete"):
            result.pop(k, None)
        elif isinstance(v, list) and sub in MERGE_KEYS:
            result[k] = _merge_list(result.get(k) or [], v, MERGE_KEYS[sub], sub)
        else:
            result[k] = strategic_merge(result.get(k), v, sub)
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(cur: list[Any], patch: list[Any], key: str, path: str) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [_strip_directives(p) for p in patch if not (isinstance(p, dict) and p.get("$patch") == "replace")]
    out = [copy.deepcopy(c) for c in cur]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(400, f"map: {item} does not contain declared merge key: {key}")
        at = next((i for i, c in enumerate(out) if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if at is not None:
                del out[at]
        elif at is None:
            out.append(_strip_directives(item))
        else:
            out[at] = strategic_merge(out[at], item, path)
    return out


def _strip_directives(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip_directives(x) for k, x in v.items() if not k.startswith("$")}
    if isinstance(v, list):
        return [_strip_directives(x) for x in v]
    return copy.deepcopy(v)


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(ops, list):
        raise PatchError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)

    def parts(pointer: str) -> list[str]:
        if pointer == "":
            return []
        if not pointer.startswith("/"):
            raise PatchError(422, f"invalid JSON pointer: {pointer!r}")
        return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]

    def parent(pointer: str) -> tuple[Any, str]:
        ps = parts(pointer)
        if not ps:
            raise PatchError(422, "the root cannot be patched here")
        cur = doc
        for p in ps[:-1]:
            cur = _child(cur, p, pointer)
        return cur, ps[-1]

    def get(pointer: str) -> Any:
        cur = doc
        for p in parts(pointer):
            cur = _child(cur, p, pointer)
        return cur

    def add(pointer: str, value: Any) -> None:
        c, last = parent(pointer)
        if isinstance(c, dict):
            c[last] = value
        elif isinstance(c, list):
            i = len(c) if last == "-" else _index(last, len(c) + 1, pointer)
            c.insert(i, value)
        else:
            raise PatchError(422, f"doc is missing path: {pointer!r}")

    def remove(pointer: str) -> Any:
        c, last = parent(pointer)
        if isinstance(c, dict):
            if last not in c:
                raise PatchError(422, f"Unable to remove nonexistent key: {last}: missing value")
            return c.pop(last)
        if isinstance(c, list):
            return c.pop(_index(last, len(c), pointer))
        raise PatchError(422, f"doc is missing path: {pointer!r}")

    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(400, f"invalid JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            add(path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            remove(path)
        elif kind == "replace":
            get(path)  # must exist
            c, last = parent(path)
            if isinstance(c, dict):
                c[last] = copy.deepcopy(op.get("value"))
            else:
                c[_index(last, len(c), path)] = copy.deepcopy(op.get("value"))
        elif kind == "move":
            add(path, remove(op["from"]))
        elif kind == "copy":
            add(path, copy.deepcopy(get(op["from"])))
        elif kind == "test":
            if get(path) != op.get("value"):
                raise PatchError(422, f"testing value {path} failed: test failed")
        else:
            raise PatchError(400, f"Unexpected kind: {kind}")
    return doc


def _index(p: str, n: int, pointer: str) -> int:
    if not p.isdigit() or int(p) >= n:
        raise PatchError(422, f"Unable to access invalid index: {p}: invalid index referenced ({pointer})")
    return int(p)


def _child(cur: Any, p: str, pointer: str) -> Any:
    if isinstance(cur, dict) and p in cur:
        return cur[p]
    if isinstance(cur, list):
        return cur[_index(p, len(cur), pointer)]
    raise PatchError(422, f"doc is missing path: {pointer!r}: missing value")


# --- validation -----------------------------------------------------------------
def _label_key_errors(path: str, key: str) -> list[tuple[str, str, str]]:
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix))) or len(name) > 63 \
            or not _QUALIFIED.match(name):
        return [invalid(path, key, "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                        "start and end with an alphanumeric character (regex used for validation is "
                        "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")]
    return []


def validate_meta(res: Res, md: dict[str, Any]) -> list[tuple[str, str, str]]:
    errs: list[tuple[str, str, str]] = []
    name = md.get("name") or ""
    if not name:
        errs.append(("FieldValueRequired", "metadata.name", "Required value: name or generateName is required"))
    elif res.kind in ("Service", "Namespace"):
        pattern, label = (_DNS1035_LABEL, "DNS-1035") if res.kind == "Service" else (_DNS1123_LABEL, "RFC 1123")
        if len(name) > 63 or not pattern.match(name):
            errs.append(invalid("metadata.name", name, f"a {label} label must consist of lower case alphanumeric "
                                "characters or '-', and must start and end with an alphanumeric character"))
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        errs.append(invalid("metadata.name", name, "a lowercase RFC 1123 subdomain must consist of lower case "
                            "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                            "character"))
    labels = md.get("labels") or {}
    if not isinstance(labels, dict):
        return errs + [invalid("metadata.labels", labels, "must be a map of strings")]
    for k, v in labels.items():
        errs += _label_key_errors("metadata.labels", k)
        if not isinstance(v, str) or len(v) > 63 or (v and not _QUALIFIED.match(v)):
            errs.append(invalid("metadata.labels", v, "a valid label must be an empty string or consist of "
                                "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                "alphanumeric character"))
    for k in md.get("annotations") or {}:
        errs += _label_key_errors("metadata.annotations", k)
    return errs


def _port_num_errors(path: str, port: Any) -> list[tuple[str, str, str]]:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        return [invalid(path, port, "must be between 1 and 65535, inclusive")]
    return []


def validate_service(obj: dict[str, Any], old: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    errs: list[tuple[str, str, str]] = []
    spec = obj.get("spec") or {}
    stype = spec.get("type", "ClusterIP")
    types = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
    if stype not in types:
        errs.append(unsupported("spec.type", stype, types))
    ports = spec.get("ports") or []
    headless = spec.get("clusterIP") == "None"
    if not ports and stype != "ExternalName" and not headless:
        errs.append(required("spec.ports"))
    if stype == "ExternalName" and not spec.get("externalName"):
        errs.append(required("spec.externalName"))
    names: set[str] = set()
    seen: set[tuple[Any, str]] = set()
    for i, p in enumerate(ports):
        at = f"spec.ports[{i}]"
        name = p.get("name") or ""
        if len(ports) > 1 and not name:
            errs.append(required(f"{at}.name"))
        elif name:
            if len(name) > 63 or not _DNS1123_LABEL.match(name):
                errs.append(invalid(f"{at}.name", name, "a lowercase RFC 1123 label must consist of lower case "
                                    "alphanumeric characters or '-'"))
            elif name in names:
                errs.append(duplicate(f"{at}.name", name))
            names.add(name)
        errs += _port_num_errors(f"{at}.port", p.get("port"))
        proto = p.get("protocol", "TCP")
        if proto not in _PROTOCOLS:
            errs.append(unsupported(f"{at}.protocol", proto, _PROTOCOLS))
        tp = p.get("targetPort")
        if isinstance(tp, str):
            if len(tp) > 15 or not _IANA_SVC.match(tp) or "--" in tp or not re.search("[a-z]", tp):
                errs.append(invalid(f"{at}.targetPort", tp, "must contain only alpha-numeric characters (a-z, "
                                    "0-9), and hyphens (-), at most 15 characters and at least one letter"))
        elif tp is not None:
            errs += _port_num_errors(f"{at}.targetPort", tp)
        if (p.get("port"), proto) in seen:
            errs.append(duplicate(at, {"port": p.get("port"), "protocol": proto}))
        seen.add((p.get("port"), proto))
    if old is not None:
        old_ip = (old.get("spec") or {}).get("clusterIP")
        new_ip = spec.get("clusterIP")
        if new_ip not in (None, "") and new_ip != old_ip:
            errs.append(invalid("spec.clusterIP", new_ip, "field is immutable"))
    return errs


def validate_slice(obj: dict[str, Any], old: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    errs: list[tuple[str, str, str]] = []
    types = ("FQDN", "IPv4", "IPv6")
    at = obj.get("addressType")
    if not at:
        errs.append(required("addressType"))
    elif at not in types:
        errs.append(unsupported("addressType", at, types))
    if old is not None and at != old.get("addressType"):
        errs.append(invalid("addressType", at, "field is immutable"))
    eps = obj.get("endpoints") or []  # may be empty
    if len(eps) > 1000:
        errs.append(("FieldValueTooMany", "endpoints", f"Too many: {len(eps)}: must have at most 1000 items"))
    for i, ep in enumerate(eps):
        addrs = ep.get("addresses") or []
        if not addrs:
            errs.append(required(f"endpoints[{i}].addresses"))
        elif len(addrs) > 100:
            errs.append(("FieldValueTooMany", f"endpoints[{i}].addresses",
                         f"Too many: {len(addrs)}: must have at most 100 items"))
        for j, a in enumerate(addrs):
            path = f"endpoints[{i}].addresses[{j}]"
            if at in ("IPv4", "IPv6"):
                try:
                    ok = ipaddress.ip_address(a).version == (4 if at == "IPv4" else 6)
                except (ValueError, TypeError):
                    ok = False
                if not ok:
                    errs.append(invalid(path, a, f"must be a valid {at} address"))
            elif at == "FQDN" and (not isinstance(a, str) or len(a) > 253 or not _DNS1123_SUBDOMAIN.match(a)):
                errs.append(invalid(path, a, "a lowercase RFC 1123 subdomain must consist of lower case "
                                    "alphanumeric characters, '-' or '.'"))
    ports = obj.get("ports") or []
    if len(ports) > 100:
        errs.append(("FieldValueTooMany", "ports", f"Too many: {len(ports)}: must have at most 100 items"))
    names: set[str] = set()
    for i, p in enumerate(ports):
        name = p.get("name") or ""
        if name and (len(name) > 63 or not _DNS1123_LABEL.match(name)):
            errs.append(invalid(f"ports[{i}].name", name, "a lowercase RFC 1123 label must consist of lower case "
                                "alphanumeric characters or '-'"))
        if name in names:
            errs.append(duplicate(f"ports[{i}].name", name))
        names.add(name)
        if p.get("port") is not None:
            errs += _port_num_errors(f"ports[{i}].port", p["port"])
        proto = p.get("protocol", "TCP")
        if proto not in _PROTOCOLS:
            errs.append(unsupported(f"ports[{i}].protocol", proto, _PROTOCOLS))
    return errs


VALIDATORS: dict[str, Callable[[dict[str, Any], dict[str, Any] | None], list[tuple[str, str, str]]]] = {
    "services": validate_service, "endpointslices": validate_slice, "namespaces": lambda obj, old: []}


def _age(created: str) -> str:
    try:
        s = max(0, int(time.time() - time.mktime(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) + time.timezone))
    except (ValueError, TypeError):
        return "<unknown>"
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= 2 * n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _columns(resource: str, obj: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Table columns and cells, as the API server's printers answer kubectl."""
    def col(name: str, typ: str = "string", priority: int = 0, fmt: str = "") -> dict[str, Any]:
        return {"name": name, "type": typ, "format": fmt, "description": name, "priority": priority}

    md = obj.get("metadata") or {}
    age = _age(md.get("creationTimestamp", ""))
    if resource == "services":
        spec = obj.get("spec") or {}
        ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []) or "<none>"
        sel = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items())) or "<none>"
        return ([col("Name", fmt="name"), col("Type"), col("Cluster-IP"), col("External-IP"), col("Port(s)"),
                 col("Age"), col("Selector", priority=1)],
                [md.get("name"), spec.get("type"), spec.get("clusterIP") or "<none>", "<none>", ports, age, sel])
    if resource == "endpointslices":
        ports = ",".join(str(p.get("port")) for p in obj.get("ports") or []) or "<unset>"
        addrs = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
        return ([col("Name", fmt="name"), col("AddressType"), col("Ports"), col("Endpoints"), col("Age")],
                [md.get("name"), obj.get("addressType"), ports, ",".join(addrs) or "<unset>", age])
    return ([col("Name", fmt="name"), col("Status"), col("Age")],
            [md.get("name"), (obj.get("status") or {}).get("phase", ""), age])


@dataclass(frozen=True)
class AuthzRequest:
    """What the API server's authorizer is asked about one resource request (RBAC's terms)."""

    verb: str
    api_group: str
    resource: str
    namespace: str


def rbac_verb(method: str, name: str | None, query: dict[str, str]) -> str:
    """The RBAC verb of a request, as the API server's request-info resolver names it."""
    if method == "GET":
        if name is not None:
            return "get"
        return "watch" if query.get("watch") in ("true", "1") else "list"
    if method == "DELETE" and name is None:
        return "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


class KubernetesDouble(HTTPDouble):
    # The API server defaults a Service port's protocol (TCP) and targetPort (its port). Off by
    # default only because tests/integration/test_meshd_sync.py compares a hand-made Service's
    # ports with what it put; the contract suite turns it on and checks it against real clusters.
    port_defaults = False

    def __init__(self, token: str | None = None, history: int = HISTORY) -> None:
        super().__init__()
        self.token = token
        self.history = history  # events kept for watches; older versions get 410 Gone
        self.lists: dict[str, int] = {}  # list calls per resource (watches not counted)
        # Every resource request as RBAC sees it, for checking a Role against what a client does.
        self.authorized: list[AuthzRequest] = []
        self.rv = 1
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, str, dict[str, Any], dict[str, Any] | None]] = []
        self._ip = 0
        for ns in INITIAL_NAMESPACES:
            reply = self._create("namespaces", "", {"metadata": {"name": ns}}, dry=False)
            assert reply.status == 201, reply.body

    def reset_counters(self) -> None:
        super().reset_counters()
        with self.lock:
            self.lists.clear()
            self.authorized.clear()

    def is_exempt(self, path: str) -> bool:
        # Discovery documents are exempt from faults; every resource path is an API call.
        p = path.rstrip("/")
        return p in ("/version", "/api", "/api/v1", "/apis", "/apis/discovery.k8s.io",
                     "/apis/discovery.k8s.io/v1") or p == "/openapi/v3" or p.startswith("/openapi/")

    def fault_reply(self, req: Request, status_code: int) -> Reply:
        reason = {409: "Conflict", 500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests"}
        return status(status_code, reason.get(status_code, "InternalError"), f"injected fault {status_code}")

    # --- routing -------------------------------------------------------------
    def route(self, req: Request) -> Reply:
        if self.token is not None and req.headers.get("authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        p = req.path.rstrip("/") or "/"
        if req.method == "GET":
            disc = self._discovery(p)
            if disc is not None:
                return disc
        m = _PATH.match(p)
        res = RESOURCES.get(m.group(3)) if m else None
        if not m or res is None or res.prefix != m.group(1) or (m.group(2) is not None and not res.namespaced) \
                or (res.namespaced and m.group(2) is None and m.group(4) is not None):
            return status(404, "NotFound", "the server could not find the requested resource")
        _, ns, resource, name = m.groups()
        with self.lock:
            self.authorized.append(AuthzRequest(rbac_verb(req.method, name, req.query), res.group, resource,
                                                ns or ""))
        dry_values = [v for k, v in req.query_list if k == "dryRun"]
        bad = [v for v in dry_values if v != "All"]
        if bad:
            return status(400, "BadRequest", f"Invalid dry run value: {bad!r}: supported values: All")
        dry = bool(dry_values)
        if name is None:
            if req.method == "GET":
                try:
                    lsel = parse_selector(req.query.get("labelSelector", ""))
                    fsel = parse_field_selector(resource, req.query.get("fieldSelector", ""))
                except ValueError as e:
                    return status(400, "BadRequest", str(e))
                if req.query.get("watch") in ("true", "1"):
                    return self._watch(resource, ns, lsel, fsel, req)
                return self._list(resource, ns, lsel, fsel, req)
            if req.method == "POST" and (ns is not None or not res.namespaced):
                body, err = self._body(req)
                return err or self._create(resource, ns or "", body, dry)
            return status(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                                                   f"resource ({req.method})")
        key = (resource, ns or "", name)
        if req.method == "GET":
            with self.lock:
                obj = self.objects.get(key)
                if obj is None:
                    return self._not_found(resource, name)
                if "as=Table" in req.headers.get("accept", ""):
                    return Reply(200, self._table(resource, [obj], {"resourceVersion": str(self.rv)}, req))
                return Reply(200, copy.deepcopy(obj))
        if req.method == "PUT":
            body, err = self._body(req)
            return err or self._update(key, body, dry)
        if req.method == "PATCH":
            return self._patch(key, req, dry)
        if req.method == "DELETE":
            options, err = self._body(req) if req.body else ({}, None)
            if err:
                return err
            if isinstance(options, dict) and "All" in (options.get("dryRun") or []):
                dry = True
            return self._delete(key, options, dry)
        return status(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                                               f"resource ({req.method})")

    @staticmethod
    def _body(req: Request) -> tuple[Any, Reply | None]:
        try:
            return json.loads(req.body or b"null"), None
        except ValueError as e:
            return None, status(400, "BadRequest", f"the body of the request could not be decoded: {e}")

    @staticmethod
    def _not_found(resource: str, name: str) -> Reply:
        return status(404, "NotFound", f'{resource} "{name}" not found', name, resource,
                      RESOURCES[resource].group)

    def _discovery(self, p: str) -> Reply | None:
        if p == "/version":
            return Reply(200, dict(VERSION))
        if p == "/api":
            return Reply(200, {"kind": "APIVersions", "versions": ["v1"],
                               "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                               "serverAddress": "127.0.0.1"}]})
        gv = {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
        group = {"name": "discovery.k8s.io", "versions": [gv], "preferredVersion": gv}
        if p == "/apis":
            return Reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]})
        if p == "/apis/discovery.k8s.io":
            return Reply(200, {"kind": "APIGroup", "apiVersion": "v1", **group})
        for prefix, group_version in (("/api/v1", "v1"), ("/apis/discovery.k8s.io/v1", "discovery.k8s.io/v1")):
            if p == prefix:
                return Reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                                   "resources": [self._api_resource(r, res) for r, res in RESOURCES.items()
                                                 if res.prefix == prefix]})
        if p == "/openapi/v3":
            return Reply(200, {"paths": {
                "api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=" + "0" * 32},
                "apis/discovery.k8s.io/v1": {"serverRelativeURL": "/openapi/v3/apis/discovery.k8s.io/v1?hash="
                                             + "1" * 32}}})
        if p in ("/openapi/v3/api/v1", "/openapi/v3/apis/discovery.k8s.io/v1"):
            return Reply(200, self._openapi(p[len("/openapi/v3"):]))
        return None

    @staticmethod
    def _api_resource(resource: str, res: Res) -> dict[str, Any]:
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        if resource == "endpointslices":
            verbs.insert(1, "deletecollection")
        out: dict[str, Any] = {"name": resource, "singularName": res.kind.lower(), "namespaced": res.namespaced,
                               "kind": res.kind, "verbs": verbs}
        if res.short:
            out["shortNames"] = list(res.short)
        return out

    @staticmethod
    def _openapi(prefix: str) -> dict[str, Any]:
        """An OpenAPI v3 document for one group version: paths, operations and query parameters (no schemas)."""
        def param(name: str) -> dict[str, Any]:
            return {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}

        def op(verb: str, res: Res, action: str, params: list[str]) -> dict[str, Any]:
            return {"operationId": f"{verb}{res.kind}", "parameters": [param(n) for n in params],
                    "responses": {"200": {"description": "OK"}}, "x-kubernetes-action": action,
                    "x-kubernetes-group-version-kind": {"group": res.group, "version": "v1", "kind": res.kind}}

        write = ["dryRun", "fieldManager", "fieldValidation", "pretty"]
        read = ["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "timeoutSeconds",
                "watch", "allowWatchBookmarks", "pretty"]
        paths: dict[str, Any] = {}
        for resource, res in RESOURCES.items():
            if res.prefix != prefix:
                continue
            base = f"{prefix}/namespaces/{{namespace}}/{resource}" if res.namespaced else f"{prefix}/{resource}"
            paths[base] = {"get": op("list", res, "list", read), "post": op("create", res, "post", write)}
            paths[base + "/{name}"] = {
                "get": op("read", res, "get", ["pretty"]), "put": op("replace", res, "put", write),
                "patch": op("patch", res, "patch", write + ["force"]),
                "delete": op("delete", res, "delete", ["dryRun", "gracePeriodSeconds", "propagationPolicy"])}
            if res.namespaced:
                paths[f"{prefix}/{resource}"] = {"get": op("list", res, "list", read)}
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]},
                "paths": paths, "components": {"schemas": {}}}

    # --- store ---------------------------------------------------------------
    def _emit(self, etype: str, resource: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.events.append((self.rv, resource, etype, copy.deepcopy(obj), old))
        if len(self.events) > self.history:
            del self.events[: len(self.events) - self.history]
        self.changed.notify_all()

    def _stamp(self, resource: str, ns: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        res = RESOURCES[resource]
        obj["kind"], obj["apiVersion"] = res.kind, res.api_version
        md = obj.setdefault("metadata", {})
        if res.namespaced:
            md["namespace"] = ns
        md["resourceVersion"] = str(self.rv)

    def _selects(self, key: tuple[str, str, str], resource: str, ns: str | None, obj: dict[str, Any],
                 lsel: list[tuple[str, str, Any]], fsel: list[tuple[str, str, str]]) -> bool:
        return key[0] == resource and (ns is None or key[1] == ns) and matches(obj, lsel) \
            and field_matches(obj, fsel)

    def _snapshot(self, at: int) -> dict[tuple[str, str, str], dict[str, Any]] | None:
        """The store as it was at resourceVersion `at`, from the event history (None: history too short)."""
        objs = dict(self.objects)
        for rv, resource, etype, obj, old in reversed(self.events):
            if rv <= at:
                return objs
            md = obj["metadata"]
            key = (resource, md.get("namespace", ""), md["name"])
            if etype == "ADDED":
                objs.pop(key, None)
            else:
                objs[key] = old  # type: ignore[assignment]
        oldest = self.events[0][0] if self.events else self.rv + 1
        return objs if at >= oldest - 1 or len(self.events) < self.history else None

    def _list(self, resource: str, ns: str | None, lsel: list[tuple[str, str, Any]],
              fsel: list[tuple[str, str, str]], req: Request) -> Reply:
        res = RESOURCES[resource]
        try:
            limit = int(req.query.get("limit") or 0)
        except ValueError:
            return status(400, "BadRequest", f"invalid limit: {req.query.get('limit')!r}")
        with self.lock:
            self.lists[resource] = self.lists.get(resource, 0) + 1
            at, start = self.rv, None
            objs: dict[tuple[str, str, str], dict[str, Any]] | None = self.objects
            if req.query.get("continue"):
                try:
                    token = json.loads(base64.urlsafe_b64decode(req.query["continue"].encode()))
                    at, start = int(token["rv"]), tuple(token["start"])
                except (ValueError, KeyError, TypeError):
                    return status(400, "BadRequest", "continue key is not valid: incorrect encoded start "
                                                     "resourceVersion (version meta.k8s.io/v1)")
                objs = self._snapshot(at)
                if objs is None:
                    return status(410, "Expired", "The provided continue parameter is too old to display a "
                                                  "consistent list result. You can start a new list without the "
                                                  "continue parameter.")
            items = [(k, o) for k, o in sorted(objs.items()) if self._selects(k, resource, ns, o, lsel, fsel)
                     and (start is None or (k[1], k[2]) >= start)]
            meta: dict[str, Any] = {"resourceVersion": str(at)}
            if limit > 0 and len(items) > limit:
                nxt = items[limit][0]
                meta["continue"] = base64.urlsafe_b64encode(json.dumps(
                    {"rv": at, "start": [nxt[1], nxt[2]]}).encode()).decode()
                meta["remainingItemCount"] = len(items) - limit
                items = items[:limit]
            out = [copy.deepcopy(o) for _, o in items]
            if "as=Table" in req.headers.get("accept", ""):
                return Reply(200, self._table(resource, out, meta, req))
            return Reply(200, {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta,
                               "items": out})

    @staticmethod
    def _table(resource: str, objs: list[dict[str, Any]], meta: dict[str, Any], req: Request) -> dict[str, Any]:
        include = req.query.get("includeObject", "Metadata")
        rows: list[dict[str, Any]] = []
        cols: list[dict[str, Any]] = _columns(resource, {})[0]
        for o in objs:
            cols, cells = _columns(resource, o)
            row: dict[str, Any] = {"cells": cells}
            if include == "Object":
                row["object"] = o
            elif include != "None":
                row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                 "metadata": o.get("metadata") or {}}
            rows.append(row)
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": cols,
                "rows": rows}

    def _defaults(self, resource: str, obj: dict[str, Any]) -> None:
        """What the API server's defaulting fills in on decode."""
        if resource == "services":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if spec["type"] != "ExternalName":
                spec.setdefault("sessionAffinity", "None")
                spec.setdefault("internalTrafficPolicy", "Cluster")
            for p in spec.get("ports") or [] if self.port_defaults else []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")
                    if "targetPort" not in p and p.get("port") is not None:
                        p["targetPort"] = p["port"]
            obj.setdefault("status", {"loadBalancer": {}})
        elif resource == "endpointslices":
            for p in obj.get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")
        elif resource == "namespaces":
            md = obj.setdefault("metadata", {})
            md.setdefault("labels", {})["kubernetes.io/metadata.name"] = md.get("name", "")
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}

    def _validate(self, resource: str, obj: dict[str, Any], old: dict[str, Any] | None) -> Reply | None:
        res = RESOURCES[resource]
        md = obj.get("metadata")
        if not isinstance(md, dict):
            return status(400, "BadRequest", "metadata must be an object")
        errs = validate_meta(res, md) + VALIDATORS[resource](obj, old)
        return invalid_status(res, md.get("name") or "", errs) if errs else None

    def _create(self, resource: str, ns: str, body: Any, dry: bool) -> Reply:
        res = RESOURCES[resource]
        if not isinstance(body, dict):
            return status(400, "BadRequest", "the body of the request must be an object")
        if body.get("kind") not in (None, "", res.kind) or body.get("apiVersion") not in (None, "", res.api_version):
            return status(400, "BadRequest", f"the API version in the data ({body.get('apiVersion')}) does not match "
                                             f"the expected API version ({res.api_version})")
        md_ns = (body.get("metadata") or {}).get("namespace")
        if res.namespaced and md_ns and md_ns != ns:
            return status(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                             "sent on the request")
        with self.changed:
            obj = copy.deepcopy(body)
            md = obj.setdefault("metadata", {})
            if not md.get("name") and md.get("generateName"):
                for _ in range(8):
                    md["name"] = md["generateName"][:58] + "".join(random.choices(_SUFFIX_CHARS, k=5))
                    if (resource, ns, md["name"]) not in self.objects:
                        break
            self._defaults(resource, obj)
            bad = self._validate(resource, obj, None)
            if bad:
                return bad
            name = md["name"]
            if res.namespaced and ("namespaces", "", ns) not in self.objects:
                return status(404, "NotFound", f'namespaces "{ns}" not found', ns, "namespaces")
            key = (resource, ns, name)
            if key in self.objects:
                return status(409, "AlreadyExists", f'{resource} "{name}" already exists', name, resource, res.group)
            for k in ("resourceVersion", "deletionTimestamp", "selfLink"):
                md.pop(k, None)
            md["uid"] = str(uuid.uuid4())
            md["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            md["generation"] = 1
            if resource == "services":
                spec = obj["spec"]
                if spec["type"] != "ExternalName" and not spec.get("clusterIP"):
                    if not dry:
                        self._ip += 1
                    n = self._ip + (1 if dry else 0)
                    spec["clusterIP"] = f"10.43.{n // 250}.{n % 250 + 2}"
                if spec.get("clusterIP"):
                    spec["clusterIPs"] = [spec["clusterIP"]]
                    if spec["clusterIP"] != "None":
                        spec.setdefault("ipFamilies", ["IPv4"])
                        spec.setdefault("ipFamilyPolicy", "SingleStack")
            if dry:
                obj["kind"], obj["apiVersion"] = res.kind, res.api_version
                if res.namespaced:
                    md["namespace"] = ns
                return Reply(201, obj)
            self._stamp(resource, ns, obj)
            self.objects[key] = obj
            self._emit("ADDED", resource, obj, None)
            return Reply(201, copy.deepcopy(obj))

    def _update(self, key: tuple[str, str, str], body: Any, dry: bool) -> Reply:
        resource, _, name = key
        if not isinstance(body, dict):
            return status(400, "BadRequest", "the body of the request must be an object")
        with self.changed:
            cur = self.objects.get(key)
            if cur is None:
                return self._not_found(resource, name)
            return self._commit(key, cur, copy.deepcopy(body), dry)

    def _commit(self, key: tuple[str, str, str], cur: dict[str, Any], new: dict[str, Any], dry: bool) -> Reply:
        """Store `new` in place of `cur` (the lock is held): version check, defaults, validation."""
        resource, ns, name = key
        res = RESOURCES[resource]
        want_rv = (new.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != cur["metadata"]["resourceVersion"]:
            return status(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": the object '
                          "has been modified; please apply your changes to the latest version and try again",
                          name, resource, res.group)
        md = new.setdefault("metadata", {})
        if not isinstance(md, dict):
            return status(400, "BadRequest", "metadata must be an object")
        if md.get("name", name) != name:
            return status(400, "BadRequest", "the name of the object does not match the name on the URL")
        if res.namespaced and md.get("namespace", ns) != ns:
            return status(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                             "sent on the request")
        md["name"] = name
        for k in ("uid", "creationTimestamp"):
            md[k] = cur["metadata"][k]
        if resource == "services":
            old_ip = cur.get("spec", {}).get("clusterIP")
            spec = new.setdefault("spec", {})
            if spec.get("clusterIP") in (None, ""):
                spec["clusterIP"] = old_ip
                if old_ip:
                    spec["clusterIPs"] = [old_ip]
            for k in ("ipFamilies", "ipFamilyPolicy"):
                if k in cur.get("spec", {}):
                    spec.setdefault(k, cur["spec"][k])
        self._defaults(resource, new)
        bad = self._validate(resource, new, cur)
        if bad:
            return bad
        new["kind"], new["apiVersion"] = res.kind, res.api_version
        if res.namespaced:
            md["namespace"] = ns
        new_cmp, cur_cmp = dict(new), dict(cur)
        new_cmp["metadata"] = {k: v for k, v in md.items() if k not in ("resourceVersion", "generation")}
        cur_cmp["metadata"] = {k: v for k, v in cur["metadata"].items() if k not in ("resourceVersion", "generation")}
        if new_cmp == cur_cmp:  # a no-op update does not change resourceVersion
            return Reply(200, copy.deepcopy(cur))
        md["generation"] = cur["metadata"].get("generation", 1) + 1
        if dry:
            md["resourceVersion"] = cur["metadata"]["resourceVersion"]
            return Reply(200, new)
        self._stamp(resource, ns, new)
        self.objects[key] = new
        self._emit("MODIFIED", resource, new, cur)
        return Reply(200, copy.deepcopy(new))

    def _patch(self, key: tuple[str, str, str], req: Request, dry: bool) -> Reply:
        resource, ns, name = key
        res = RESOURCES[resource]
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in PATCH_TYPES:
            return status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                          f"accepted media types include: {', '.join(PATCH_TYPES)}")
        try:
            body = yaml.safe_load(req.body or b"") if ctype.endswith("yaml") else json.loads(req.body or b"null")
        except (ValueError, yaml.YAMLError) as e:
            return status(400, "BadRequest", f"error decoding patch: {e}")
        if ctype == "application/apply-patch+yaml":
            if not req.query.get("fieldManager"):
                return status(400, "BadRequest", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required '
                                                 "value: is required for apply patch")
            if not isinstance(body, dict) or body.get("apiVersion") != res.api_version or body.get("kind") != res.kind:
                return status(400, "BadRequest", f"error decoding YAML: an apply patch must set apiVersion "
                                                 f"{res.api_version!r} and kind {res.kind!r}")
            if (body.get("metadata") or {}).get("name", name) != name:
                return status(400, "BadRequest", "the name of the object does not match the name on the URL")
        elif ctype != "application/json-patch+json" and not isinstance(body, dict):
            return status(400, "BadRequest", "the patch must be a JSON object")
        with self.changed:
            cur = self.objects.get(key)
            if cur is None:
                if ctype != "application/apply-patch+yaml":
                    return self._not_found(resource, name)
                created = dict(body)
                created["metadata"] = {**(body.get("metadata") or {}), "name": name}
                return self._create(resource, ns, created, dry)
            try:
                if ctype == "application/json-patch+json":
                    new = json_patch(cur, body)
                elif ctype == "application/merge-patch+json":
                    new = merge_patch(cur, body)
                else:
                    new = strategic_merge(cur, body)
            except PatchError as e:
                reason = "Invalid" if e.code == 422 else "BadRequest"
                return status(e.code, reason, str(e), name, res.kind if e.code == 422 else "", res.group)
            if not isinstance(new, dict):
                return status(422, "Invalid", "the patched object is not an object", name, res.kind, res.group)
            return self._commit(key, cur, new, dry)

    def _delete(self, key: tuple[str, str, str], options: Any, dry: bool) -> Reply:
        resource, ns, name = key
        res = RESOURCES[resource]
        with self.changed:
            cur = self.objects.get(key)
            if cur is None:
                return self._not_found(resource, name)
            pre = (options or {}).get("preconditions") or {} if isinstance(options, dict) else {}
            if (pre.get("resourceVersion") and pre["resourceVersion"] != cur["metadata"]["resourceVersion"]) or (
                    pre.get("uid") and pre["uid"] != cur["metadata"]["uid"]):
                return status(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": '
                              "Precondition failed: " + json.dumps(pre), name, resource, res.group)
            gone = copy.deepcopy(cur)
            if resource == "namespaces":
                gone["metadata"]["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                gone["status"] = {"phase": "Terminating"}
            if not dry:
                if resource == "namespaces":
                    for k in [k for k in self.objects if k[1] == name and RESOURCES[k[0]].namespaced]:
                        self._remove(k)
                self._remove(key)
                gone["metadata"]["resourceVersion"] = str(self.rv)
            if resource == "endpointslices":  # registries without ReturnDeletedObject answer a Status
                return Reply(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "details": {"name": name, "group": res.group, "kind": resource,
                                               "uid": cur["metadata"]["uid"]}})
            return Reply(200, gone)

    def _remove(self, key: tuple[str, str, str]) -> None:
        cur = self.objects.pop(key)
        self.rv += 1
        gone = copy.deepcopy(cur)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._emit("DELETED", key[0], gone, cur)

    def is_write(self, req: Request, reply: Reply) -> bool:
        if req.query.get("dryRun"):
            return False
        # A replace or patch that changed nothing is not a write (the server keeps the resourceVersion).
        if req.method in ("PUT", "PATCH") and reply.status == 200 and isinstance(reply.body, dict):
            try:
                sent = req.json() if req.method == "PUT" else None
            except ValueError:
                sent = None
            if req.method == "PATCH":
                return int(reply.body.get("metadata", {}).get("resourceVersion") or 0) == self.rv
            return reply.body.get("metadata", {}).get("resourceVersion") != \
                (((sent or {}) if isinstance(sent, dict) else {}).get("metadata") or {}).get("resourceVersion")
        return super().is_write(req, reply)

    # --- watch -------------------------------------------------------------------
    def _watch(self, resource: str, ns: str | None, lsel: list[tuple[str, str, Any]],
               fsel: list[tuple[str, str, str]], req: Request) -> Reply:
        timeout = min(float(req.query.get("timeoutSeconds") or MAX_WATCH_S), MAX_WATCH_S)
        start = req.query.get("resourceVersion", "")
        with self.lock:
            if start not in ("", "0"):
                try:
                    since = int(start)
                except ValueError:
                    return status(400, "BadRequest", f"invalid resource version: {start!r}")
                oldest = self.events[0][0] - 1 if self.events else self.rv
                if since < oldest and len(self.events) >= self.history:
                    gone = {"type": "ERROR", "object": status(410, "Expired",
                                                              f"too old resource version: {since} ({oldest})").body}
                    return Reply(200, stream=iter([json.dumps(gone).encode() + b"\n"]))
                initial: list[dict[str, Any]] = []
            else:
                since = self.rv
                initial = [{"type": "ADDED", "object": copy.deepcopy(o)} for k, o in sorted(self.objects.items())
                           if self._selects(k, resource, ns, o, lsel, fsel)]
        return Reply(200, stream=self._stream(resource, ns, lsel, fsel, since, initial, timeout))

    def _stream(self, resource: str, ns: str | None, lsel: list[tuple[str, str, Any]],
                fsel: list[tuple[str, str, str]], since: int, initial: list[dict[str, Any]],
                timeout: float) -> Iterator[bytes]:
        def sel(o: dict[str, Any]) -> bool:
            return matches(o, lsel) and field_matches(o, fsel)

        for e in initial:
            yield json.dumps(e).encode() + b"\n"
        deadline = time.monotonic() + timeout
        while True:
            with self.changed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closing:
                    return
                self.changed.wait_for(lambda: self.closing or (self.events and self.events[-1][0] > since),
                                      timeout=min(remaining, 1.0))
                if self.closing or self.faults.unreachable:
                    return
                behind = bool(self.events) and self.events[0][0] > since + 1  # history trimmed past us
                batch = [] if behind else [e for e in self.events if e[0] > since]
            if behind:
                gone = {"type": "ERROR", "object": status(410, "Expired", f"too old resource version: {since}").body}
                yield json.dumps(gone).encode() + b"\n"
                return
            for rv, r, etype, obj, old in batch:
                since = rv
                if r != resource or (ns is not None and obj["metadata"].get("namespace") != ns):
                    continue
                now_in = sel(obj) and etype != "DELETED"
                was_in = old is not None and sel(old)
                if etype == "DELETED":
                    out = "DELETED" if was_in else None
                elif now_in and was_in:
                    out = "MODIFIED"
                elif now_in:
                    out = "ADDED"
                else:
                    out = "DELETED" if was_in else None
                if out:
                    yield json.dumps({"type": out, "object": obj}).encode() + b"\n"

    # --- direct access for tests (bypasses HTTP and faults) --------------------------
    def get(self, resource: str, name: str, ns: str = "default") -> dict[str, Any] | None:
        with self.lock:
            o = self.objects.get((resource, ns if RESOURCES[resource].namespaced else "", name))
            return copy.deepcopy(o) if o else None

    def put(self, resource: str, obj: dict[str, Any], ns: str = "default") -> dict[str, Any]:
        """Create or replace `obj` as a user editing by hand would (no version check)."""
        name = obj["metadata"]["name"]
        body = copy.deepcopy(obj)
        body.get("metadata", {}).pop("resourceVersion", None)
        with self.lock:
            exists = (resource, ns, name) in self.objects
        reply = self._update((resource, ns, name), body, dry=False) if exists \
            else self._create(resource, ns, body, dry=False)
        assert reply.status < 300, reply.body
        return reply.body

    def remove(self, resource: str, name: str, ns: str = "default") -> None:
        reply = self._delete((resource, ns, name), None, dry=False)
        assert reply.status < 300, reply.body

    def names(self, resource: str, ns: str = "default") -> list[str]:
        with self.lock:
            return sorted(n for (r, s, n) in self.objects if r == resource and s == ns)
