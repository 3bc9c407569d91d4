"""A small Consul HTTP API double, written from developer.hashicorp.com/consul/api-docs.

Model: one datacenter's catalog held in memory: nodes (name, address, meta),
services per node (ID, name, tags, address, port, meta) and checks per node
(optionally bound to a service), a KV store, and one agent ("consul-double",
127.0.0.1) whose own services and checks are put in the catalog under its
node as anti-entropy would (the agent node enters the catalog with its first
service). One global Raft-like index increases on every write and is returned
as `X-Consul-Index`; a GET with `?index=N` blocks until the index passes N or
`wait` (default 5 min, capped here at 10 s) elapses, as Consul's blocking
queries do.

Endpoints served: PUT /v1/catalog/register and /v1/catalog/deregister,
GET /v1/catalog/services, /v1/catalog/service/<name>, /v1/catalog/nodes,
/v1/catalog/node/<node>, /v1/health/service/<name>, /v1/health/state/<state>,
/v1/health/node/<node>; the agent's PUT /v1/agent/service/register,
PUT /v1/agent/service/deregister/<id>, GET /v1/agent/services,
/v1/agent/service/<id>, /v1/agent/checks, /v1/agent/self, /v1/agent/members;
GET /v1/status/leader and /v1/status/peers; /v1/kv/<key> GET (`recurse`,
`keys` with `separator`, `raw`; values base64 as Consul sends them), PUT
(`cas`, `flags`), DELETE (`recurse`, `cas`). Query filters supported:
`node-meta` (repeatable, `key:value`), `passing` on health. JSON keys are
matched case-insensitively, as Consul's Go decoder does. Check definitions
are decoded as Consul's (durations as Go durations: "90s", "1m", or
nanoseconds) and come back normalised: every definition field, durations as
Go prints them ("1m30s", "10s", "1m0s").

ACL: when `acl_tokens` is set, ACLs are on with default deny. A set of
tokens holds management tokens; a dict maps a token to its rules,
{"node"|"service"|"key"|"agent": "read"|"write"} (no per-name prefixes). A
call without a token is the anonymous token (`anonymous_rules`, none by
default); an unknown token is answered 403 "ACL not found". Writes and
single-object reads the token may not do are 403 "Permission denied: ... lacks
permission 'service:write' ..."; catalog, health, agent-list and KV-list reads
are filtered to what it may read (with X-Consul-Results-Filtered-By-ACLs:
true), as Consul does. /v1/status/* is open to all.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any
from urllib.parse import unquote

from testbed.doubles.httpdouble import HTTPDouble, Reply, Request

DATACENTER = "dc1"
MAX_WAIT_S = 10.0
AGENT = "consul-double"
AGENT_ADDR = "127.0.0.1"
_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9,
       "h": 3600 * 10**9}
DIRECT = "\0direct"  # the token of the test helpers' own calls, which bypass ACLs
_DURATION_FIELDS = ("Interval", "Timeout", "TTL", "DeregisterCriticalServiceAfter")
# HealthCheckDefinition as Consul's API returns it: every field, zero values included.
_DEFINITION = {"TLSServerName": "", "TLSSkipVerify": False, "HTTP": "", "Header": None, "Method": "", "Body": "",
               "DisableRedirects": False, "TCP": "", "TCPUseTLS": False, "UDP": "", "GRPC": "", "GRPCUseTLS": False,
               "OSService": "", "H2PING": "", "H2PingUseTLS": False, "Interval": "0s", "OutputMaxSize": 0,
               "Timeout": "0s", "DeregisterCriticalServiceAfter": "0s", "ScriptArgs": None,
               "DockerContainerID": "", "Shell": "", "AliasNode": "", "AliasService": "", "TTL": "0s"}


def _ci(d: dict[str, Any] | None, key: str, default: Any = None) -> Any:
    """Case-insensitive key lookup (Consul decodes JSON keys case-insensitively)."""
    if not d:
        return default
    for k, v in d.items():
        if k.lower() == key.lower():
            return v
    return default


def parse_duration(value: Any) -> int:
    """A Go duration ("90s", "1m30s", "1.5h", "100ms") or a number of nanoseconds -> nanoseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    text = str(value)
    if text in ("", "0"):
        return 0
    m = re.fullmatch(r"(-?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+", text)
    if not m:
        raise ValueError(f'time: invalid duration "{text}"')
    total = sum(float(n) * _NS[u] for n, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)", text))
    return int(-total if m.group(1) else total)


