"""Item 9 (part): removing a node starts a gossip key rotation; the removed node never gets the new key."""

from __future__ import annotations

from mesh.v1 import admission_pb2, nodes_pb2
from tests.meshfix import until


async def test_removing_a_node_rolls_a_new_gossip_key_it_never_receives(mesh):
    a = await mesh.agent("alpha")
    b = await mesh.agent("beta")
    old = set(a.gossip.cfg.keys)
    await mesh.nodes().RemoveNode(nodes_pb2.RemoveNodeRequest(id_or_name="beta"))
    ring = await mesh.coordinator.gossip.refresh()
    assert ring["rotation"] and ring["rotation"]["stage"] == "installing"
    resp = await a.uplink.admission_stub.Renew(admission_pb2.RenewRequest(node=a.facts()))
    assert set(resp.gossip.keys) - old  # alpha (still a member) learns the new key over mTLS
    await until(lambda: set(a.gossip.cfg.keys) - old, timeout=15)
    assert not set(b.gossip.cfg.keys) - old  # beta, removed, never does
