"""A stand-in for a Network Load Balancer in front of meshd replicas: one stable TCP address.

Each new connection goes to the first backend in `backends` that accepts it, as
a balancer sends new flows only to targets passing their health check; bytes are
passed through untouched (TLS ends at meshd). A backend that dies takes its
flows with it (their connections close), and clients reconnect through the same
address. `backends` may be reordered between connections. Runs in the caller's
asyncio loop; `close()` ends the listener and every flow.
"""

from __future__ import annotations

import asyncio
from collections import Counter


class Balancer:
    def __init__(self, backends: list[str], connect_timeout_s: float = 2.0) -> None:
        self.backends = list(backends)
        self.connect_timeout_s = connect_timeout_s
        self.server: asyncio.base_events.Server | None = None
        self.tasks: set[asyncio.Task] = set()
        self.address = ""
        #: connections passed to each backend, and those no backend accepted
        self.flows: Counter[str] = Counter()

    async def start(self) -> Balancer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for backend in list(self.backends):
            host, port = backend.rsplit(":", 1)
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, int(port)),
                                                    self.connect_timeout_s)
            except (OSError, asyncio.TimeoutError):
                continue
            self.flows[backend] += 1
            for src, dst in ((reader, up_w), (up_r, writer)):
                t = asyncio.create_task(self._pipe(src, dst))
                self.tasks.add(t)
                t.add_done_callback(self.tasks.discard)
            return
        self.flows["refused"] += 1
        writer.close()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            dst.close()

    async def close(self) -> None:
        if self.server:
            self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
