"""Consul sync: every exposed mesh service registered in the Consul catalog.

Model: each mesh node becomes a node without a Consul agent in Consul's
catalog: registered through /v1/catalog/register under the node's mesh name
and mesh address, node meta `managed-by: mesh` and `mesh-node-id`. Each of its services is registered on it with the
service name as ID, its port and tags, service meta (mesh-node-id, region,
protocol, the node's labels as `label-*`, managed-by) and one check
`mesh:<name>` carrying the service's HealthCheck definition (HTTP or TCP, as
given at expose) and a status from the mesh: passing while the node is
ready, critical while it is unreachable (so Consul DNS stops answering it
during the grace period). A service whose node left or vanished is
deregistered; a node with nothing left is deregistered whole.

consul-esm: the mesh, not Consul, runs these checks (the owning agent probes
the port and meshd writes the result), so our nodes never carry the
`external-node` meta that consul-esm selects its nodes by (nor
`external-probe`). consul-esm therefore neither probes our nodes nor
rewrites our check statuses, even though each check keeps its HTTP/TCP
definition for people reading the catalog. A node registered with those
meta by an older version is rewritten without them at the next reconcile.

Ownership: only nodes with node meta `managed-by=mesh` are read, changed or
deleted. A mesh node whose name is already a Consul node we did not create
(a real agent, another tool) is never written to; its services get a
per-service error instead.

Cost: the first reconcile (and each after `invalidate()`) reads the registry:
one call listing our nodes, one per node, one listing our checks. Later
reconciles diff the desired state against that cached view and only write;
writes are idempotent upserts, so a crash mid-way is repaired next time.

Drift: a thread follows the services of our nodes with a Consul blocking
query. When the catalog index moves it marks the view suspect and kicks the
SyncLoop; the next reconcile spends one call comparing service names and
tags with the view and reads everything again only if they differ. So an
entry deregistered or re-tagged by hand is repaired at once; an edit that
keeps names and tags (a port, a meta value, a check) waits for the periodic
resync, as Consul's own anti-entropy would.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from mesh.v1 import types_pb2
from meshcore.backoff import Backoff
from meshd.sync.base import (MANAGED_BY, Node, Service, SyncReport, service_address, service_is_healthy,
                             service_is_live)
from meshd.sync.consul_client import ConsulAPI, ConsulConfig

log = logging.getLogger(__name__)

OWNER_META = {"managed-by": MANAGED_BY}
CHECK_PREFIX = "mesh:"
DEFAULT_INTERVAL_S = 10
# Consul meta: at most 64 pairs; keys up to 128 of [A-Za-z0-9_-]; values up to 512 characters.
_META_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")
MAX_META = 64


def meta_key(label: str) -> str:
    return ("label-" + _META_KEY_BAD.sub("_", label))[:128]


@dataclass
class Entry:
    """One service registration as Consul holds it, reduced to the fields we own."""

    node: str
    node_address: str
    node_meta: dict[str, str]
    service: dict[str, Any]
    check: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        b: dict[str, Any] = {"Node": self.node, "Address": self.node_address, "NodeMeta": self.node_meta,
                             "Service": self.service}
        if self.check is not None:
            b["Check"] = self.check
        return b


def _normal_service(s: dict[str, Any]) -> dict[str, Any]:
    return {"ID": s.get("ID"), "Service": s.get("Service"), "Tags": list(s.get("Tags") or []),
            "Address": s.get("Address") or "", "Port": int(s.get("Port") or 0), "Meta": dict(s.get("Meta") or {})}


def go_duration(seconds: int) -> str:
    """Seconds as Go's time.Duration prints them ("10s", "1m30s", "1h0m0s"), which is how
    Consul returns a check's Interval; anything else would look like drift on every read."""
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    return f"{m}m{s}s" if m else f"{s}s"


def _normal_check(c: dict[str, Any] | None) -> dict[str, Any] | None:
    if c is None:
        return None
    d = c.get("Definition") or {}
    # Consul returns every definition field, zero-valued ones included ("Interval": "0s"
    # on a check with no probe): only a probe and its interval are ours to compare.
    probe = {k: d[k] for k in ("HTTP", "TCP") if d.get(k)}
    if probe:
        probe["Interval"] = d.get("Interval") or ""
    return {"CheckID": c.get("CheckID"), "Name": c.get("Name"), "ServiceID": c.get("ServiceID") or "",
            "Status": c.get("Status"), "Definition": probe}


