"""Agents gossiping on real UDP/TCP: names survive meshd's loss, crashes are still detected."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from mesh.v1 import admission_pb2, catalog_pb2, types_pb2
from meshcore.errors import InvalidArgument
from meshcore.gossip.records import make_record
from tests.meshfix import Mesh, until


def expose(agent, name: str, port: int = 8000):
    return agent.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name=name, port=port)))


async def crash(agent) -> None:
    """Die without a word: no leave, sockets gone."""
    for t in agent._tasks:
        t.cancel()
    await agent.gossip.node.stop(leave=False)
    agent.gossip = None


async def test_meshd_down_names_resolve_and_a_crash_is_detected(tmp_path):
    m = await Mesh(tmp_path).start()
    try:
        agents = [await m.agent(f"g{i}") for i in range(4)]
        await until(lambda: all(a.gossip.alive_count() == 4 for a in agents), timeout=15)
        await expose(agents[0], "on-zero")
        await expose(agents[1], "on-one")
        await until(lambda: all(a.catalog.lookup("on-zero") and a.catalog.lookup("on-one") for a in agents))
        await m.stop_coordinator()                     # meshd is gone
        await crash(agents[0])                         # and then a node crashes
        rest = agents[1:]
        await until(lambda: all(not a.catalog.lookup("on-zero") for a in rest), timeout=15)
        assert all(a.catalog.lookup("on-one") for a in rest)   # the living keep resolving
        assert all(agents[0].identity.node_id in a.gossip.down() for a in rest)
        m.agents.remove(agents[0])
        await agents[0].stop()
    finally:
        await m.close()


async def test_late_joiner_gets_the_catalog_by_push_pull_and_forged_records_are_refused(tmp_path):
    m = await Mesh(tmp_path).start()
    try:
        a, b = await m.agent("early-a"), await m.agent("early-b")
        await expose(a, "svc-a")
        await until(lambda: "svc-a" in b.gossip.services())
        late = await m.agent("late")
        await until(lambda: "svc-a" in late.gossip.services(), timeout=15)
        # a node forging a record for another node's name, signed with its own key
        rogue = ed25519.Ed25519PrivateKey.generate()
        forged = make_record(rogue, "svc-a", 10_000, b.identity.node_id,
                             types_pb2.Service(name="svc-a", port=1, address="6.6.6.6").SerializeToString())
        with pytest.raises(InvalidArgument, match="signature is not meshd's"):
            b.gossip.node.publish(forged)   # (forged records arriving on the wire: tests/unit/test_gossip_swim.py)
        await asyncio.sleep(0.5)
        assert all(ag.gossip.services()["svc-a"].address == a.identity.mesh_address for ag in (a, b, late))
    finally:
        await m.close()


async def test_agent_restarted_while_meshd_is_down_learns_the_catalog_from_peers(tmp_path):
    m = await Mesh(tmp_path).start()
    try:
        a, b = await m.agent("stay-a"), await m.agent("phoenix")
        await expose(a, "svc-a")
        await until(lambda: (tmp_path / "agent-phoenix" / "peers.json").exists() and b.catalog.lookup("svc-a"), timeout=15)
        await m.stop_coordinator()
        await b.stop()
        m.agents.remove(b)
        from meshagent.agent import Agent
        again = Agent(m.agent_config("phoenix"))   # no token: identity, keyring and peers from its state dir
        m.agents.append(again)
        await again.start()
        assert not again.catalog.services.synced   # nothing from meshd...
        await until(lambda: again.catalog.lookup("svc-a"), timeout=15)   # ...all from a peer, by push-pull
        assert again.catalog.lookup("svc-a")[0].address == a.identity.mesh_address
    finally:
        await m.close()


async def test_key_rotation_rolls_through_without_restarts(tmp_path):
    m = Mesh(tmp_path, lease_ttl_s=1.5)
    await m.start()
    try:
        agents = [await m.agent(f"k{i}") for i in range(3)]
        await until(lambda: all(a.gossip.alive_count() == 3 for a in agents), timeout=15)
        old_primary = agents[0].gossip.keyring.primary_id
        resp = await m.admission().RotateGossipKey(admission_pb2.RotateGossipKeyRequest())
        assert resp.stage == "installing"
        await until(lambda: all(a.gossip.keyring.primary_id != old_primary and len(a.gossip.cfg.keys) == 1
                                for a in agents), timeout=30)
        await expose(agents[0], "after-rotation")
        await until(lambda: all("after-rotation" in a.gossip.services() for a in agents))
        assert all(a.gossip.alive_count() == 3 for a in agents)  # nobody fell out during the rotation
    finally:
        await m.close()
