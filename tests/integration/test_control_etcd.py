"""meshd on the etcd store: the same servicers, unchanged, over a real three-member etcd cluster.

Real meshd (gRPC on port 0) and real agents in-process, as in test_control.py,
with `--store etcd://...`; then the etcd leader is SIGKILLed and the control
plane keeps working.
"""

from __future__ import annotations

import asyncio

import pytest

from mesh.v1 import catalog_pb2, types_pb2
from tests.meshfix import HeldPauses, Mesh, synced, until

pytestmark = pytest.mark.slow


def svc(name: str, port: int = 8000) -> catalog_pb2.ExposeRequest:
    return catalog_pb2.ExposeRequest(service=types_pb2.Service(name=name, port=port))


@pytest.fixture
async def mesh_on_etcd(tmp_path, cluster):
    m = await Mesh(tmp_path, store=cluster.url + "/control-test").start()
    try:
        yield m
    finally:
        await m.close()


async def test_join_expose_watch_and_survive_the_etcd_leader_dying(mesh_on_etcd, cluster):
    mesh = mesh_on_etcd
    assert mesh.coordinator.store.describe.startswith("etcd:")
    a = await mesh.agent("alpha")
    b = await mesh.agent("beta")
    await a.catalog_stub.Expose(svc("qwen-coder"))
    await until(lambda: "qwen-coder" in b.catalog.services.items)
    listed = await mesh.catalog().ListServices(catalog_pb2.ListServicesRequest())

    cluster.kill(cluster.leader_index())
    for _ in range(100):  # bounded: writes resume once the members elect a new leader
        try:
            await a.catalog_stub.Expose(svc("after-failover"))
            break
        except Exception:
            await asyncio.sleep(0.1)
    await until(lambda: "after-failover" in b.catalog.services.items, timeout=15)

    # a watcher resuming from before the failover gets exactly what it missed
    events = await mesh.watch_until_synced(listed.revision)
    # (an Expose retried after an unconfirmed attempt may have written twice: the same PUT again)
    assert events[-1] == ("EVENT_TYPE_SYNCED", "")
    assert set(events[:-1]) == {("EVENT_TYPE_PUT", "after-failover")}
    # the state lives in etcd, under the mesh's key prefix
    kvs, _ = await mesh.coordinator.store.range("/")
    assert kvs and all(not kv.key.startswith("/control-test") for kv in kvs)


async def test_two_replicas_share_renewals_so_the_leader_never_expires_a_live_node(tmp_path, cluster):
    """An agent renews with replica B; replica A (leading) must still see it alive."""
    from mesh.v1 import nodes_pb2
    from tests.meshfix import manual_clock
    clock = manual_clock()
    a = Mesh(tmp_path / "a", clock=clock, store=cluster.url + "/replicas", lease_ttl_s=10, grace_s=10)
    await a.start()
    b = Mesh(tmp_path / "b", clock=clock, store=cluster.url + "/replicas", lease_ttl_s=10, grace_s=10)
    import shutil
    shutil.copytree(tmp_path / "a" / "meshd", tmp_path / "b" / "meshd", dirs_exist_ok=True)  # one mesh CA
    await b.start()
    try:
        agent = await b.agent("roamer")           # joins at replica B; renewals below go to B only
        for t in agent._tasks:                    # the test drives renewals itself, on the fake clock
            t.cancel()
        for _ in range(4):
            clock.advance(6)                      # beyond the lease, were renewals not shared
            await b.coordinator.nodes.renew(agent.identity.node_id, types_pb2.Node())
            await b.coordinator.liveness.flush()  # B's digest of renewals (its lease tick writes it)
            await a.coordinator.leases.check()    # A judges liveness
        node = (await a.nodes().GetNode(nodes_pb2.GetNodeRequest(id_or_name="roamer"))).node
        assert node.state == types_pb2.NODE_STATE_READY
        clock.advance(11)                         # now it really stopped renewing
        await a.coordinator.leases.check()
        node = (await a.nodes().GetNode(nodes_pb2.GetNodeRequest(id_or_name="roamer"))).node
        assert node.state == types_pb2.NODE_STATE_UNREACHABLE
    finally:
        await b.close()
        await a.close()


async def test_a_paused_batch_watcher_on_etcd_gets_what_changed_meanwhile_as_one_message(mesh_on_etcd, monkeypatch):
    """etcd hands a watcher one revision at a time; what arrives while a batch stream pauses
    after sending still goes out together."""
    mesh = mesh_on_etcd
    pauses = HeldPauses(monkeypatch)
    a = await mesh.agent("writer")
    stream = mesh.catalog().WatchServices(types_pb2.WatchRequest(batch=True))
    events = await synced(stream)
    pauses.armed.set()
    await a.catalog_stub.Expose(svc("first", 7000))
    assert (await asyncio.wait_for(anext(events), 10)).service.name == "first"  # at once, alone
    await asyncio.wait_for(pauses.paused.wait(), 10)
    for name, port in (("b", 7001), ("c", 7002), ("b", 7003)):
        await a.catalog_stub.Expose(svc(name, port))
    pauses.release.set()
    grouped = await asyncio.wait_for(anext(events), 10)
    stream.cancel()
    assert [(s.name, s.port) for s in grouped.services] == [("c", 7002), ("b", 7003)]
