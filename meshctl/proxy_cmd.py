"""`meshctl proxy NAME[:PORT] [--local-port N]`: a local port forwarded to a service by name.

As `kubectl port-forward` does for a pod, so a central service's UI opens in
a browser at http://127.0.0.1:N with no public port anywhere. The name is
looked up once in the catalog (through this machine's agent on a joined VM
or laptop, or meshd with an admin certificate); it must exist and pass its
health check (meshcore.forwarding), else one line says which and the exit
code is 1. Each accepted connection is then carried to the service:

- on a joined machine, spliced to the service's mesh address over the mesh's
  routes (WireGuard);
- with only an admin certificate (no agent socket here, or `--admin`, or
  `--via-coordinator`), through meshd: one Tunnel call per connection
  (meshd.tunnels), which meshd, on the main node and inside the mesh, opens to
  the service. meshd checks the name again for every connection; a refused
  connection is closed and one line on stderr says why, and the proxy goes on.

`pick` is pure (services in, the target or a typed error out); `Forwarder`
and `TunnelForwarder` are the asyncio splices, usable on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass

import typer

from mesh.v1 import catalog_pb2, types_pb2
from meshcore import forwarding, limits
from meshcore.errors import InvalidArgument
from meshcore.names import check_port

BUFFER = 64 * 1024


@dataclass(frozen=True)
class Target:
    name: str
    node: str
    address: str
    port: int


def parse(spec: str) -> tuple[str, int | None]:
    """NAME[:PORT], NAME may carry .mesh or .default.svc.cluster.local."""
    name, _, port = spec.partition(":")
    for suffix in (".default.svc.cluster.local", ".mesh"):
        name = name.removesuffix(suffix)
    if not name:
        raise InvalidArgument(f"invalid target {spec!r}: NAME[:PORT]")
    if not port:
        return name, None
    if not port.isdigit():
        raise InvalidArgument(f"invalid port {port!r} in {spec!r}: a number 1-65535")
    check_port(int(port))
    return name, int(port)


def pick(services: list[types_pb2.Service], name: str, port: int | None) -> Target:
    """The service to forward to, or one clear error."""
    svc = next((s for s in services if s.name == name), None)
    address, port = forwarding.target(svc, name, port)
    return Target(name, svc.node_name, address, port)


class Forwarder:
    """Accept on 127.0.0.1:local_port, splice each connection to host:port."""

    def __init__(self, host: str, port: int, local_port: int = 0, bind: str = "127.0.0.1") -> None:
        self.host, self.port, self.local_port, self.bind = host, port, local_port, bind
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, self.bind, self.local_port)
        self.local_port = self.server.sockets[0].getsockname()[1]
        return self.local_port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 10)
        except (OSError, asyncio.TimeoutError) as e:
            print(f"error: cannot reach {self.host}:{self.port}: {e}", file=sys.stderr)
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(BUFFER):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            dst.close()


class TunnelForwarder(Forwarder):
    """Accept on 127.0.0.1:local_port, carry each connection in its own Tunnel call through meshd.

    `open_call()` starts a Tunnel (CatalogServiceStub(channel).Tunnel). Each side
    reads its next chunk only once the other side took the previous one."""

    def __init__(self, open_call, service: str, port: int | None, local_port: int = 0,
                 bind: str = "127.0.0.1") -> None:
        super().__init__("", 0, local_port, bind)
        self.open_call, self.service, self.service_port = open_call, service, port or 0
        #: connections meshd refused or ended with an error (each reported on stderr)
        self.failures = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import grpc

        self.connections += 1
        n = self.connections
        call = self.open_call()
        up = None
        try:
            await call.write(catalog_pb2.TunnelData(service=self.service, port=self.service_port))
            if await call.read() is grpc.aio.EOF:  # meshd ended the call before connecting
                return
            up = asyncio.create_task(_to_tunnel(reader, call))
            while (msg := await call.read()) is not grpc.aio.EOF:
                writer.write(msg.data)
                await writer.drain()  # the next message is read only once the local side took this one
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.failures += 1
                print(f"connection {n}: {e.details()} ({e.code().name})", file=sys.stderr, flush=True)
        except (ConnectionError, OSError):
            pass
        finally:
            if up is not None:
                up.cancel()
                await asyncio.gather(up, return_exceptions=True)
            call.cancel()
            with contextlib.suppress(Exception):
                writer.close()


async def _to_tunnel(reader: asyncio.StreamReader, call) -> None:
    import grpc

    try:
        while data := await reader.read(limits.TUNNEL_CHUNK_BYTES):
            await call.write(catalog_pb2.TunnelData(data=data))  # waits on meshd's flow control
        await call.done_writing()  # meshd half-closes its connection to the service
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the call ended: reported by the side that reads it
    except (ConnectionError, OSError):
        call.cancel()


def _services(via_meshd: bool) -> list[types_pb2.Service]:
    from meshctl.client import call
    from meshctl.main import ENDPOINTS

    if not via_meshd:
        return list(call(ENDPOINTS.agent().ListServices, catalog_pb2.ListServicesRequest()).services)
    return list(call(ENDPOINTS.catalog().ListServices, catalog_pb2.ListServicesRequest()).services)


def proxy(target: str = typer.Argument(..., help="NAME[:PORT]: a service name; PORT defaults to its own"),
          local_port: int = typer.Option(0, "--local-port", "-p", help="local port (default: a free one, "
                                         "printed on start)"),
          address: str = typer.Option("127.0.0.1", "--address", help="local address to listen on"),
          via_coordinator: bool = typer.Option(False, "--via-coordinator",
                                               help="carry connections through meshd (admin certificate or "
                                                    "admin socket) even where an agent runs")) -> None:
    """Forward a local port to a service by name, through the mesh (like kubectl port-forward)."""
    from meshcore.errors import MeshError
    from meshctl.main import ENDPOINTS
    from meshctl.output import fail

    via_meshd = via_coordinator or not ENDPOINTS.to_agent()
    if via_meshd and not ENDPOINTS.cert_dir and not os.path.exists(ENDPOINTS.admin_socket):
        fail(f"nothing to reach meshd through: no admin certificate (MESH_COORDINATOR and MESH_ADMIN_CERT_DIR, "
             f"or `meshctl cluster use NAME`) and no meshd admin socket at {ENDPOINTS.admin_socket}")
    try:
        name, port = parse(target)
        t = pick(_services(via_meshd), name, port)
    except MeshError as e:
        fail(str(e))

    async def run() -> None:
        if via_meshd:
            from mesh.v1 import catalog_pb2_grpc
            stub = catalog_pb2_grpc.CatalogServiceStub(ENDPOINTS.admin_aio())
            fwd: Forwarder = TunnelForwarder(stub.Tunnel, t.name, port, local_port, address)
            how = f" through {ENDPOINTS.admin_door}"
        else:
            fwd, how = Forwarder(t.address, t.port, local_port, address), ""
        try:
            bound = await fwd.start()
        except OSError as e:
            fail(f"cannot listen on {address}:{local_port}: {e.strerror}")
        print(f"Forwarding from {address}:{bound} -> {t.name} ({t.address}:{t.port} on node {t.node}){how}",
              flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
