"""A small Kubernetes API server double: core/v1 Services and discovery.k8s.io/v1 EndpointSlices.

Written from the Kubernetes API concepts documentation
(kubernetes.io/docs/reference/using-api/api-concepts/). Model: one store of
objects keyed by (resource, namespace, name) and one cluster-wide
resourceVersion counter that every write increases; each write appends an
event (ADDED, MODIFIED, DELETED) to a bounded history.

- list: `items` plus `metadata.resourceVersion`, filtered by `labelSelector`
  (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated);
- get: 404 NotFound Status when absent;
- create (POST): 409 AlreadyExists; the server sets uid, resourceVersion,
  creationTimestamp, and a Service's spec.clusterIP;
- replace (PUT) and patch (PATCH, applied as an RFC 7386 merge patch whatever
  the content type; strategic-merge list semantics are not modelled): 404
  when absent, 409 Conflict when a given metadata.resourceVersion is not the
  current one; a Service's clusterIP is immutable (422 Invalid);
- delete: 404 when absent, 409 Conflict when DeleteOptions.preconditions
  (uid, resourceVersion) do not match;
- watch (`?watch=true`): events after `resourceVersion` streamed as JSON
  lines (for "" or "0" the current objects first as ADDED); an object that
  stops matching the label selector is sent as DELETED, one that starts
  matching as ADDED, as the API server's watch cache does; a version older
  than the kept history gets an ERROR event with a 410 Gone Status; the
  stream ends after `timeoutSeconds`.
- discovery: /version, /api, /api/v1, /apis, /apis/discovery.k8s.io/v1.

Authentication: when `token` is set, `Authorization: Bearer <token>` is
required (401 otherwise). Faults come from HTTPDouble.
"""

from __future__ import annotations

import copy
import json
import re
import time
import uuid
from typing import Any, Iterator

from testbed.doubles.httpdouble import HTTPDouble, Reply, Request

HISTORY = 10_000
MAX_WATCH_S = 30.0

RESOURCES = {
    # resource -> (api prefix, kind, list kind, namespaced)
    "services": ("/api/v1", "Service", "ServiceList", "v1"),
    "endpointslices": ("/apis/discovery.k8s.io/v1", "EndpointSlice", "EndpointSliceList", "discovery.k8s.io/v1"),
}
DISCOVERY = ("/version", "/api", "/api/v1", "/apis", "/apis/discovery.k8s.io/v1")
_PATH = re.compile(r"^(/api/v1|/apis/discovery\.k8s\.io/v1)/namespaces/([^/]+)/(services|endpointslices)(?:/([^/]+))?$")


def status(code: int, reason: str, message: str, name: str = "", kind: str = "") -> Reply:
    return Reply(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": message, "reason": reason, "details": {"name": name, "kind": kind},
                        "code": code})


