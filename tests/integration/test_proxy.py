"""`meshctl proxy`: the name is checked in the catalog, then a local port is spliced to the service.

The splice is measured against a direct connection to the same server in the
same run (first byte of an HTTP answer).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh.v1 import catalog_pb2, types_pb2
from meshcore.errors import FailedPrecondition, NotFound
from meshctl.proxy_cmd import Forwarder, parse, pick
from tests.meshfix import mesh, until  # noqa: F401  (fixture)

PAGE = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nmlflow ui"


async def http_server() -> tuple[asyncio.AbstractServer, int]:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(PAGE)
        await w.drain()
        w.close()
    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def first_byte_ms(port: int) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.1\r\nHost: mlflow\r\n\r\n")
    await w.drain()
    first = await r.read(1)
    ms = (time.perf_counter() - t0) * 1000
    rest = await r.read()
    w.close()
    return ms, first + rest


def test_parse_takes_dns_forms_and_ports():
    assert parse("mlflow") == ("mlflow", None)
    assert parse("mlflow.default.svc.cluster.local:5000") == ("mlflow", 5000)
    assert parse("langfuse.mesh:3000") == ("langfuse", 3000)


async def test_a_missing_or_unhealthy_name_is_one_clear_error(mesh):
    node = await mesh.agent("central")
    await node.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(
        name="webui", port=8080, health=types_pb2.HealthCheck(http_path="/health"),
        health_state=types_pb2.HEALTH_STATE_CRITICAL)))
    await node.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="mlflow", port=5000)))
    services = list((await mesh.catalog().ListServices(catalog_pb2.ListServicesRequest())).services)
    with pytest.raises(NotFound, match="no service named 'langfuse' in the mesh"):
        pick(services, "langfuse", None)
    with pytest.raises(FailedPrecondition, match="service 'webui' on node central is not healthy"):
        pick(services, "webui", None)
    t = pick(services, "mlflow", None)
    assert (t.node, t.port) == ("central", 5000) and t.address


async def test_the_local_port_serves_every_request_the_service_answers():
    """Each of 50 connections through the local port gets the service's whole page (the latency
    against a direct connection is measured in `make bench`, integrations.proxy_first_byte_ms)."""
    srv, port = await http_server()
    fwd = Forwarder("127.0.0.1", port)
    local = await fwd.start()
    try:
        for _ in range(50):
            _, body = await first_byte_ms(local)
            assert body.endswith(b"mlflow ui")
    finally:
        await fwd.stop()
        srv.close()