def desired_entries(services: list[Service], nodes: dict[str, Node]) -> tuple[dict[tuple[str, str], Entry],
                                                                               dict[str, str]]:
    """The registrations the catalog asks for, keyed (node name, service id), and per-service errors."""
    want: dict[tuple[str, str], Entry] = {}
    errors: dict[str, str] = {}
    for svc in services:
        if not service_is_live(svc, nodes):
            continue
        node = nodes[svc.node_id]
        addr = service_address(svc, nodes)
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            errors[svc.name] = f"cannot register {svc.name} in Consul: node {node.name} has no valid mesh address"
            continue
        host = f"[{addr}]" if ip.version == 6 else addr
        meta = {"mesh-node-id": node.id, "region": node.region, "managed-by": MANAGED_BY,
                "protocol": "udp" if svc.protocol == types_pb2.PROTOCOL_UDP else "tcp"}
        for k in sorted(node.labels):
            if len(meta) >= MAX_META:
                break  # Consul refuses more than 64 meta pairs; the rest stay in the mesh only
            meta[meta_key(k)] = node.labels[k][:512]
        definition: dict[str, str] = {}
        interval = go_duration(svc.health.interval_s or DEFAULT_INTERVAL_S)
        kind = svc.health.WhichOneof("kind") if svc.HasField("health") else None
        if kind == "http_path":
            path = svc.health.http_path if svc.health.http_path.startswith("/") else "/" + svc.health.http_path
            definition = {"HTTP": f"http://{host}:{svc.port}{path}", "Interval": interval}
        elif kind == "tcp" and svc.health.tcp:
            definition = {"TCP": f"{host}:{svc.port}", "Interval": interval}
        check = {"CheckID": CHECK_PREFIX + svc.name, "Name": f"mesh health of {svc.name}", "ServiceID": svc.name,
                 "Status": "passing" if service_is_healthy(svc, nodes) else "critical", "Definition": definition}
        service = {"ID": svc.name, "Service": svc.name, "Tags": list(svc.tags), "Address": addr,
                   "Port": int(svc.port), "Meta": meta}
        # No "external-node"/"external-probe": consul-esm would take over our checks (module docstring).
        node_meta = {**OWNER_META, "mesh-node-id": node.id}
        want[(node.name, svc.name)] = Entry(node.name, addr, node_meta, service, check)
    return want, errors


@dataclass
class RemoteView:
    """What Consul holds on the nodes we manage, as last read or written."""

    nodes: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)  # name -> (address, meta)
    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    checks: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (node, service id)
    foreign: set[str] = field(default_factory=set)  # node names Consul has that are not ours


