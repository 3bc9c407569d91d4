"""Health checks: a checked service is in DNS only while its check passes, and mirrors say so."""

from __future__ import annotations

import asyncio
import http.server
import threading

import grpc

from mesh.v1 import agent_pb2_grpc, catalog_pb2, types_pb2
from tests.meshfix import mesh, until  # noqa: F401  (fixture)


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


async def test_http_check_gates_dns(mesh):
    owner, other = await mesh.agent("owner"), await mesh.agent("other")
    svc = types_pb2.Service(name="vllm", port=0)
    # the server is not up yet: reserve its port on the owner's mesh address
    server = http.server.ThreadingHTTPServer((owner.identity.mesh_address, 0), Page)
    svc.port = server.server_address[1]
    svc.health.http_path = "/health"
    svc.health.interval_s = 1
    server.server_close()
    async with grpc.aio.insecure_channel(f"unix:{owner.config.socket}") as ch:
        resp = await agent_pb2_grpc.AgentServiceStub(ch).Expose(catalog_pb2.ExposeRequest(service=svc))
    assert resp.service.health_state == types_pb2.HEALTH_STATE_CRITICAL
    await until(lambda: "vllm" in other.catalog.services.items)
    await asyncio.sleep(1.5)
    assert other.catalog.lookup("vllm") == []                      # critical: not served
    server = http.server.ThreadingHTTPServer((owner.identity.mesh_address, svc.port), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        await until(lambda: other.catalog.lookup("vllm"), timeout=10)  # passing: served
        assert other.catalog.services.items["vllm"].health_state == types_pb2.HEALTH_STATE_PASSING
    finally:
        server.shutdown()
        server.server_close()
    await until(lambda: not other.catalog.lookup("vllm"), timeout=10)  # failing again: gone
