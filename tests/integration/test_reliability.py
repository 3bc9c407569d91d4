"""Reliability of the control plane in-process: supervised agent loops, re-asserting services,
and a store that is not the one the agents last saw."""

from __future__ import annotations

import asyncio

import grpc

from mesh.v1 import agent_pb2, agent_pb2_grpc, catalog_pb2, nodes_pb2, types_pb2
from meshagent import metrics
from tests.meshfix import Mesh, until


async def _status(agent) -> agent_pb2.AgentStatusResponse:
    import grpc
    async with grpc.aio.insecure_channel(f"unix:{agent.config.socket}") as ch:
        return await agent_pb2_grpc.AgentServiceStub(ch).Status(agent_pb2.AgentStatusRequest())


async def test_a_renew_loop_whose_disk_write_fails_keeps_renewing_and_says_degraded(tmp_path):
    m = await Mesh(tmp_path, lease_ttl_s=1.0, grace_s=1.0).start()
    try:
        a = await m.agent("disk")
        await a.uplink.expose(types_pb2.Service(name="web", port=8000))

        def full_disk(path):
            raise OSError(28, "No space left on device", str(path))
        a.gossip.save_peers = full_disk  # every renewal now ends in a failed file write
        failures = metrics.LOOP_FAILURES.get("renew")
        await until(lambda: a.supervisor.failures.get("renew", 0) >= 2, timeout=10)
        status = await _status(a)
        assert status.health.startswith("degraded: renew (OSError") and "No space left" in status.health
        assert status.counters["loop_failures"] >= 2
        assert metrics.LOOP_FAILURES.get("renew") >= failures + 2
        # the lease is still renewed: over three lease-plus-grace periods the node stays ready with its name
        loop = asyncio.get_running_loop()
        end = loop.time() + 3 * (1.0 + 1.0)
        while loop.time() < end:
            node = (await m.nodes().GetNode(nodes_pb2.GetNodeRequest(id_or_name=a.identity.node_id))).node
            assert node.state == types_pb2.NODE_STATE_READY
            await asyncio.sleep(0.1)
        listed = await m.catalog().ListServices(catalog_pb2.ListServicesRequest())
        assert [s.name for s in listed.services] == ["web"]
    finally:
        await m.close()


async def test_services_meshd_dropped_while_the_agent_stayed_connected_are_reasserted(tmp_path):
    m = await Mesh(tmp_path, lease_ttl_s=3, grace_s=3).start()
    try:
        a = await m.agent("steady")
        resp = await a.uplink.expose(types_pb2.Service(name="api", port=8000))
        a.remember(resp.service)
        reconnects = a.uplink.reconnects
        # what meshd's lease loop does to a node it judged gone past the grace period (a clock
        # step, a renewal lost): the names leave the catalog while the agent stays connected
        seen: list[int] = []
        a.catalog.services.listeners.append(lambda: seen.append(len(a.catalog.services.items)))
        removed = await m.coordinator.catalog.remove_node_services(a.identity.node_id)
        assert [s.name for s in removed] == ["api"]
        await until(lambda: 0 in seen, timeout=10)
        await until(lambda: "api" in a.catalog.services.items, timeout=10)
        listed = await m.catalog().ListServices(catalog_pb2.ListServicesRequest())
        assert [(s.name, s.node_id) for s in listed.services] == [("api", a.identity.node_id)]
        assert a.uplink.reconnects == reconnects  # re-asserted without a reconnect
    finally:
        await m.close()


async def test_new_service_names_start_with_a_letter_and_stored_ones_keep_working(tmp_path):
    import grpc

    from meshd.catalog import PREFIX
    m = await Mesh(tmp_path).start()
    try:
        a = await m.agent("gpu")
        with __import__("pytest").raises(grpc.aio.AioRpcError) as refused:
            await a.uplink.expose(types_pb2.Service(name="1web", port=80))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "must start with a letter" in refused.value.details()
        # a name stored before the rule: it resolves, and its node may still update it
        old = types_pb2.Service(name="2old", port=80, node_id=a.identity.node_id, node_name="gpu",
                                address=a.identity.mesh_address, protocol=types_pb2.PROTOCOL_TCP)
        await m.coordinator.store.put(PREFIX + "2old", old.SerializeToString())
        await until(lambda: "2old" in a.catalog.services.items)
        assert a.catalog.lookup("2old")[0].address == a.identity.mesh_address
        resp = await a.uplink.expose(types_pb2.Service(name="2old", port=81))
        assert resp.service.port == 81
    finally:
        await m.close()


async def test_a_store_restored_from_an_older_copy_is_resynced_in_full(tmp_path, caplog):
    import logging
    import shutil

    m = await Mesh(tmp_path).start()
    try:
        a = await m.agent("reader")
        b = await m.agent("writer")
        await b.uplink.expose(types_pb2.Service(name="kept", port=80))
        first = m.coordinator.store_mark.identity
        await m.stop_coordinator()
        backup = tmp_path / "backup"
        shutil.copytree(m.config.state_dir, backup)
        m.config.listen = f"127.0.0.1:{m.ports['listen']}"
        m.config.join_listen = f"127.0.0.1:{m.ports['join']}"
        await m.start()
        # after the backup: a name that the restored store will not have (once the agent is back)
        for _ in range(150):  # bounded: until the agent's channel is back (~15 s at most)
            try:
                await b.uplink.expose(types_pb2.Service(name="later", port=81))
                break
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the agent never reached the restarted meshd")
        await until(lambda: "later" in a.catalog.services.items)
        await m.stop_coordinator()
        db = m.config.state_dir / "state.db"
        for suffix in ("", "-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
            if (backup / ("state.db" + suffix)).exists():
                shutil.copy(backup / ("state.db" + suffix), db.with_name(db.name + suffix))
        caplog.set_level(logging.INFO)
        await m.start()
        assert m.coordinator.store_mark.identity.epoch == first.epoch + 1
        assert "restored from a backup" in caplog.text
        await until(lambda: "later" not in a.catalog.services.items, timeout=15)
        assert sorted(a.catalog.services.items) == ["kept"]
        assert a.catalog.services.store == m.coordinator.store_mark.identity.token
        assert a.catalog.lookup("later") == []
        resync = [r for r in caplog.records if "resyncing in full" in r.getMessage() and "services" in r.getMessage()]
        assert resync  # said, not silent
    finally:
        await m.close()