def _tag_summary(services: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for s in services:
        out.setdefault(s.get("Service") or "", set()).update(s.get("Tags") or [])
    return {k: sorted(v) for k, v in out.items()}


class ConsulTarget:
    """SyncTarget for the Consul catalog."""

    name = "consul"

    def __init__(self, config: ConsulConfig | None = None) -> None:
        self.config = config or ConsulConfig()
        self._api: ConsulAPI | None = None
        self._view: RemoteView | None = None
        self._checked_nodes: set[str] = set()
        self._kick: Callable[[], None] = lambda: None
        self._suspect = False  # the watch saw the catalog change: check our entries
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    def set_kick(self, kick: Callable[[], None]) -> None:
        self._kick = kick

    def _start_follow(self) -> None:
        if not self.config.watch or (self._follower is not None and self._follower.is_alive()):
            return
        self._stop = threading.Event()
        self._follower = threading.Thread(target=self._follow, args=(self.api, self._stop),
                                          name="consul-watch", daemon=True)
        self._follower.start()

    def _follow(self, api: ConsulAPI, stop: threading.Event) -> None:
        """Blocking queries on the services of our nodes; any change marks the view suspect.
        Our own writes wake it too: the reconcile that follows spends one call to see
        that nothing else changed."""
        index: str | None = None
        backoff = Backoff(initial=1.0, maximum=30.0, jitter=0.2)
        while not stop.is_set():
            try:
                new_index = api.wait_for_change(OWNER_META, index, self.config.watch_wait_s)
            except Exception as e:
                if backoff.attempts == 0:
                    log.info("consul watch failed (%s); retrying", e)
                stop.wait(backoff.next())
                continue
            backoff.reset()
            if index is not None and new_index != index and not stop.is_set():
                self._suspect = True
                self._kick()
            index = new_index

    @property
    def api(self) -> ConsulAPI:
        if self._api is None:
            self._api = ConsulAPI(self.config)
        return self._api

    def invalidate(self) -> None:
        self._view = None

    async def verify(self) -> dict[str, Any]:
        """One call to check that Consul answers and accepts the token (clear error if not)."""
        return await self.api.agent_self()

    async def close(self) -> None:
        # A blocking query in flight cannot be interrupted; the thread ends when it returns.
        self._stop.set()
        if self._api is not None:
            self._api.close()
            self._api = None

    async def _read(self) -> RemoteView:
        view = RemoteView()
        _, nodes = await self.api.nodes(OWNER_META)
        for n in nodes or []:
            name = n["Node"]
            view.nodes[name] = (n.get("Address", ""), dict(n.get("Meta") or {}))
            data = await self.api.node(name)
            for sid, s in ((data or {}).get("Services") or {}).items():
                view.services[(name, sid)] = _normal_service(s)
        for c in await self.api.checks(OWNER_META):
            if c.get("CheckID", "").startswith(CHECK_PREFIX):
                view.checks[(c["Node"], c.get("ServiceID") or "")] = _normal_check(c) or {}
        self._checked_nodes = set()
        return view

    async def reconcile(self, services: list[Service], nodes: dict[str, Node]) -> SyncReport:
        api = self.api
        calls0, writes0 = api.calls, api.writes
        report = SyncReport()
        try:
            if self._view is not None and self._suspect:
                self._suspect = False
                seen = await api.service_tags(OWNER_META)
                if _tag_summary(self._view.services.values()) != {k: sorted(set(v)) for k, v in seen.items()}:
                    self._view = None  # changed by someone else: read it all
            if self._view is None:
                self._view = await self._read()
                self._start_follow()
            await self._apply(self._view, services, nodes, report)
        except BaseException:
            # Unknown how much was applied: read Consul again next time.
            self._view = None
            raise
        finally:
            report.api_calls = api.calls - calls0
            report.writes = api.writes - writes0
        return report

    async def _apply(self, view: RemoteView, services: list[Service], nodes: dict[str, Node],
                     report: SyncReport) -> None:
        api = self.api
        want, report.errors = desired_entries(services, nodes)
        # A desired node name Consul already has but we did not create is someone else's.
        for node_name in sorted({n for n, _ in want} - set(view.nodes) - view.foreign - self._checked_nodes):
            data = await api.node(node_name)
            self._checked_nodes.add(node_name)
            if data and (data.get("Node") or {}).get("Meta", {}).get("managed-by") != MANAGED_BY:
                view.foreign.add(node_name)
        for (node_name, sid), entry in sorted(want.items()):
            if node_name in view.foreign:
                report.errors[sid] = (f"cannot register {sid} in Consul: node name {node_name} belongs to a "
                                      "Consul node the mesh does not manage (no meta managed-by=mesh)")
                continue
            have_node = view.nodes.get(node_name)
            same = (have_node == (entry.node_address, entry.node_meta)
                    and view.services.get((node_name, sid)) == _normal_service(entry.service)
                    and view.checks.get((node_name, sid)) == _normal_check(entry.check))
            if same:
                continue
            await api.register(entry.body())
            existed = (node_name, sid) in view.services
            view.nodes[node_name] = (entry.node_address, dict(entry.node_meta))
            view.services[(node_name, sid)] = _normal_service(entry.service)
            view.checks[(node_name, sid)] = _normal_check(entry.check) or {}
            (report.updated if existed else report.created).append(f"{node_name}/{sid}")
        # Remove what we registered and is no longer wanted, whole nodes first.
        wanted_nodes = {n for n, _ in want if n not in view.foreign}
        for node_name in sorted(set(view.nodes) - wanted_nodes):
            await api.deregister(node_name)
            for key in [k for k in view.services if k[0] == node_name]:
                del view.services[key]
                view.checks.pop(key, None)
                report.deleted.append(f"{key[0]}/{key[1]}")
            del view.nodes[node_name]
        for key in sorted(set(view.services) - set(want)):
            await api.deregister(key[0], key[1])
            del view.services[key]
            view.checks.pop(key, None)
            report.deleted.append(f"{key[0]}/{key[1]}")
