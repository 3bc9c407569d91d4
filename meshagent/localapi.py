"""The agent's local API (AgentService) on a unix socket, for meshctl on this VM.

Reads come from the agent's live copy (they work while meshd is away);
writes are forwarded to meshd with the node's own certificate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from mesh.v1 import agent_pb2, agent_pb2_grpc, catalog_pb2, nodes_pb2, types_pb2
from meshagent.view import strip_zone

if TYPE_CHECKING:
    from meshagent.agent import Agent


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def _forward(self, call, request, context):
        try:
            return await call(request, timeout=10)
        except grpc.aio.AioRpcError as e:
            detail = e.details() or e.code().name
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                detail = f"meshd at {self.agent.config.coordinator} is unreachable ({detail}); nothing was changed"
            await context.abort(e.code(), detail)

    async def Expose(self, request, context):
        if request.service.health.WhichOneof("kind"):
            # Checked services start critical: out of DNS until the first check passes.
            states = self.agent.health.states if self.agent.health else {}
            request.service.health_state = states.get(request.service.name, types_pb2.HEALTH_STATE_CRITICAL)
        resp = await self._forward(self.agent.catalog_stub.Expose, request, context)
        self.agent.remember(resp.service)
        if self.agent.health:
            self.agent.health.forget(resp.service.name)  # check again now: the service may have changed
        self.agent.catalog.services.apply(1, resp.service, resp.service.revision)
        return resp

    async def Unexpose(self, request, context):
        resp = await self._forward(self.agent.catalog_stub.Unexpose, request, context)
        self.agent.forget(request.name)
        self.agent.catalog.services.apply(2, resp.service, resp.service.revision)
        return resp

    async def ListServices(self, request, context):
        view = self.agent.catalog.services
        return catalog_pb2.ListServicesResponse(services=sorted(view.items.values(), key=lambda s: s.name),
                                                revision=view.revision)

    async def ListNodes(self, request, context):
        view = self.agent.catalog.nodes
        return nodes_pb2.ListNodesResponse(nodes=sorted(view.items.values(), key=lambda n: n.name),
                                           revision=view.revision)

    async def Resolve(self, request, context):
        name = strip_zone(request.name)
        svc = self.agent.catalog.services.items.get(name)
        if svc is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service named {name!r} in the mesh")
        return agent_pb2.ResolveResponse(services=[svc])

    async def Status(self, request, context):
        a = self.agent
        node = a.catalog.nodes.items.get(a.identity.node_id) if a.identity else None
        return agent_pb2.AgentStatusResponse(
            node=node, coordinator=a.config.coordinator, connected=a.connected,
            catalog_revision=a.catalog.services.revision, services=len(a.catalog.services.items),
            nodes=len(a.catalog.nodes.items), dns_address=a.dns_address, last_contact=int(a.last_contact),
            counters=a.counters())