def parse_selector(text: str) -> list[tuple[str, str, str | None]]:
    """`k=v,k!=v,k,!k` -> [(op, key, value)] with op in =, !=, exists, !exists."""
    out: list[tuple[str, str, str | None]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in part:
            k, v = part.split("!=", 1)
            out.append(("!=", k.strip(), v.strip()))
        elif "==" in part or "=" in part:
            k, v = re.split("==|=", part, maxsplit=1)
            out.append(("=", k.strip(), v.strip()))
        elif part.startswith("!"):
            out.append(("!exists", part[1:].strip(), None))
        else:
            out.append(("exists", part, None))
    return out


def matches(obj: dict[str, Any], selector: list[tuple[str, str, str | None]]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for op, k, v in selector:
        if op == "=" and labels.get(k) != v:
            return False
        if op == "!=" and labels.get(k) == v:
            return False
        if op == "exists" and k not in labels:
            return False
        if op == "!exists" and k in labels:
            return False
    return True


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


class KubernetesDouble(HTTPDouble):

    def __init__(self, token: str | None = None, history: int = HISTORY) -> None:
        super().__init__()
        self.token = token
        self.history = history  # events kept for watches; older versions get 410 Gone
        self.lists: dict[str, int] = {}  # list calls per resource (watches not counted)
        self.rv = 1
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, str, dict[str, Any], dict[str, Any] | None]] = []
        self._ip = 0

    def reset_counters(self) -> None:
        super().reset_counters()
        with self.lock:
            self.lists.clear()

    def is_exempt(self, path: str) -> bool:
        # Discovery documents are exempt from faults; every path under /namespaces/ is an API call.
        return path.rstrip("/") in DISCOVERY

    def fault_reply(self, req: Request, status_code: int) -> Reply:
        reason = {409: "Conflict", 500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests"}
        return status(status_code, reason.get(status_code, "InternalError"), f"injected fault {status_code}")

    # --- routing -------------------------------------------------------------
    def route(self, req: Request) -> Reply:
        if self.token is not None and req.headers.get("authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        p = req.path.rstrip("/")
        if req.method == "GET":
            disc = self._discovery(p)
            if disc is not None:
                return disc
        m = _PATH.match(p)
        if not m or RESOURCES[m.group(3)][0] != m.group(1):
            return status(404, "NotFound", f"the server could not find the requested resource ({p})")
        _, ns, resource, name = m.groups()
        kind = RESOURCES[resource][1]
        if name is None:
            if req.method == "GET":
                if req.query.get("watch") in ("true", "1"):
                    return self._watch(resource, ns, req)
                return self._list(resource, ns, req)
            if req.method == "POST":
                return self._create(resource, ns, req.json())
            return status(405, "MethodNotAllowed", f"{req.method} is not supported on a collection")
        key = (resource, ns, name)
        if req.method == "GET":
            with self.lock:
                obj = self.objects.get(key)
                return Reply(200, obj) if obj else status(404, "NotFound", f'{resource} "{name}" not found',
                                                          name, resource)
        if req.method == "PUT":
            return self._update(key, kind, req.json(), patch=False)
        if req.method == "PATCH":
            return self._update(key, kind, req.json(), patch=True)
        if req.method == "DELETE":
            return self._delete(key, req.json() if req.body else None)
        return status(405, "MethodNotAllowed", f"{req.method} not allowed")

    def _discovery(self, p: str) -> Reply | None:
        if p == "/version":
            return Reply(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-double", "platform": "linux/amd64"})
        if p == "/api":
            return Reply(200, {"kind": "APIVersions", "versions": ["v1"],
                               "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                               "serverAddress": "127.0.0.1"}]})
        if p == "/api/v1":
            return Reply(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "services", "singularName": "service", "namespaced": True, "kind": "Service",
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["svc"]}]})
        if p == "/apis":
            gv = {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
            return Reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "discovery.k8s.io", "versions": [gv], "preferredVersion": gv}]})
        if p == "/apis/discovery.k8s.io/v1":
            return Reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "discovery.k8s.io/v1",
                               "resources": [{"name": "endpointslices", "singularName": "endpointslice",
                                              "namespaced": True, "kind": "EndpointSlice",
                                              "verbs": ["create", "delete", "deletecollection", "get", "list",
                                                        "patch", "update", "watch"]}]})
        return None

    # --- store ---------------------------------------------------------------
    def _emit(self, etype: str, resource: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.events.append((self.rv, resource, etype, copy.deepcopy(obj), old))
        if len(self.events) > self.history:
            del self.events[: len(self.events) - self.history]
        self.changed.notify_all()

    def _stamp(self, resource: str, ns: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        _, kind, _, api_version = RESOURCES[resource]
        obj["kind"], obj["apiVersion"] = kind, api_version
        md = obj.setdefault("metadata", {})
        md["namespace"] = ns
        md["resourceVersion"] = str(self.rv)

    def _list(self, resource: str, ns: str, req: Request) -> Reply:
        sel = parse_selector(req.query.get("labelSelector", ""))
        _, _, list_kind, api_version = RESOURCES[resource]
        with self.lock:
            self.lists[resource] = self.lists.get(resource, 0) + 1
            items = [copy.deepcopy(o) for (r, n, _), o in sorted(self.objects.items())
                     if r == resource and n == ns and matches(o, sel)]
            return Reply(200, {"kind": list_kind, "apiVersion": api_version,
                               "metadata": {"resourceVersion": str(self.rv)}, "items": items})

    def _create(self, resource: str, ns: str, body: Any) -> Reply:
        kind = RESOURCES[resource][1]
        if not isinstance(body, dict):
            return status(400, "BadRequest", "the body must be an object")
        name = (body.get("metadata") or {}).get("name", "")
        if not name or not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name) or len(name) > 253 or (
                resource == "services" and (len(name) > 63 or "." in name)):
            return status(422, "Invalid", f'{kind} "{name}" is invalid: metadata.name: Invalid value', name, resource)
        md_ns = (body.get("metadata") or {}).get("namespace")
        if md_ns and md_ns != ns:
            return status(400, "BadRequest", "the namespace of the object does not match the namespace on the request")
        key = (resource, ns, name)
        with self.changed:
            if key in self.objects:
                return status(409, "AlreadyExists", f'{resource} "{name}" already exists', name, resource)
            obj = copy.deepcopy(body)
            md = obj.setdefault("metadata", {})
            md.pop("resourceVersion", None)
            md["uid"] = str(uuid.uuid4())
            md["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            md["generation"] = 1
            if resource == "services":
                spec = obj.setdefault("spec", {})
                spec.setdefault("type", "ClusterIP")
                if spec["type"] == "ClusterIP" and not spec.get("clusterIP"):
                    self._ip += 1
                    spec["clusterIP"] = f"10.43.{self._ip // 250}.{self._ip % 250 + 2}"
                    spec["clusterIPs"] = [spec["clusterIP"]]
            self._stamp(resource, ns, obj)
            self.objects[key] = obj
            self._emit("ADDED", resource, obj, None)
            return Reply(201, copy.deepcopy(obj))

    def _update(self, key: tuple[str, str, str], kind: str, body: Any, patch: bool) -> Reply:
        resource, ns, name = key
        if not isinstance(body, dict):
            return status(400, "BadRequest", "the body must be an object")
        with self.changed:
            cur = self.objects.get(key)
            if cur is None:
                return status(404, "NotFound", f'{resource} "{name}" not found', name, resource)
            want_rv = (body.get("metadata") or {}).get("resourceVersion")
            if want_rv and want_rv != cur["metadata"]["resourceVersion"]:
                return status(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": the object '
                              "has been modified; please apply your changes to the latest version and try again",
                              name, resource)
            new = merge_patch(cur, body) if patch else copy.deepcopy(body)
            md = new.setdefault("metadata", {})
            if md.get("name", name) != name:
                return status(400, "BadRequest", "the name of the object does not match the name on the URL")
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
                elif spec["clusterIP"] != old_ip:
                    return status(422, "Invalid", f'Service "{name}" is invalid: spec.clusterIP: Invalid value: '
                                  f'"{spec["clusterIP"]}": field is immutable', name, resource)
            new_cmp, cur_cmp = dict(new), dict(cur)
            new_cmp["metadata"] = {k: v for k, v in md.items() if k not in ("resourceVersion", "generation")}
            cur_cmp["metadata"] = {k: v for k, v in cur["metadata"].items()
                                   if k not in ("resourceVersion", "generation")}
            if new_cmp == cur_cmp:  # a no-op update does not change resourceVersion
                return Reply(200, copy.deepcopy(cur))
            md["generation"] = cur["metadata"].get("generation", 1) + 1
            self._stamp(resource, ns, new)
            self.objects[key] = new
            self._emit("MODIFIED", resource, new, cur)
            return Reply(200, copy.deepcopy(new))

    def _delete(self, key: tuple[str, str, str], options: Any) -> Reply:
        resource, ns, name = key
        with self.changed:
            cur = self.objects.get(key)
            if cur is None:
                return status(404, "NotFound", f'{resource} "{name}" not found', name, resource)
            pre = (options or {}).get("preconditions") or {}
            if (pre.get("resourceVersion") and pre["resourceVersion"] != cur["metadata"]["resourceVersion"]) or (
                    pre.get("uid") and pre["uid"] != cur["metadata"]["uid"]):
                return status(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": '
                              "Precondition failed", name, resource)
            del self.objects[key]
            self.rv += 1
            gone = copy.deepcopy(cur)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._emit("DELETED", resource, gone, cur)
            return Reply(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                               "details": {"name": name, "kind": resource, "uid": cur["metadata"]["uid"]}})

    def is_write(self, req: Request, reply: Reply) -> bool:
        # A replace that changed nothing is not a write (the server keeps the resourceVersion).
        if req.method in ("PUT", "PATCH") and reply.status == 200 and isinstance(reply.body, dict):
            return reply.body.get("metadata", {}).get("resourceVersion") != \
                ((req.json() or {}).get("metadata") or {}).get("resourceVersion")
        return super().is_write(req, reply)

    # --- watch -------------------------------------------------------------------
    def _watch(self, resource: str, ns: str, req: Request) -> Reply:
        sel = parse_selector(req.query.get("labelSelector", ""))
        timeout = min(float(req.query.get("timeoutSeconds") or MAX_WATCH_S), MAX_WATCH_S)
        start = req.query.get("resourceVersion", "")
        with self.lock:
            if start not in ("", "0"):
                since = int(start)
                oldest = self.events[0][0] - 1 if self.events else self.rv
                if since < oldest and len(self.events) >= self.history:
                    gone = {"type": "ERROR", "object": status(410, "Expired",
                                                              f"too old resource version: {since} ({oldest})").body}
                    return Reply(200, stream=iter([json.dumps(gone).encode() + b"\n"]))
                initial: list[dict[str, Any]] = []
            else:
                since = self.rv
                initial = [{"type": "ADDED", "object": copy.deepcopy(o)} for (r, n, _), o
                           in sorted(self.objects.items()) if r == resource and n == ns and matches(o, sel)]
        return Reply(200, stream=self._stream(resource, ns, sel, since, initial, timeout))

    def _stream(self, resource: str, ns: str, sel: list[tuple[str, str, str | None]], since: int,
                initial: list[dict[str, Any]], timeout: float) -> Iterator[bytes]:
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
                if r != resource or obj["metadata"].get("namespace") != ns:
                    continue
                now_in = matches(obj, sel) and etype != "DELETED"
                was_in = old is not None and matches(old, sel)
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
            o = self.objects.get((resource, ns, name))
            return copy.deepcopy(o) if o else None

    def put(self, resource: str, obj: dict[str, Any], ns: str = "default") -> dict[str, Any]:
        """Create or replace `obj` as a user editing by hand would (no version check)."""
        name = obj["metadata"]["name"]
        body = copy.deepcopy(obj)
        body.get("metadata", {}).pop("resourceVersion", None)
        with self.lock:
            exists = (resource, ns, name) in self.objects
        reply = self._update((resource, ns, name), RESOURCES[resource][1], body, patch=False) if exists \
            else self._create(resource, ns, body)
        assert reply.status < 300, reply.body
        return reply.body

    def remove(self, resource: str, name: str, ns: str = "default") -> None:
        reply = self._delete((resource, ns, name), None)
        assert reply.status < 300, reply.body

    def names(self, resource: str, ns: str = "default") -> list[str]:
        with self.lock:
            return sorted(n for (r, s, n) in self.objects if r == resource and s == ns)
