"""The local API on a unix socket: what meshctl on this VM talks to.

Writes (Expose, Unexpose) go to meshd through the uplink; on success the
service is remembered (or forgotten) for anti-entropy and applied to the
local catalog copy at once, so `meshctl` sees its own change before the
watch stream delivers it. Reads answer from the local copy, so they work
while meshd is away.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from mesh.v1 import agent_pb2, agent_pb2_grpc, catalog_pb2, nodes_pb2, types_pb2
from meshagent.desired import Desired
from meshagent.health import HealthChecker
from meshagent.uplink import RPC_TIMEOUT_S, Uplink
from meshagent.view import Catalog, strip_zone


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, uplink: Uplink, desired: Desired, catalog: Catalog, health: HealthChecker | None = None,
                 node_id: Callable[[], str] = str, dns_address: Callable[[], str] = str,
                 counters: Callable[[], dict[str, int]] = dict, health_line: Callable[[], str] = lambda: "ok") -> None:
        self.uplink = uplink
        self.desired = desired
        self.catalog = catalog
        self.health = health
        self._node_id = node_id
        self._dns_address = dns_address
        self._counters = counters
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
            counters=self._counters(), health=self._health_line())
