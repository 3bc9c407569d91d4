"""meshd exports Prometheus metrics on its configured local address."""

from __future__ import annotations

import asyncio
import urllib.request

from tests.meshfix import Mesh


async def test_meshd_metrics_count_rpcs_joins_and_catalog(tmp_path):
    m = Mesh(tmp_path)
    m.config.metrics = "127.0.0.1:0"
    await m.start()
    try:
        a = await m.agent("counted")
        from mesh.v1 import catalog_pb2, types_pb2
        await a.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="m", port=80)))
        await m.coordinator.leases.check()
        port = m.coordinator.ports["metrics"]
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                                       .read().decode())
        assert 'mesh_joins_total{result="ok"}' in body
        assert 'mesh_rpc_requests_total{code="OK",method="Expose"}' in body
        assert 'mesh_nodes{state="ready"} 1.0' in body
        assert "mesh_watch_streams" in body and "mesh_lease_expiries_total" in body
        assert "mesh_election_is_leader 1.0" in body and "mesh_store_size_bytes" in body
        assert 'mesh_build_info{component="meshd"' in body
    finally:
        await m.close()