def format_duration(ns: int) -> str:
    """Nanoseconds as Go's time.Duration.String() prints them."""
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(ns)

    def frac(v: int, unit: int) -> str:
        whole, rest = divmod(v, unit)
        digits = f"{rest:0{len(str(unit)) - 1}d}".rstrip("0")
        return f"{whole}.{digits}" if digits else str(whole)

    if ns < 10**9:
        for unit, name in ((10**6, "ms"), (10**3, "µs"), (1, "ns")):
            if ns >= unit:
                return sign + frac(ns, unit) + name
    h, rest = divmod(ns, 3600 * 10**9)
    m, rest = divmod(rest, 60 * 10**9)
    s = frac(rest, 10**9) + "s"
    if h:
        return f"{sign}{h}h{m}m{s}"
    return f"{sign}{m}m{s}" if m else sign + s


def _duration_s(text: str) -> float:
    try:
        ns = parse_duration(text)
    except ValueError:
        ns = 0
    return ns / 1e9 if ns > 0 else 300.0


def _text(status: int, message: str) -> Reply:
    return Reply(status, message.encode(), {"Content-Type": "text/plain"})


def normal_definition(raw: dict[str, Any] | None) -> dict[str, Any]:
    """A check definition as Consul stores and returns it; ValueError for an undecodable duration."""
    out = dict(_DEFINITION)
    for k, v in (raw or {}).items():
        key = next((d for d in _DEFINITION if d.lower() == k.lower()), None)
        if key is None:
            continue
        out[key] = format_duration(parse_duration(v)) if key in _DURATION_FIELDS else v
    return out


