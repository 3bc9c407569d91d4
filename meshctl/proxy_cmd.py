"""`meshctl proxy NAME[:PORT] [--local-port N]`: a local port forwarded to a service by name.

As `kubectl port-forward` does for a pod, so a central service's UI opens in
a browser at http://127.0.0.1:N with no public port anywhere. The name is
looked up once in the catalog (through this machine's agent on a joined VM
or laptop, or meshd with an admin certificate); it must exist and pass its
health check, else one line says which. Each accepted connection is then
spliced to the service's mesh address over the mesh's routes (WireGuard on
a joined machine).

`pick` is pure (services in, the target or a typed error out); `Forwarder`
is the asyncio splice, usable on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass

import typer

from mesh.v1 import types_pb2
from meshcore.errors import FailedPrecondition, InvalidArgument, NotFound
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
    if svc is None:
        raise NotFound(f"no service named {name!r} in the mesh (meshctl services lists them)")
    if svc.health.WhichOneof("kind") and svc.health_state != types_pb2.HEALTH_STATE_PASSING:
        raise FailedPrecondition(f"service {name!r} on node {svc.node_name} is not healthy (its "
                                 f"{svc.health.WhichOneof('kind').replace('_', ' ')} check fails): nothing to forward to")
    if svc.protocol == types_pb2.PROTOCOL_UDP:
        raise InvalidArgument(f"service {name!r} is UDP: meshctl proxy forwards TCP")
    if not svc.address:
        raise FailedPrecondition(f"service {name!r} has no address yet")
    return Target(name, svc.node_name, svc.address, port or svc.port)


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


def _services() -> list[types_pb2.Service]:
    from mesh.v1 import catalog_pb2
    from meshctl.client import call
    from meshctl.main import ENDPOINTS

    if ENDPOINTS.to_agent():
        return list(call(ENDPOINTS.agent().ListServices, catalog_pb2.ListServicesRequest()).services)
    return list(call(ENDPOINTS.catalog().ListServices, catalog_pb2.ListServicesRequest()).services)


def proxy(target: str = typer.Argument(..., help="NAME[:PORT]: a service name; PORT defaults to its own"),
          local_port: int = typer.Option(0, "--local-port", "-p", help="local port (default: the service's, "
                                         "else a free one)"),
          address: str = typer.Option("127.0.0.1", "--address", help="local address to listen on")) -> None:
    """Forward a local port to a service by name, through the mesh (like kubectl port-forward)."""
    from meshcore.errors import MeshError
    from meshctl.output import fail

    try:
        name, port = parse(target)
        t = pick(_services(), name, port)
    except MeshError as e:
        fail(str(e))

    async def run() -> None:
        fwd = Forwarder(t.address, t.port, local_port, address)
        try:
            bound = await fwd.start()
        except OSError as e:
            fail(f"cannot listen on {address}:{local_port}: {e.strerror}")
        print(f"Forwarding from {address}:{bound} -> {t.name} ({t.address}:{t.port} on node {t.node})", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
