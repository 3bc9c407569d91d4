"""The local API on a unix socket: what meshctl on this VM talks to.

Writes (Expose, Unexpose) go to meshd through the uplink; on success the
service is remembered (or forgotten) for anti-entropy and applied to the
local catalog copy at once, so `meshctl` sees its own change before the
watch stream delivers it. Reads answer from the local copy, so they work
while meshd is away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from mesh.v1 import agent_pb2, agent_pb2_grpc, catalog_pb2, nodes_pb2, types_pb2
from meshagent.desired import Desired
from meshagent.facts import Facts
from meshagent.health import HealthChecker
from meshagent.uplink import RPC_TIMEOUT_S, Uplink
from meshagent.view import Catalog, View, strip_zone

if TYPE_CHECKING:
    from meshagent.dataplane import DataPlane


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, uplink: Uplink, desired: Desired, catalog: Catalog, health: HealthChecker | None = None,
                 node_id: Callable[[], str] = str, dns_address: Callable[[], str] = str,
                 counters: Callable[[], dict[str, int]] = dict, facts: Callable[[], Facts] = Facts,
                 dataplane: Callable[[], DataPlane | None] = lambda: None,
                 health_line: Callable[[], str] = lambda: "ok") -> None:
        self.uplink = uplink
        self.desired = desired
        self.catalog = catalog
        self.health = health
        self._node_id = node_id
        self._dns_address = dns_address
        self._counters = counters
        self._facts = facts
        self._dataplane = dataplane
        self._health_line = health_line

    async def _forward(self, call, request, context):
        try:
            return await call(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            detail = e.details() or e.code().name
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                detail = f"meshd at {self.uplink.config.coordinator} is unreachable ({detail}); nothing was changed"
            await context.abort(e.code(), detail)

    async def Expose(self, request, context):
        if request.service.health.WhichOneof("kind"):
            # Checked services start critical: out of DNS until the first check passes.
            request.service.health_state = self.desired.health_state(request.service.name)
        resp = await self._forward(self.uplink.catalog_stub.Expose, request, context)
        self.desired.remember(resp.service)
        if self.health is not None:
            self.health.forget(resp.service.name)  # check again now: the service may have changed
        self.catalog.services.apply(types_pb2.EVENT_TYPE_PUT, resp.service, resp.service.revision)
        return resp

    async def Unexpose(self, request, context):
        # forgotten first: a re-assertion between meshd's delete and our answer must not bring it back
        held = self.desired.services.get(request.name)
        self.desired.forget(request.name)
        try:
            resp = await self._forward(self.uplink.catalog_stub.Unexpose, request, context)
        except BaseException:
            if held is not None:
                self.desired.remember(held)
            raise
        self.catalog.services.apply(types_pb2.EVENT_TYPE_DELETE, resp.service, resp.service.revision)
        return resp

    async def ListServices(self, request, context):
        view = self.catalog.services
        return catalog_pb2.ListServicesResponse(services=sorted(view.items.values(), key=lambda s: s.name),
                                                revision=view.revision)

    async def ListNodes(self, request, context):
        view = self.catalog.nodes
        return nodes_pb2.ListNodesResponse(nodes=sorted(view.items.values(), key=lambda n: n.name),
                                           revision=view.revision)

    async def WatchServices(self, request, context):
        async for kind, svc, rev in watch_view(self.catalog.services):
            yield catalog_pb2.ServiceEvent(type=kind, service=svc, revision=rev)

    async def WatchNodes(self, request, context):
        async for kind, node, rev in watch_view(self.catalog.nodes):
            yield nodes_pb2.NodeEvent(type=kind, node=node, revision=rev)

    async def Resolve(self, request, context):
        name = strip_zone(request.name)
        svc = self.catalog.services.items.get(name)
        if svc is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service named {name!r} in the mesh")
        return agent_pb2.ResolveResponse(services=[svc])

    async def Status(self, request, context):
        node_id = self._node_id()
        node = self.catalog.nodes.items.get(node_id) if node_id else None
        up = self.uplink
        return agent_pb2.AgentStatusResponse(
            node=node, coordinator=up.config.coordinator, connected=up.connected,
            catalog_revision=self.catalog.services.revision, services=len(self.catalog.services.items),
            nodes=len(self.catalog.nodes.items), dns_address=self._dns_address(), last_contact=int(up.last_contact),
            counters=self._counters(), facts=fact_table(f := self._facts()), fact_sources=f.sources,
            health=self._health_line())

    async def ListPeers(self, request, context):
        dp = self._dataplane()
        if dp is None:
            return agent_pb2.ListPeersResponse(data_plane=False, peers=[
                agent_pb2.Peer(node_id=n.id, name=n.name, mesh_address=n.mesh_address)
                for n in sorted(self.catalog.nodes.items.values(), key=lambda n: n.name) if n.id != self._node_id()])
        stats = await dp.peer_stats()
        peers = [self._peer(n, dp, stats) for n in sorted(self.catalog.nodes.items.values(), key=lambda n: n.name)
                 if n.id != self._node_id()]
        return agent_pb2.ListPeersResponse(data_plane=True, peers=peers)

    def _peer(self, node: types_pb2.Node, dp: DataPlane | None, stats: dict) -> agent_pb2.Peer:
        peer = agent_pb2.Peer(node_id=node.id, name=node.name, mesh_address=node.mesh_address)
        if dp is None:
            return peer
        path, key = dp.routes_to.get(node.name, (None, ""))
        if path is None:
            peer.path, peer.reason = "unreachable", dp.refused.get(node.name, "not planned yet")
            return peer
        peer.path, peer.reason, peer.via = path.kind, path.reason, path.via or ""
        st = stats.get(key)
        if st is not None:
            peer.endpoint = st.endpoint or ""
            peer.latest_handshake, peer.rx_bytes, peer.tx_bytes = st.last_handshake_s, st.rx_bytes, st.tx_bytes
        return peer

    async def Ping(self, request, context):
        target = strip_zone(request.target)
        nodes = self.catalog.nodes.items
        node = nodes.get(target) or next((n for n in nodes.values() if n.name == target), None)
        if node is None and target in self.catalog.services.items:
            node = nodes.get(self.catalog.services.items[target].node_id)
        if node is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no node or service named {target!r} in the mesh")
        if not node.gossip_port:
            # a node joins before its gossip listener starts and reports the port right after
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"node {node.name} has reported no gossip port to answer a ping: it runs "
                                "no gossip listener, or joined a moment ago (try again in a few seconds)")
        count = min(max(request.count or 3, 1), MAX_PINGS)
        dp = self._dataplane()
        peer = self._peer(node, dp, await dp.peer_stats() if dp else {})
        rtts, lost = await tcp_rtts(node.mesh_address, node.gossip_port, count)
        return agent_pb2.PingResponse(peer=peer, rtt_ms=rtts, lost=lost,
                                      probed=f"{node.mesh_address}:{node.gossip_port}")


MAX_PINGS = 20


async def watch_view(view: View):
    """(event type, object or None, revision) for a local watcher (meshctl --watch): RESET, the
    current set, SYNCED, then the difference at every change of the view. Changes that come while
    the watcher is slow are coalesced into one difference, so a slow reader costs no memory."""
    changed = asyncio.Event()
    view.listeners.append(changed.set)
    try:
        shown = dict(view.items)
        yield types_pb2.EVENT_TYPE_RESET, None, view.revision
        for key in sorted(shown):
            yield types_pb2.EVENT_TYPE_PUT, shown[key], view.revision
        yield types_pb2.EVENT_TYPE_SYNCED, None, view.revision
        while True:
            await changed.wait()
            changed.clear()
            now = dict(view.items)
            for key in sorted(now):
                if key not in shown or shown[key] != now[key]:
                    yield types_pb2.EVENT_TYPE_PUT, now[key], view.revision
            for key in sorted(set(shown) - set(now)):
                yield types_pb2.EVENT_TYPE_DELETE, shown[key], view.revision
            shown = now
    finally:
        view.listeners.remove(changed.set)


async def tcp_rtts(host: str, port: int, count: int, timeout_s: float = 2.0) -> tuple[list[float], int]:
    """Round trips over the mesh: the time to open a TCP connection to the peer's gossip port
    (SYN out, SYN-ACK back, through whatever path the data plane chose)."""
    rtts, lost = [], 0
    for _ in range(count):
        t0 = time.perf_counter()
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        except (OSError, asyncio.TimeoutError):
            lost += 1
            continue
        rtts.append(round((time.perf_counter() - t0) * 1000, 3))
        writer.close()
    return rtts, lost


def fact_table(f: Facts) -> dict[str, str]:
    out = {k: getattr(f, k) for k in ("cloud", "region", "zone", "instance_id", "instance_type", "lifecycle",
                                        "vpc_id", "vpc_cidr", "subnet_id", "private_address", "public_address",
                                        "project", "observed_address", "nat") if getattr(f, k)}
    if f.gpus is not None:
        out["gpus"] = f"{f.gpus.count} x {f.gpus.model} ({f.gpus.memory_mib} MiB)"
    return out
