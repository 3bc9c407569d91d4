"""meshd exports Prometheus metrics on its configured local address."""

from __future__ import annotations

import asyncio

from testbed.localmesh import samples, scrape
from tests.meshfix import Mesh


async def test_meshd_metrics_count_rpcs_joins_and_catalog(tmp_path):
    m = Mesh(tmp_path)
    m.config.metrics = "127.0.0.1:0"
    await m.start()
    try:
        port = m.coordinator.ports["metrics"]
        before = await asyncio.to_thread(scrape, port)
        a = await m.agent("counted")
        from mesh.v1 import catalog_pb2, types_pb2
        await a.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="m", port=80)))
        await m.coordinator.leases.check()
        body = await asyncio.to_thread(scrape, port)

        def added(name: str, **labels: str) -> float:  # counters are the process's: earlier tests count too
            return sum(v for _, v in samples(body, name, **labels)) - sum(v for _, v in samples(before, name, **labels))
        assert added("mesh_joins_total", result="ok") == 1
        assert added("mesh_rpc_requests_total", code="OK", method="Expose") == 1
        assert samples(body, "mesh_nodes", state="ready") == [({"state": "ready"}, 1.0)]
        assert "mesh_watch_streams" in body and "mesh_lease_expiries_total" in body
        assert samples(body, "mesh_election_is_leader") == [({}, 1.0)] and "mesh_store_size_bytes" in body
        assert samples(body, "mesh_build_info", component="meshd")
    finally:
        await m.close()
