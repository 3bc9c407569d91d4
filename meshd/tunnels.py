"""Tunnels: a TCP connection from meshd to a service, carried in one gRPC stream for an admin.

`meshctl proxy` on a machine that has an admin certificate but is not in the
mesh has no route to a service's mesh address; meshd, on the main node with
the mesh's data plane, has. One Tunnel call is one TCP connection:

1. the first message names the service (and optionally a port of its node);
   meshd looks it up in the catalog (meshcore.forwarding.target: it must exist,
   pass its health check and be TCP), connects to the node's mesh address, and
   answers with one message naming where it connected;
2. then bytes go both ways, at most TUNNEL_CHUNK_BYTES per message. Each side
   reads its next chunk only once the previous one was taken by the other
   side (gRPC flow control one way, the TCP socket's drain the other), so a
   peer that stops reading stops the other side instead of filling meshd's
   memory: what meshd holds per tunnel is a chunk and the transports' windows;
3. the end of the caller's messages half-closes the connection to the
   service; the service closing it ends the call (OK). A tunnel with no byte
   moving either way for `idle_s` ends with DEADLINE_EXCEEDED.

Only admins may open one (a node certificate gets PERMISSION_DENIED), at most
TUNNELS_PER_CALLER per caller and TUNNELS_TOTAL in all (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from mesh.v1 import catalog_pb2
from meshcore import forwarding, limits
from meshcore.clock import SYSTEM, Clock
from meshcore.errors import InvalidArgument, MeshError, ResourceExhausted, Unavailable
from meshcore.names import check_name, check_port
from meshd import metrics
from meshd.auth import Caller
from meshd.catalog import Catalog

log = logging.getLogger("meshd")


class Idle(MeshError):
    code = "DEADLINE_EXCEEDED"


class Tunnels:
    """Opens, bounds and splices tunnels; `serve(caller, context)` is one whole Tunnel call."""

    def __init__(self, catalog: Catalog, clock: Clock = SYSTEM, per_caller: int = limits.TUNNELS_PER_CALLER,
                 total: int = limits.TUNNELS_TOTAL, idle_s: float = limits.TUNNEL_IDLE_S,
                 connect_s: float = limits.TUNNEL_CONNECT_S) -> None:
        self.catalog = catalog
        self.clock = clock
        self.per_caller, self.total, self.idle_s, self.connect_s = per_caller, total, idle_s, connect_s
        self._open: dict[str, int] = {}
        for direction in ("to_service", "from_service"):  # the series exist from the start, at 0
            metrics.TUNNEL_BYTES.labels(direction)

    @property
    def open(self) -> int:
        return sum(self._open.values())

    @contextlib.contextmanager
    def _slot(self, caller: Caller):
        key = str(caller)
        if self._open.get(key, 0) >= self.per_caller:
            metrics.TUNNELS_REFUSED.inc()
            raise ResourceExhausted(f"{caller} already has {self.per_caller} tunnels open: at most "
                                    f"{self.per_caller} per caller")
        if self.open >= self.total:
            metrics.TUNNELS_REFUSED.inc()
            raise ResourceExhausted(f"meshd has {self.total} tunnels open: at most {self.total} in all")
        self._open[key] = self._open.get(key, 0) + 1
        metrics.TUNNELS_OPEN.inc()
        try:
            yield
        finally:
            metrics.TUNNELS_OPEN.dec()
            self._open[key] -= 1
            if not self._open[key]:
                del self._open[key]

    async def serve(self, caller: Caller, context: grpc.aio.ServicerContext) -> None:
        with self._slot(caller):
            try:
                first = await asyncio.wait_for(_read(context), self.idle_s)
            except asyncio.TimeoutError:
                metrics.TUNNELS_IDLE.inc()
                raise Idle(f"tunnel closed: no service named within {self.idle_s:g} s") from None
            if first is None:
                return  # the caller gave up before naming anything
            check_name(first.service, "service name")
            if first.port:
                check_port(first.port)
            svc = await self.catalog.get(first.service)
            host, port = forwarding.target(svc, first.service, first.port)
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_s)
            except (OSError, asyncio.TimeoutError) as e:
                why = getattr(e, "strerror", None) or f"no answer within {self.connect_s:g} s"
                raise Unavailable(f"cannot reach service {first.service!r} at {host}:{port} on node "
                                  f"{svc.node_name}: {why}") from None
            try:
                await context.write(catalog_pb2.TunnelData(service=svc.name, port=port, node_name=svc.node_name,
                                                           address=host))
                await self._splice(context, reader, writer, first.data, svc.name)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1)

    async def _splice(self, context, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      early: bytes, name: str) -> None:
        last = [self.clock.monotonic()]

        async def up() -> None:  # caller -> service
            data = early
            while True:
                if data:
                    writer.write(data)
                    await writer.drain()  # the next message is read only once the service took this one
                    metrics.TUNNEL_BYTES.labels("to_service").inc(len(data))
                    last[0] = self.clock.monotonic()
                msg = await _read(context)
                if msg is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                data = msg.data

        async def down() -> None:  # service -> caller
            while data := await reader.read(limits.TUNNEL_CHUNK_BYTES):
                last[0] = self.clock.monotonic()
                await context.write(catalog_pb2.TunnelData(data=data))  # waits on the caller's flow control
                metrics.TUNNEL_BYTES.labels("from_service").inc(len(data))
                last[0] = self.clock.monotonic()

        async def idle() -> None:
            while (left := last[0] + self.idle_s - self.clock.monotonic()) > 0:
                await asyncio.sleep(left)
            metrics.TUNNELS_IDLE.inc()
            raise Idle(f"tunnel to {name!r} closed: no byte moved either way for {self.idle_s:g} s")

        tasks = [asyncio.create_task(f()) for f in (down, up, idle)]
        try:
            pending = set(tasks)
            while tasks[0] in pending:  # until the service closes its side, or an error
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()
        except (ConnectionError, OSError) as e:
            raise Unavailable(f"connection to service {name!r} lost: {e.strerror or e}") from None
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _read(context) -> catalog_pb2.TunnelData | None:
    """The caller's next message, None at the end of its messages; each within its size bound."""
    msg = await context.read()
    if msg is grpc.aio.EOF:
        return None
    size, limit = msg.ByteSize(), limits.request_limit("Tunnel")
    if size > limit:
        raise InvalidArgument(f"Tunnel message is {size} bytes: at most {limit} accepted")
    return msg
