"""A small Consul HTTP API double, written from developer.hashicorp.com/consul/api-docs.

Model: one datacenter's catalog held in memory: nodes (name, address, meta),
services per node (ID, name, tags, address, port, meta) and checks per node
(optionally bound to a service). One global Raft-like index increases on every
write and is returned as `X-Consul-Index`; a GET with `?index=N` blocks until
the index passes N or `wait` (default 5 min, capped here at 10 s) elapses, as
Consul's blocking queries do.

Endpoints served: PUT /v1/catalog/register and /v1/catalog/deregister,
GET /v1/catalog/services, /v1/catalog/service/<name>, /v1/catalog/nodes,
/v1/catalog/node/<node>, /v1/health/service/<name>, /v1/health/state/<state>,
/v1/health/node/<node>, /v1/agent/self. Query filters supported: `node-meta`
(repeatable, `key:value`), `passing` on health. JSON keys are matched
case-insensitively, as Consul's Go decoder does.

ACL: when `acl_tokens` is set, every call needs one of them in the
`X-Consul-Token` header (or `?token=`); an unknown token is answered
403 "ACL not found", a missing one 403 "Permission denied".
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import unquote

from testbed.doubles.httpdouble import HTTPDouble, Reply, Request

DATACENTER = "dc1"
MAX_WAIT_S = 10.0


def _ci(d: dict[str, Any] | None, key: str, default: Any = None) -> Any:
    """Case-insensitive key lookup (Consul decodes JSON keys case-insensitively)."""
    if not d:
        return default
    for k, v in d.items():
        if k.lower() == key.lower():
            return v
    return default


def _duration_s(text: str) -> float:
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    total = sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", text))
    return total if total > 0 else 300.0


class ConsulDouble(HTTPDouble):
    EXEMPT = ()

    def __init__(self, acl_tokens: set[str] | None = None) -> None:
        super().__init__()
        self.acl_tokens = acl_tokens
        self.index = 1
        self.nodes: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, dict[str, Any]]] = {}
        self.checks: dict[str, dict[str, dict[str, Any]]] = {}

    # --- routing -------------------------------------------------------------
    def route(self, req: Request) -> Reply:
        denied = self._acl(req)
        if denied:
            return denied
        p = req.path
        if req.method == "PUT" and p == "/v1/catalog/register":
            return self._register(req.json() or {})
        if req.method == "PUT" and p == "/v1/catalog/deregister":
            return self._deregister(req.json() or {})
        if req.method != "GET":
            return Reply(405, b"method not allowed", {"Content-Type": "text/plain"})
        if p == "/v1/agent/self":
            return Reply(200, {"Config": {"Datacenter": DATACENTER, "NodeName": "consul-double",
                                          "Version": "1.20.0-double"},
                               "Member": {"Name": "consul-double", "Addr": "127.0.0.1"}})
        self._block(req)
        with self.lock:
            meta = [v for k, v in req.query_list if k == "node-meta"]
            if p == "/v1/catalog/nodes":
                body: Any = [self._node_view(n) for n in sorted(self.nodes) if self._meta_ok(n, meta)]
            elif p == "/v1/catalog/services":
                body = {}
                for n, svcs in self.services.items():
                    if not self._meta_ok(n, meta):
                        continue
                    for s in svcs.values():
                        tags = body.setdefault(s["Service"], [])
                        tags.extend(t for t in s["Tags"] if t not in tags)
            elif p.startswith("/v1/catalog/service/"):
                name = unquote(p.rsplit("/", 1)[1])
                body = [self._catalog_entry(n, s) for n, svcs in sorted(self.services.items())
                        for s in svcs.values() if s["Service"] == name and self._meta_ok(n, meta)]
            elif p.startswith("/v1/catalog/node/"):
                n = unquote(p.rsplit("/", 1)[1])
                body = None if n not in self.nodes else {
                    "Node": self._node_view(n),
                    "Services": {sid: dict(s) for sid, s in self.services.get(n, {}).items()}}
            elif p.startswith("/v1/health/service/"):
                name = unquote(p.rsplit("/", 1)[1])
                body = []
                for n, svcs in sorted(self.services.items()):
                    for sid, s in svcs.items():
                        if s["Service"] != name or not self._meta_ok(n, meta):
                            continue
                        checks = [c for c in self.checks.get(n, {}).values() if c["ServiceID"] in ("", sid)]
                        if "passing" in req.query and any(c["Status"] != "passing" for c in checks):
                            continue
                        body.append({"Node": self._node_view(n), "Service": dict(s), "Checks": checks})
            elif p.startswith("/v1/health/state/"):
                state = p.rsplit("/", 1)[1]
                body = [dict(c) for n, cs in sorted(self.checks.items()) if self._meta_ok(n, meta)
                        for c in cs.values() if state == "any" or c["Status"] == state]
            elif p.startswith("/v1/health/node/"):
                n = unquote(p.rsplit("/", 1)[1])
                body = [dict(c) for c in self.checks.get(n, {}).values()]
            else:
                return Reply(404, b"Not Found", {"Content-Type": "text/plain"})
            return Reply(200, body, {"X-Consul-Index": str(self.index), "X-Consul-Knownleader": "true"})

    def fault_reply(self, req: Request, status: int) -> Reply:
        return Reply(status, f"injected fault {status}".encode(), {"Content-Type": "text/plain"})

    # --- helpers ---------------------------------------------------------------
    def _acl(self, req: Request) -> Reply | None:
        if self.acl_tokens is None:
            return None
        token = req.headers.get("x-consul-token") or req.query.get("token")
        if not token:
            return Reply(403, b"Permission denied: anonymous token lacks permission", {"Content-Type": "text/plain"})
        if token not in self.acl_tokens:
            return Reply(403, b"ACL not found", {"Content-Type": "text/plain"})
        return None

    def _block(self, req: Request) -> None:
        if "index" not in req.query:
            return
        try:
            target = int(req.query["index"])
        except ValueError:
            return
        wait = min(_duration_s(req.query.get("wait", "5m")), MAX_WAIT_S)
        with self.changed:
            self.changed.wait_for(lambda: self.index > target or self.closing, timeout=wait)

    def _meta_ok(self, node: str, wanted: list[str] | None) -> bool:
        meta = self.nodes.get(node, {}).get("Meta") or {}
        for kv in wanted or []:
            k, _, v = kv.partition(":")
            if meta.get(k) != v:
                return False
        return True

    def _node_view(self, n: str) -> dict[str, Any]:
        return dict(self.nodes[n])

    def _catalog_entry(self, n: str, s: dict[str, Any]) -> dict[str, Any]:
        node = self.nodes[n]
        return {"ID": node["ID"], "Node": n, "Address": node["Address"], "Datacenter": DATACENTER,
                "NodeMeta": node["Meta"], "ServiceID": s["ID"], "ServiceName": s["Service"],
                "ServiceTags": s["Tags"], "ServiceAddress": s["Address"], "ServicePort": s["Port"],
                "ServiceMeta": s["Meta"], "CreateIndex": s["CreateIndex"], "ModifyIndex": s["ModifyIndex"]}

    def _bump(self) -> int:
        self.index += 1
        self.changed.notify_all()
        return self.index

    # --- writes ----------------------------------------------------------------
    def _register(self, body: dict[str, Any]) -> Reply:
        node, address = _ci(body, "Node"), _ci(body, "Address")
        if not node or not address:
            return Reply(400, b"Must provide node and address", {"Content-Type": "text/plain"})
        with self.changed:
            idx = self._bump()
            cur = self.nodes.get(node)
            if cur is None or not _ci(body, "SkipNodeUpdate", False):
                self.nodes[node] = {
                    "ID": (cur or {}).get("ID") or str(uuid.uuid4()), "Node": node, "Address": address,
                    "Datacenter": DATACENTER, "TaggedAddresses": _ci(body, "TaggedAddresses") or {},
                    "Meta": _ci(body, "NodeMeta") or {},
                    "CreateIndex": (cur or {}).get("CreateIndex", idx), "ModifyIndex": idx}
            svc = _ci(body, "Service")
            if svc:
                name = _ci(svc, "Service")
                if not name:
                    return Reply(400, b"Must provide service name", {"Content-Type": "text/plain"})
                sid = _ci(svc, "ID") or name
                old = self.services.get(node, {}).get(sid, {})
                self.services.setdefault(node, {})[sid] = {
                    "ID": sid, "Service": name, "Tags": list(_ci(svc, "Tags") or []),
                    "Address": _ci(svc, "Address") or "", "Port": int(_ci(svc, "Port") or 0),
                    "Meta": dict(_ci(svc, "Meta") or {}), "EnableTagOverride": False,
                    "CreateIndex": old.get("CreateIndex", idx), "ModifyIndex": idx}
            checks = _ci(body, "Checks") or ([_ci(body, "Check")] if _ci(body, "Check") else [])
            for c in checks:
                cid = _ci(c, "CheckID") or _ci(c, "Name")
                if not cid:
                    return Reply(400, b"Must provide check id or name", {"Content-Type": "text/plain"})
                sid = _ci(c, "ServiceID") or ""
                if sid and sid not in self.services.get(node, {}):
                    return Reply(400, f"Unknown service ID {sid!r} for check".encode(),
                                 {"Content-Type": "text/plain"})
                old = self.checks.get(node, {}).get(cid, {})
                self.checks.setdefault(node, {})[cid] = {
                    "Node": node, "CheckID": cid, "Name": _ci(c, "Name") or cid,
                    "Status": _ci(c, "Status") or "critical", "Notes": _ci(c, "Notes") or "",
                    "Output": _ci(c, "Output") or "", "ServiceID": sid,
                    "ServiceName": self.services.get(node, {}).get(sid, {}).get("Service", ""),
                    "Definition": dict(_ci(c, "Definition") or {}),
                    "CreateIndex": old.get("CreateIndex", idx), "ModifyIndex": idx}
        return Reply(200, True)

    def _deregister(self, body: dict[str, Any]) -> Reply:
        node = _ci(body, "Node")
        if not node:
            return Reply(400, b"Must provide node", {"Content-Type": "text/plain"})
        sid, cid = _ci(body, "ServiceID"), _ci(body, "CheckID")
        with self.changed:
            if node in self.nodes:
                self._bump()
            if sid:
                self.services.get(node, {}).pop(sid, None)
                cs = self.checks.get(node, {})
                for k in [k for k, c in cs.items() if c["ServiceID"] == sid]:
                    del cs[k]
            elif cid:
                self.checks.get(node, {}).pop(cid, None)
            else:
                self.nodes.pop(node, None)
                self.services.pop(node, None)
                self.checks.pop(node, None)
        return Reply(200, True)

    # --- direct access for tests (bypasses HTTP, faults and ACL) ---------------
    def put_service(self, node: str, address: str, service: dict[str, Any], node_meta: dict[str, str] | None = None,
                    check: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"Node": node, "Address": address, "NodeMeta": node_meta or {}, "Service": service}
        if check:
            body["Check"] = check
        reply = self._register(body)
        assert reply.status == 200, reply.body

    def service_entries(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [self._catalog_entry(n, s) for n, svcs in self.services.items()
                    for s in svcs.values() if s["Service"] == name]

    def check_of(self, node: str, service_id: str) -> dict[str, Any] | None:
        with self.lock:
            for c in self.checks.get(node, {}).values():
                if c["ServiceID"] == service_id:
                    return dict(c)
        return None

    def dump(self) -> str:
        with self.lock:
            return json.dumps({"nodes": self.nodes, "services": self.services}, indent=1, default=str)
