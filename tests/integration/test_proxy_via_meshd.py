"""`meshctl proxy` with an admin certificate and no agent: each connection goes through meshd (CatalogService.Tunnel).

A real meshd (grpc.aio on port 0) and a real agent in this process; the
service is a real HTTP server on the agent's mesh address (loopback); meshctl
runs as a process, as a user types it.
"""

from __future__ import annotations

import asyncio
import os
import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from mesh.v1 import admission_pb2, catalog_pb2, catalog_pb2_grpc, types_pb2
from meshcore import pki
from testbed.localmesh import BIN
from tests.meshfix import mesh, until  # noqa: F401  (fixture)

PAGE = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nmlflow ui"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def http_server(host: str) -> tuple[asyncio.AbstractServer, int]:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            w.close()  # a tunnel closed before its request
            return
        if head.startswith(b"POST /echo"):  # echo the rest until the caller half-closes
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        else:
            w.write(PAGE)
            await w.drain()
        w.close()
    srv = await asyncio.start_server(serve, host, 0)
    return srv, srv.sockets[0].getsockname()[1]


def env_for(mesh, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MESH_AGENT_SOCKET", "MESH_ADMIN", "MESH_ADMIN_CERT_DIR",
                                                             "MESH_COORDINATOR")}
    return {**env, "MESHCTL_CONFIG_DIR": str(tmp / "meshctl-config"), "GRPC_VERBOSITY": "ERROR",
            "MESHD_ADMIN_SOCKET": mesh.config.admin_socket, **extra}


