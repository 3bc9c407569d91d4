"""Agents behind one stable address reach whichever meshd replica is alive, and resume where they were.

A performance cluster puts three meshd replicas (one etcd cluster, one CA)
behind a Network Load Balancer; agents know only its address. Here two real
replicas share a real three-member etcd, and testbed.balancer stands in
for the load balancer: each new connection goes to the first replica that
accepts it, as the balancer sends new flows only to targets passing their
health check. Replica A is stopped; agents reconnect through the same
address to replica B, and their watches continue from the revision they had
(no RESET, nothing lost).
"""

from __future__ import annotations

import asyncio
import shutil

import pytest

from mesh.v1 import catalog_pb2, types_pb2
from meshagent.agent import Agent
from testbed.balancer import Balancer
from tests.meshfix import Mesh, until

pytestmark = pytest.mark.slow


async def test_agents_fail_over_to_a_live_replica_and_resume_their_watch(tmp_path, cluster) -> None:
    a = await Mesh(tmp_path / "a", store=cluster.url + "/behind-lb").start()
    b = Mesh(tmp_path / "b", store=cluster.url + "/behind-lb")
    shutil.copytree(tmp_path / "a" / "meshd", tmp_path / "b" / "meshd", dirs_exist_ok=True)  # one mesh CA
    await b.start()
    api = await Balancer([a.address, b.address]).start()
    join = await Balancer([a.join_address, b.join_address]).start()
    agents: list[Agent] = []
    try:
        token = await a.token(uses=2)
        for name in ("alpha", "beta"):
            cfg = a.agent_config(name, token=token)
            cfg.coordinator, cfg.join_address = api.address, join.address  # they know only the balancer
            agent = Agent(cfg)
            agents.append(agent)
            await asyncio.wait_for(agent.start(), 20)
        alpha, beta = agents
        await alpha.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="before", port=1)))
        await until(lambda: "before" in beta.catalog.services.items)
        rev = beta.catalog.services.revision

        seen: list[int] = []
        apply = beta.catalog.services.apply

        def recording(event_type: int, obj, revision: int) -> None:
            seen.append(event_type)
            apply(event_type, obj, revision)
        beta.catalog.services.apply = recording  # type: ignore[method-assign]

        await a.stop_coordinator()  # replica A dies; the address stays
        for _ in range(100):  # bounded: the channel reconnects through the forwarder to B
            try:
                await alpha.catalog_stub.Expose(catalog_pb2.ExposeRequest(
                    service=types_pb2.Service(name="after", port=2)), timeout=2)
                break
            except Exception:
                await asyncio.sleep(0.1)
        await until(lambda: "after" in beta.catalog.services.items, timeout=20)
        assert "before" in beta.catalog.services.items
        assert beta.catalog.services.revision > rev
        assert types_pb2.EVENT_TYPE_RESET not in seen, "the watch resumed from its revision, not a full copy"
        assert alpha._reconnects >= 1 and beta._reconnects >= 1
    finally:
        for agent in agents:
            await agent.stop()
        await api.close()
        await join.close()
        await b.close()
        await a.close()