class ConsulDouble(HTTPDouble):
    EXEMPT = ()

    def __init__(self, acl_tokens: set[str] | dict[str, dict[str, str]] | None = None) -> None:
        super().__init__()
        self.acl_tokens = acl_tokens
        self.anonymous_rules: dict[str, str] = {}
        self.index = 1
        self.nodes: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, dict[str, Any]]] = {}
        self.checks: dict[str, dict[str, dict[str, Any]]] = {}
        self.kv: dict[str, dict[str, Any]] = {}
        self.agent_services: set[str] = set()

    # --- ACL -----------------------------------------------------------------
    def _token(self, req: Request) -> tuple[str | None, Reply | None]:
        token = req.headers.get("x-consul-token") or req.query.get("token") or None
        auth = req.headers.get("authorization", "")
        if not token and auth.startswith("Bearer "):
            token = auth[len("Bearer "):]
        if self.acl_tokens is not None and token and token not in self.acl_tokens:
            return token, _text(403, "ACL not found")
        return token, None

    def _may(self, token: str | None, resource: str, access: str) -> bool:
        if self.acl_tokens is None or token == DIRECT:
            return True
        if token is None:
            rules = self.anonymous_rules
        elif isinstance(self.acl_tokens, dict):
            rules = self.acl_tokens.get(token) or {}
        else:
            return True  # a management token
        have = rules.get(resource)
        return have == "write" or (have == "read" and access == "read")

    def _denied(self, token: str | None, resource: str, access: str, name: str) -> Reply | None:
        if self._may(token, resource, access):
            return None
        who = "anonymous token" if token is None else "token with AccessorID '" + str(
            uuid.uuid5(uuid.NAMESPACE_OID, token)) + "'"
        return _text(403, f"Permission denied: {who} lacks permission '{resource}:{access}' on \"{name}\"")

    # --- routing -------------------------------------------------------------
    def route(self, req: Request) -> Reply:
        p = req.path
        if p.startswith("/v1/status/"):  # open to every caller, as in Consul
            if req.method != "GET":
                return _text(405, "method not allowed")
            if p == "/v1/status/leader":
                return Reply(200, f"{AGENT_ADDR}:8300")
            if p == "/v1/status/peers":
                return Reply(200, [f"{AGENT_ADDR}:8300"])
            return _text(404, "Not Found")
        token, bad = self._token(req)
        if bad:
            return bad
        if p.startswith("/v1/kv/"):
            return self._kv(req, token, unquote(p[len("/v1/kv/"):]))
        if p.startswith("/v1/agent/"):
            return self._agent(req, token, p[len("/v1/agent/"):])
        if req.method == "PUT" and p == "/v1/catalog/register":
            body, err = self._json(req)
            return err or self._register(body or {}, token)
        if req.method == "PUT" and p == "/v1/catalog/deregister":
            body, err = self._json(req)
            return err or self._deregister(body or {}, token)
        if not p.startswith(("/v1/catalog/", "/v1/health/")):
            return _text(404, "Not Found")
        if req.method != "GET":
            return _text(405, "method not allowed")
        self._block(req)
        with self.lock:
            meta = [v for k, v in req.query_list if k == "node-meta"]
            filtered = False

            def node_ok(n: str) -> bool:
                nonlocal filtered
                ok = self._may(token, "node", "read")
                filtered |= not ok
                return ok and self._meta_ok(n, meta)

            def svc_ok(s: dict[str, Any]) -> bool:
                nonlocal filtered
                ok = self._may(token, "service", "read")
                filtered |= not ok
                return ok

            if p == "/v1/catalog/nodes":
                body: Any = [self._node_view(n) for n in sorted(self.nodes) if node_ok(n)]
            elif p == "/v1/catalog/services":
                body = {}
                for n, svcs in self.services.items():
                    if not node_ok(n):
                        continue
                    for s in svcs.values():
                        if svc_ok(s):
                            tags = body.setdefault(s["Service"], [])
                            tags.extend(t for t in s["Tags"] if t not in tags)
            elif p.startswith("/v1/catalog/service/"):
                name = unquote(p.rsplit("/", 1)[1])
                body = [self._catalog_entry(n, s) for n, svcs in sorted(self.services.items())
                        for s in svcs.values() if s["Service"] == name and node_ok(n) and svc_ok(s)]
            elif p.startswith("/v1/catalog/node/"):
                n = unquote(p.rsplit("/", 1)[1])
                body = None if n not in self.nodes or not node_ok(n) else {
                    "Node": self._node_view(n),
                    "Services": {sid: dict(s) for sid, s in self.services.get(n, {}).items() if svc_ok(s)}}
            elif p.startswith("/v1/health/service/"):
                name = unquote(p.rsplit("/", 1)[1])
                body = []
                for n, svcs in sorted(self.services.items()):
                    for sid, s in svcs.items():
                        if s["Service"] != name or not node_ok(n) or not svc_ok(s):
                            continue
                        checks = [dict(c) for c in self.checks.get(n, {}).values() if c["ServiceID"] in ("", sid)]
                        if "passing" in req.query and any(c["Status"] != "passing" for c in checks):
                            continue
                        body.append({"Node": self._node_view(n), "Service": dict(s), "Checks": checks})
            elif p.startswith("/v1/health/state/"):
                state = p.rsplit("/", 1)[1]
                if state not in ("any", "passing", "warning", "critical"):
                    return _text(400, "Bad check state")
                body = [dict(c) for n, cs in sorted(self.checks.items()) if node_ok(n)
                        for c in cs.values() if state == "any" or c["Status"] == state]
            elif p.startswith("/v1/health/node/"):
                n = unquote(p.rsplit("/", 1)[1])
                body = [dict(c) for c in self.checks.get(n, {}).values()] if node_ok(n) else []
            else:
                return _text(404, "Not Found")
            return Reply(200, body, self._headers(filtered))

    def _headers(self, filtered: bool = False) -> dict[str, str]:
        h = {"X-Consul-Index": str(self.index), "X-Consul-Knownleader": "true", "X-Consul-Lastcontact": "0"}
        if filtered:
            h["X-Consul-Results-Filtered-By-Acls"] = "true"
        return h

    @staticmethod
    def _json(req: Request) -> tuple[Any, Reply | None]:
        try:
            return json.loads(req.body or b"null"), None
        except ValueError as e:
            return None, _text(400, f"Request decode failed: {e}")

    def fault_reply(self, req: Request, status: int) -> Reply:
        return _text(status, f"injected fault {status}")

    # --- helpers ---------------------------------------------------------------
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
    def _register(self, body: dict[str, Any], token: str | None = DIRECT) -> Reply:
        node, address = _ci(body, "Node"), _ci(body, "Address")
        if not node or not address:
            return _text(400, "Must provide node and address")
        svc = _ci(body, "Service")
        denied = self._denied(token, "node", "write", node) or (
            svc and self._denied(token, "service", "write", _ci(svc, "Service") or ""))
        if denied:
            return denied
        checks = _ci(body, "Checks") or ([_ci(body, "Check")] if _ci(body, "Check") else [])
        try:
            definitions = [normal_definition(_ci(c, "Definition")) for c in checks]
        except ValueError as e:
            return _text(400, f"Request decode failed: {e}")
        with self.changed:
            if svc and not _ci(svc, "Service"):
                return _text(400, "Must provide service name")
            for c in checks:
                if not (_ci(c, "CheckID") or _ci(c, "Name")):
                    return _text(400, "Must provide check id or name")
                sid = _ci(c, "ServiceID") or ""
                svc_ids = set(self.services.get(node, {})) | ({_ci(svc, "ID") or _ci(svc, "Service")} if svc else set())
                if sid and sid not in svc_ids:
                    return _text(400, f"Unknown service ID {sid!r} for check")
            idx = self._bump()
            cur = self.nodes.get(node)
            if cur is None or not _ci(body, "SkipNodeUpdate", False):
                self.nodes[node] = {
                    "ID": (cur or {}).get("ID") or str(uuid.uuid4()), "Node": node, "Address": address,
                    "Datacenter": DATACENTER, "TaggedAddresses": _ci(body, "TaggedAddresses") or {},
                    "Meta": _ci(body, "NodeMeta") or {},
                    "CreateIndex": (cur or {}).get("CreateIndex", idx), "ModifyIndex": idx}
            if svc:
                self._put_service(node, svc, idx)
            for c, definition in zip(checks, definitions):
                self._put_check(node, c, definition, idx)
        return Reply(200, True)

    def _put_service(self, node: str, svc: dict[str, Any], idx: int) -> dict[str, Any]:
        name = _ci(svc, "Service") or _ci(svc, "Name")
        sid = _ci(svc, "ID") or name
        old = self.services.get(node, {}).get(sid, {})
        s = self.services.setdefault(node, {})[sid] = {
            "ID": sid, "Service": name, "Tags": list(_ci(svc, "Tags") or []),
            "Address": _ci(svc, "Address") or "", "Port": int(_ci(svc, "Port") or 0),
            "Meta": dict(_ci(svc, "Meta") or {}), "EnableTagOverride": bool(_ci(svc, "EnableTagOverride", False)),
            "Weights": _ci(svc, "Weights") or {"Passing": 1, "Warning": 1},
            "CreateIndex": old.get("CreateIndex", idx), "ModifyIndex": idx}
        return s

    def _put_check(self, node: str, c: dict[str, Any], definition: dict[str, Any], idx: int) -> None:
        cid = _ci(c, "CheckID") or _ci(c, "Name")
        sid = _ci(c, "ServiceID") or ""
        svc = self.services.get(node, {}).get(sid, {})
        old = self.checks.get(node, {}).get(cid, {})
        kind = next((t.lower() for t in ("HTTP", "TCP", "UDP", "GRPC", "TTL") if definition.get(t) not in
                     ("", "0s", None)), "")
        self.checks.setdefault(node, {})[cid] = {
            "Node": node, "CheckID": cid, "Name": _ci(c, "Name") or cid,
            "Status": _ci(c, "Status") or "critical", "Notes": _ci(c, "Notes") or "",
            "Output": _ci(c, "Output") or "", "ServiceID": sid, "ServiceName": svc.get("Service", ""),
            "ServiceTags": list(svc.get("Tags", [])), "Type": kind, "Interval": definition["Interval"],
            "Timeout": definition["Timeout"], "ExposedPort": 0, "Definition": definition,
            "CreateIndex": old.get("CreateIndex", idx), "ModifyIndex": idx}

    def _deregister(self, body: dict[str, Any], token: str | None = DIRECT) -> Reply:
        node = _ci(body, "Node")
        if not node:
            return _text(400, "Must provide node")
        sid, cid = _ci(body, "ServiceID"), _ci(body, "CheckID")
        denied = self._denied(token, "node", "write", node)
        if sid and not denied:
            name = self.services.get(node, {}).get(sid, {}).get("Service", sid)
            denied = self._denied(token, "service", "write", name) if not self._may(token, "node", "write") \
                else None
        if denied:
            return denied
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

    # --- the local agent -------------------------------------------------------
    def _agent(self, req: Request, token: str | None, rest: str) -> Reply:
        if rest == "service/register":
            if req.method != "PUT":
                return _text(405, "method not allowed")
            body, err = self._json(req)
            return err or self._agent_register(body or {}, token)
        if rest.startswith("service/deregister/"):
            if req.method != "PUT":
                return _text(405, "method not allowed")
            return self._agent_deregister(unquote(rest[len("service/deregister/"):]), token)
        if req.method != "GET":
            return _text(405, "method not allowed")
        if rest in ("self", "members"):
            # self needs agent:read; the member list is filtered by node:read.
            denied = self._denied(token, "agent", "read", AGENT) if rest == "self" else None
            if denied:
                return denied
            member = {"Name": AGENT, "Addr": AGENT_ADDR, "Port": 8301, "Status": 1, "ProtocolMin": 1,
                      "ProtocolMax": 5, "ProtocolCur": 2, "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
                      "Tags": {"dc": DATACENTER, "role": "consul", "port": "8300", "build": "1.20.0:double",
                               "vsn": "2", "bootstrap": "1"}}
            if rest == "members":
                ok = self._may(token, "node", "read")
                return Reply(200, [member] if ok else [], self._headers(not ok))
            return Reply(200, {"Config": {"Datacenter": DATACENTER, "NodeName": AGENT, "NodeID": str(
                uuid.uuid5(uuid.NAMESPACE_DNS, AGENT)), "Server": True, "Revision": "double",
                "Version": "1.20.0-double", "PrimaryDatacenter": DATACENTER},
                "Member": member, "Meta": {}, "DebugConfig": {}, "Coord": None, "Stats": {}})
        with self.lock:
            mine = {sid: s for sid, s in self.services.get(AGENT, {}).items() if sid in self.agent_services}
            if rest == "services":
                return Reply(200, {sid: self._agent_service(s) for sid, s in sorted(mine.items())
                                   if self._may(token, "service", "read")})
            if rest.startswith("service/"):
                sid = unquote(rest[len("service/"):])
                if sid not in mine:
                    return _text(404, f"unknown service ID: {sid}")
                denied = self._denied(token, "service", "read", mine[sid]["Service"])
                if denied:
                    return denied
                out = self._agent_service(mine[sid])
                out["ContentHash"] = uuid.uuid5(uuid.NAMESPACE_OID, json.dumps(out, sort_keys=True)).hex[:16]
                return Reply(200, out, {"X-Consul-ContentHash": out["ContentHash"]})
            if rest == "checks":
                return Reply(200, {cid: dict(c) for cid, c in sorted(self.checks.get(AGENT, {}).items())
                                   if self._may(token, "node", "read") and (not c["ServiceID"] or
                                                                            self._may(token, "service", "read"))})
        return _text(404, "Not Found")

    @staticmethod
    def _agent_service(s: dict[str, Any]) -> dict[str, Any]:
        return {"ID": s["ID"], "Service": s["Service"], "Tags": list(s["Tags"]), "Meta": dict(s["Meta"]),
                "Port": s["Port"], "Address": s["Address"], "Weights": dict(s["Weights"]),
                "EnableTagOverride": s["EnableTagOverride"], "Datacenter": DATACENTER}

    def _agent_register(self, body: dict[str, Any], token: str | None) -> Reply:
        name = _ci(body, "Name")
        if not name:
            return _text(400, "Missing service name")
        denied = self._denied(token, "service", "write", name)
        if denied:
            return denied
        sid = _ci(body, "ID") or name
        port = _ci(body, "Port") or 0
        if not isinstance(port, int) or not 0 <= port <= 65535:
            return _text(400, f"Invalid Service Meta: invalid port {port!r}")
        raw_checks = ([_ci(body, "Check")] if _ci(body, "Check") else []) + list(_ci(body, "Checks") or [])
        checks = []
        for i, c in enumerate(raw_checks):
            try:
                definition = normal_definition(c)
            except ValueError as e:
                return _text(400, f"Request decode failed: {e}")
            kinds = [t for t in ("HTTP", "TCP", "UDP", "GRPC", "H2PING") if definition[t]]
            ttl = definition["TTL"] != "0s"
            if len(kinds) + ttl != 1:
                return _text(400, "Invalid check: exactly one of script, HTTP, TCP, UDP, gRPC, H2PING, TTL, "
                                  "Docker, alias or OS service must be set")
            if kinds and definition["Interval"] == "0s":
                return _text(400, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or "
                                  "gRPC checks")
            cid = _ci(c, "CheckID") or (f"service:{sid}" if len(raw_checks) == 1 else f"service:{sid}:{i + 1}")
            checks.append(({"CheckID": cid, "Name": _ci(c, "Name") or f"Service '{name}' check",
                            "Status": _ci(c, "Status") or "critical", "Notes": _ci(c, "Notes") or "",
                            "ServiceID": sid}, definition))
        with self.changed:
            idx = self._bump()
            if AGENT not in self.nodes:
                self.nodes[AGENT] = {"ID": str(uuid.uuid5(uuid.NAMESPACE_DNS, AGENT)), "Node": AGENT,
                                     "Address": AGENT_ADDR, "Datacenter": DATACENTER, "TaggedAddresses": {},
                                     "Meta": {"consul-network-segment": ""}, "CreateIndex": idx, "ModifyIndex": idx}
            self._put_service(AGENT, {**body, "Service": name, "ID": sid}, idx)
            self.agent_services.add(sid)
            for c, definition in checks:
                self._put_check(AGENT, c, definition, idx)
        return Reply(200, b"", {"Content-Type": "text/plain"})

    def _agent_deregister(self, sid: str, token: str | None) -> Reply:
        with self.changed:
            if sid not in self.agent_services:
                return _text(404, f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the '
                                  "service name.")
            denied = self._denied(token, "service", "write", self.services[AGENT][sid]["Service"])
            if denied:
                return denied
            self.agent_services.discard(sid)
            self._bump()
            self.services[AGENT].pop(sid, None)
            cs = self.checks.get(AGENT, {})
            for k in [k for k, c in cs.items() if c["ServiceID"] == sid]:
                del cs[k]
        return Reply(200, b"", {"Content-Type": "text/plain"})

    # --- KV --------------------------------------------------------------------------
    def _kv(self, req: Request, token: str | None, key: str) -> Reply:
        if req.method == "GET":
            self._block(req)
            with self.lock:
                if "keys" in req.query:
                    sep = req.query.get("separator", "")
                    out: list[str] = []
                    for k in sorted(self.kv):
                        if not k.startswith(key):
                            continue
                        if sep and sep in k[len(key):]:
                            k = k[:len(key) + k[len(key):].index(sep) + len(sep)]
                        if k not in out:
                            out.append(k)
                    allowed = [k for k in out if self._may(token, "key", "read")]
                    if not allowed:
                        return Reply(404, b"", self._headers(len(allowed) != len(out)))
                    return Reply(200, allowed, self._headers(len(allowed) != len(out)))
                if "recurse" in req.query:
                    found = [self._kv_view(k) for k in sorted(self.kv) if k.startswith(key)]
                    allowed = found if self._may(token, "key", "read") else []
                    if not allowed:
                        return Reply(404, b"", self._headers(len(allowed) != len(found)))
                    return Reply(200, allowed, self._headers(len(allowed) != len(found)))
                denied = self._denied(token, "key", "read", key)
                if denied:
                    return denied
                if key not in self.kv:
                    return Reply(404, b"", self._headers())
                if "raw" in req.query:
                    return Reply(200, self.kv[key]["Value"] or b"", {**self._headers(),
                                                                     "Content-Type": "text/plain; charset=utf-8"})
                return Reply(200, [self._kv_view(key)], self._headers())
        if req.method == "PUT":
            denied = self._denied(token, "key", "write", key)
            if denied:
                return denied
            if not key:
                return _text(400, "Missing key name")
            try:
                flags = int(req.query.get("flags") or 0)
                cas = int(req.query["cas"]) if "cas" in req.query else None
            except ValueError:
                return _text(400, "Invalid flags or cas index")
            if len(req.body) > 512 * 1024:
                return _text(413, "Request body too large, max size: 524288 bytes")
            with self.changed:
                cur = self.kv.get(key)
                if cas is not None and ((cas == 0 and cur is not None) or
                                        (cas != 0 and (cur is None or cur["ModifyIndex"] != cas))):
                    return Reply(200, False)
                idx = self._bump()
                self.kv[key] = {"Key": key, "Value": req.body, "Flags": flags, "LockIndex": 0,
                                "CreateIndex": cur["CreateIndex"] if cur else idx, "ModifyIndex": idx}
            return Reply(200, True)
        if req.method == "DELETE":
            denied = self._denied(token, "key", "write", key)
            if denied:
                return denied
            try:
                cas = int(req.query["cas"]) if "cas" in req.query else None
            except ValueError:
                return _text(400, "Invalid cas index")
            with self.changed:
                if "recurse" in req.query:
                    gone = [k for k in self.kv if k.startswith(key)]
                else:
                    cur = self.kv.get(key)
                    if cas is not None and (cur is None or cur["ModifyIndex"] != cas):
                        return Reply(200, False)
                    gone = [key] if cur else []
                for k in gone:
                    del self.kv[k]
                self._bump()
            return Reply(200, True)
        return _text(405, "method not allowed")

    def _kv_view(self, key: str) -> dict[str, Any]:
        e = self.kv[key]
        return {"LockIndex": e["LockIndex"], "Key": key, "Flags": e["Flags"],
                "Value": base64.b64encode(e["Value"]).decode() if e["Value"] else None,
                "CreateIndex": e["CreateIndex"], "ModifyIndex": e["ModifyIndex"]}

    # --- direct access for tests (bypasses HTTP, faults and ACL) ---------------
    def put_service(self, node: str, address: str, service: dict[str, Any], node_meta: dict[str, str] | None = None,
                    check: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"Node": node, "Address": address, "NodeMeta": node_meta or {}, "Service": service}
        if check:
            body["Check"] = check
        reply = self._register(body, DIRECT)
        assert reply.status == 200, reply.body

    def service_entries(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [self._catalog_entry(n, s) for n, svcs in self.services.items()
                    for s in svcs.values() if s["Service"] == name]

    def check_of(self, node: str, service_id: str) -> dict[str, Any] | None:
        """The service's check; its Definition without the zero-valued fields (the HTTP API sends them all)."""
        with self.lock:
            for c in self.checks.get(node, {}).values():
                if c["ServiceID"] == service_id:
                    out = dict(c)
                    out["Definition"] = {k: v for k, v in c["Definition"].items()
                                         if v not in ("", "0s", 0, None, False)}
                    return out
        return None

    def dump(self) -> str:
        with self.lock:
            return json.dumps({"nodes": self.nodes, "services": self.services}, indent=1, default=str)