async def meshctl(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(str(BIN / "meshctl"), *args, env=env, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 60)
    return p.returncode, out.decode(), err.decode()


async def admin_cert(mesh, tmp: Path, name: str = "ops") -> dict[str, str]:
    """`meshctl admin cert` on the main node; the environment of a laptop holding only that certificate."""
    rc, _, err = await meshctl("admin", "cert", name, "--out", str(tmp / name), env=env_for(mesh, tmp))
    assert rc == 0, err
    return env_for(mesh, tmp, MESH_ADMIN_CERT_DIR=str(tmp / name), MESH_COORDINATOR=mesh.address,
                   MESHD_ADMIN_SOCKET=str(tmp / "no-admin-socket-here.sock"))


class Proxy:
    """`meshctl proxy ...` as a process, until stop()."""

    async def start(self, *args: str, env: dict[str, str]) -> Proxy:
        self.p = await asyncio.create_subprocess_exec(str(BIN / "meshctl"), "proxy", *args, env=env,
                                                      stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        line = (await asyncio.wait_for(self.p.stdout.readline(), 30)).decode()
        m = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> ", line)
        if not m:
            await self.stop()
            raise AssertionError(f"meshctl proxy said {line!r}: {(await self.p.stderr.read()).decode()}")
        self.line, self.port = line, int(m.group(1))
        return self

    async def stop(self) -> str:
        if self.p.returncode is None:
            self.p.terminate()
            await asyncio.wait_for(self.p.wait(), 10)
        return (await self.p.stderr.read()).decode()


def fetch(port: int, path: str = "/") -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read()


def echo(port: int, payload: bytes) -> bytes:
    """Send `payload` through the proxy, half-close, and read everything back (checks both directions)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"POST /echo HTTP/1.1\r\nHost: mlflow\r\n\r\n" + payload)
        c.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := c.recv(1 << 16):
            got += chunk
        return bytes(got)


def admin_channel(mesh, cert_dir: str) -> grpc.aio.Channel:
    d = Path(cert_dir)
    creds = grpc.ssl_channel_credentials((d / "ca.crt").read_bytes(), (d / "admin.key").read_bytes(),
                                         (d / "admin.crt").read_bytes())
    return grpc.aio.secure_channel(mesh.address, creds, options=[("grpc.ssl_target_name_override", pki.SERVER_NAME)])


async def refusal(stub, service: str) -> grpc.aio.AioRpcError:
    """Name a service on a new Tunnel call; the error meshd answers with."""
    call = stub.Tunnel()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call.write(catalog_pb2.TunnelData(service=service))
        await asyncio.wait_for(call.read(), 20)
    return e.value


async def test_an_admin_certificate_serves_the_page_through_meshd(mesh, tmp_path):
    node = await mesh.agent("central")
    srv, port = await http_server(node.identity.mesh_address)
    await node.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="mlflow", port=port)))
    env = await admin_cert(mesh, tmp_path)
    before = {d: metric("mesh_tunnel_bytes_total", direction=d) for d in ("to_service", "from_service")}
    gauge = metric("mesh_tunnels_open")
    proxy = await Proxy().start("mlflow", env=env)
    try:
        assert f"mlflow ({node.identity.mesh_address}:{port} on node central) through meshd at {mesh.address}" \
            in proxy.line
        for _ in range(3):  # a connection, and a tunnel, each
            assert await asyncio.to_thread(fetch, proxy.port) == b"mlflow ui"
        payload = os.urandom(3 * 1024 * 1024 + 17)  # many chunks each way, then a half-close
        assert await asyncio.to_thread(echo, proxy.port, payload) == payload
        await until(lambda: mesh.coordinator.tunnels.open == 0)
        assert metric("mesh_tunnels_open") == gauge
        assert metric("mesh_tunnel_bytes_total", direction="to_service") - before["to_service"] >= len(payload)
        assert metric("mesh_tunnel_bytes_total", direction="from_service") - before["from_service"] >= len(payload)
        # the service turns unhealthy while the proxy runs: meshd refuses the next connection, the proxy goes on
        await node.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(
            name="mlflow", port=port, health=types_pb2.HealthCheck(http_path="/health"),
            health_state=types_pb2.HEALTH_STATE_CRITICAL)))
        with pytest.raises(Exception):
            await asyncio.to_thread(fetch, proxy.port)
        assert proxy.p.returncode is None
    finally:
        err = await proxy.stop()
        srv.close()
    assert err.strip() == "connection 5: service 'mlflow' on node central is not healthy (its http path check " \
                          "fails): nothing to forward to (FAILED_PRECONDITION)", err


async def test_a_joined_machine_may_go_through_meshd_and_the_admin_socket_is_an_admin(mesh, tmp_path):
    node = await mesh.agent("central")
    srv, port = await http_server(node.identity.mesh_address)
    await node.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="mlflow", port=port)))
    env = env_for(mesh, tmp_path, MESH_AGENT_SOCKET=str(node.config.socket))
    proxy = await Proxy().start("mlflow", "--via-coordinator", env=env)
    try:
        assert f"through meshd at {mesh.config.admin_socket}" in proxy.line
        assert await asyncio.to_thread(fetch, proxy.port) == b"mlflow ui"
        await until(lambda: mesh.coordinator.tunnels.open == 0)
    finally:
        await proxy.stop()
        srv.close()


async def test_a_missing_or_unhealthy_name_is_one_line_and_exit_code_1(mesh, tmp_path):
    node = await mesh.agent("central")
    await node.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(
        name="webui", port=8080, health=types_pb2.HealthCheck(http_path="/health"),
        health_state=types_pb2.HEALTH_STATE_CRITICAL)))
    env = await admin_cert(mesh, tmp_path)
    for target, rule in (("langfuse", "error: no service named 'langfuse' in the mesh"),
                         ("webui", "error: service 'webui' on node central is not healthy")):
        rc, out, err = await meshctl("proxy", target, env=env)
        assert rc == 1 and err.startswith(rule) and len(err.strip().splitlines()) == 1, (rc, err)
        assert "Traceback" not in err and not out
    rc, _, err = await meshctl("proxy", "webui", "--via-coordinator",
                               env=env_for(mesh, tmp_path, MESHD_ADMIN_SOCKET=str(tmp_path / "none.sock")))
    assert rc == 1 and err.startswith("error: nothing to reach meshd through: no admin certificate"), err
    # meshd itself refuses them too (the name is checked again for every tunnel)
    async with admin_channel(mesh, env["MESH_ADMIN_CERT_DIR"]) as ch:
        stub = catalog_pb2_grpc.CatalogServiceStub(ch)
        e = await refusal(stub, "langfuse")
        assert e.code() == grpc.StatusCode.NOT_FOUND and "no service named 'langfuse'" in e.details()
        e = await refusal(stub, "webui")
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "is not healthy" in e.details()
        e = await refusal(stub, "Bad_Name")
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_node_certificate_and_a_revoked_admin_certificate_are_refused(mesh, tmp_path):
    node = await mesh.agent("central")
    srv, port = await http_server(node.identity.mesh_address)
    await node.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="mlflow", port=port)))
    try:
        e = await refusal(node.catalog_stub, "mlflow")  # the agent's own mTLS channel: a node certificate
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED and "is not an admin" in e.details()
        env = await admin_cert(mesh, tmp_path, "leaver")
        await mesh.admission().RevokeAdminCert(admission_pb2.RevokeAdminCertRequest(serial_or_name="leaver"))
        async with admin_channel(mesh, env["MESH_ADMIN_CERT_DIR"]) as ch:
            e = await refusal(catalog_pb2_grpc.CatalogServiceStub(ch), "mlflow")
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED and "was revoked" in e.details()
        assert mesh.coordinator.tunnels.open == 0
    finally:
        srv.close()


async def _connected(call, service: str) -> catalog_pb2.TunnelData:
    await call.write(catalog_pb2.TunnelData(service=service))
    return await asyncio.wait_for(call.read(), 20)


async def test_tunnels_are_bounded_per_caller_and_in_all(mesh, tmp_path):
    node = await mesh.agent("central")
    srv, port = await http_server(node.identity.mesh_address)  # holds a connection open until it gets a request
    await node.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="mlflow", port=port)))
    env = await admin_cert(mesh, tmp_path)
    tunnels = mesh.coordinator.tunnels
    tunnels.per_caller, tunnels.total = 2, 3
    refused, gauge = metric("mesh_tunnels_refused_total"), metric("mesh_tunnels_open")
    local = catalog_pb2_grpc.CatalogServiceStub(mesh._admin)  # the admin socket: caller "local"
    calls = []
    try:
        async with admin_channel(mesh, env["MESH_ADMIN_CERT_DIR"]) as ch:
            remote = catalog_pb2_grpc.CatalogServiceStub(ch)
            for stub in (local, local, remote):
                calls.append(stub.Tunnel())
                first = await _connected(calls[-1], "mlflow")
                assert (first.node_name, first.address, first.port) == ("central", node.identity.mesh_address, port)
            assert tunnels.open == 3 and metric("mesh_tunnels_open") == gauge + 3
            e = await refusal(local, "mlflow")
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "local already has 2 tunnels open" in e.details()
            e = await refusal(remote, "mlflow")
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "meshd has 3 tunnels open" in e.details()
            assert metric("mesh_tunnels_refused_total") == refused + 2
            calls.pop(0).cancel()
            await until(lambda: tunnels.open == 2)
            calls.append(local.Tunnel())
            await _connected(calls[-1], "mlflow")  # a slot freed is a slot to take
    finally:
        for call in calls:
            call.cancel()
        srv.close()
    await until(lambda: tunnels.open == 0)


async def test_a_tunnel_where_nothing_moves_closes(mesh):
    node = await mesh.agent("central")
    srv, port = await http_server(node.identity.mesh_address)  # says nothing until it gets a request
    await node.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="mlflow", port=port)))
    mesh.coordinator.tunnels.idle_s = 0.3
    idle_before = metric("mesh_tunnels_idle_closed_total")
    call = catalog_pb2_grpc.CatalogServiceStub(mesh._admin).Tunnel()
    try:
        await _connected(call, "mlflow")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(call.read(), 20)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert e.value.details() == "tunnel to 'mlflow' closed: no byte moved either way for 0.3 s"
        assert metric("mesh_tunnels_idle_closed_total") == idle_before + 1
        silent = catalog_pb2_grpc.CatalogServiceStub(mesh._admin).Tunnel()  # never names a service
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(silent.read(), 20)
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                       "tunnel closed: no service named within 0.3 s")
    finally:
        call.cancel()
        srv.close()
    await until(lambda: mesh.coordinator.tunnels.open == 0)


TOTAL = 256 * 1024 * 1024
MiB = 1024 * 1024


async def held_back(count: list[int]) -> None:
    """Return once count[0] stopped growing: unchanged over 20 looks in a row (at most 1,000 looks)."""
    last, same = -1, 0
    for _ in range(1000):
        same = same + 1 if count[0] == last else 0
        last = count[0]
        if same >= 20:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never held back: {count[0]} bytes")


async def test_a_caller_that_stops_reading_stops_the_service_not_meshds_memory(mesh):
    """The service offers 256 MiB; the caller reads meshd's first message and nothing more. What meshd
    takes from the service stays within a few MiB (gRPC and TCP windows), and the service is held back."""
    node = await mesh.agent("central")
    sent = [0]

    async def firehose(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        chunk = b"x" * 65536
        try:
            while sent[0] < TOTAL:
                w.write(chunk)
                await w.drain()
                sent[0] += len(chunk)
        except (ConnectionError, OSError):
            pass
        w.close()
    srv = await asyncio.start_server(firehose, node.identity.mesh_address, 0)
    port = srv.sockets[0].getsockname()[1]
    await node.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="firehose", port=port)))
    before = metric("mesh_tunnel_bytes_total", direction="from_service")
    call = catalog_pb2_grpc.CatalogServiceStub(mesh._admin).Tunnel()
    try:
        await _connected(call, "firehose")
        await held_back(sent)
        through = metric("mesh_tunnel_bytes_total", direction="from_service") - before
        assert sent[0] < 32 * MiB, sent[0]
        assert through < 16 * MiB, through
    finally:
        call.cancel()
        srv.close()
    await until(lambda: mesh.coordinator.tunnels.open == 0)


async def test_a_service_that_stops_reading_holds_the_caller_back(mesh):
    """The other way: the service accepts and never reads; the caller's writes stop within a few MiB."""
    node = await mesh.agent("central")
    accepted = asyncio.Event()

    async def deaf(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.set()
        await asyncio.sleep(3600)  # cancelled when the server closes
    srv = await asyncio.start_server(deaf, node.identity.mesh_address, 0)
    port = srv.sockets[0].getsockname()[1]
    await node.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="deaf", port=port)))
    before = metric("mesh_tunnel_bytes_total", direction="to_service")
    call = catalog_pb2_grpc.CatalogServiceStub(mesh._admin).Tunnel()
    written = [0]

    async def send() -> None:
        chunk = catalog_pb2.TunnelData(data=b"y" * 32768)
        while written[0] < TOTAL:
            await call.write(chunk)  # returns once gRPC took it: held back by meshd's flow control
            written[0] += 32768
    sender = None
    try:
        await _connected(call, "deaf")
        await asyncio.wait_for(accepted.wait(), 10)
        sender = asyncio.create_task(send())
        await held_back(written)
        through = metric("mesh_tunnel_bytes_total", direction="to_service") - before
        assert written[0] < 32 * MiB and through < 16 * MiB, (written[0], through)
        assert not sender.done()
    finally:
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        call.cancel()
        srv.close()
    await until(lambda: mesh.coordinator.tunnels.open == 0)
