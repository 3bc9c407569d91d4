"""The DNS responder's listeners: UDP and TCP on one address, asyncio (uvloop or not).

`DnsServer` binds UDP first and TCP on the same port (with port 0 the kernel
picks it). Every query goes to `Answerer.respond`; forwarded ones run as tasks
so a slow upstream never holds up other queries. TCP connections carry
length-prefixed messages (RFC 1035 4.2.2), answered in order; a connection
idle for `tcp_idle_timeout` or sending a zero-length message is closed.

A malformed or hostile packet can cost one reply, never the listener: the
answerer does not raise, and the datagram handler catches whatever slips
through.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct

from meshcore.clock import SYSTEM, Clock
from meshcore.errors import Unavailable

from meshagent.dns.answer import Answerer, Outcome
from meshagent.dns.config import DnsConfig
from meshagent.dns.forward import Forwarder
from meshagent.dns.metrics import DnsMetrics
from meshagent.dns.target import Lookup
from meshagent.dns.upstreams import cluster_upstreams, resolve_upstreams

log = logging.getLogger(__name__)

BIND_ATTEMPTS = 20  # with port 0: the UDP port may be taken for TCP; pick again


class DnsServer:
    def __init__(self, config: DnsConfig, lookup: Lookup, registry=None,
                 clock: Clock = SYSTEM,
                 rng: random.Random | None = None) -> None:
        self.config = config.validate()
        self._monotonic = clock.monotonic  # query latency
        self._metrics = DnsMetrics(registry)
        self._forwarder = Forwarder(config.upstream_timeout, rng)
        # Upstreams are filled in by start(): the loop check needs the bound port.
        self.answerer = Answerer(self.config, lookup, clock=clock)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()       # forwards and tcp connections, for stop()
        self._forwards = 0                             # udp forwards in flight
        self._connections: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def address(self) -> tuple[str, int]:
        return self.config.host, self.port

    def invalidate(self) -> None:
        """The catalog changed: drop cached answers."""
        self.answerer.invalidate()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for _ in range(BIND_ATTEMPTS if self.config.port == 0 else 1):
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpListener(self), local_addr=(self.config.host, self.config.port))
            except OSError as e:
                raise Unavailable(f"cannot listen for DNS on udp {self.config.host}:{self.config.port}: "
                                  f"{e.strerror or e}") from None
            port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._serve_tcp, self.config.host, port, reuse_address=True)
            except OSError as e:
                udp.close()
                last = e
                continue
            self._udp, self._tcp, self.port = udp, tcp, port
            break
        else:
            raise Unavailable(f"cannot listen for DNS on tcp {self.config.host}:{self.config.port}: "
                              f"{last.strerror if last else 'no port'}")
        self.answerer.upstreams = resolve_upstreams(self.config, self.port)
        self.answerer.cluster_upstreams = cluster_upstreams(self.config, self.port)
        log.info("dns responder on %s:%d (udp, tcp), forwarding to %s", self.config.host, self.port,
                 ", ".join(map(str, self.answerer.upstreams)) or "nobody")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._connections):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()
        self._udp = self._tcp = None

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- per query --------------------------------------------------------

    def _done(self, outcome: Outcome, started: float, result: str | None = None) -> None:
        self._metrics.observe(outcome.qtype, result or outcome.result, self._monotonic() - started)

    async def _forwarded(self, outcome: Outcome, data: bytes, udp: bool) -> bytes:
        reply = await self._forwarder.forward(data, outcome.forward_to)
        if reply is None:
            return self.answerer.servfail(outcome)
        return self.answerer.fit(outcome, reply, udp)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _forward_udp(self, outcome: Outcome, data: bytes, addr, started: float) -> None:
        try:
            reply = await self._forwarded(outcome, data, udp=True)
        finally:
            self._forwards -= 1
        servfail = reply[3] & 0x0F == 2
        if self._udp is not None:
            self._udp.sendto(reply, addr)
        self._done(outcome, started, "servfail" if servfail else None)

    def _datagram(self, data: bytes, addr) -> None:
        started = self._monotonic()
        try:
            outcome = self.answerer.respond(data, udp=True)
            if outcome.forward_to is not None:
                if self._forwards >= self.config.max_forwards:
                    self._udp.sendto(self.answerer.servfail(outcome), addr)
                    self._done(outcome, started, "servfail")
                else:
                    # Counted here, not in the task: a burst arrives before any task runs.
                    self._forwards += 1
                    self._spawn(self._forward_udp(outcome, data, addr, started))
                return
            if outcome.reply is not None:
                self._udp.sendto(outcome.reply, addr)
            self._done(outcome, started)
        except Exception:  # the listener outlives any single packet
            log.exception("dns: dropped a query from %s", addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.config.max_tcp_connections:
            writer.close()
            return
        self._connections.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), self.config.tcp_idle_timeout)
                    (length,) = struct.unpack("!H", head)
                    if length == 0:
                        break
                    data = await asyncio.wait_for(reader.readexactly(length), self.config.tcp_idle_timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    break
                started = self._monotonic()
                outcome = self.answerer.respond(data, udp=False)
                result = None
                reply = outcome.reply
                if outcome.forward_to is not None:
                    reply = await self._forwarded(outcome, data, udp=False)
                    result = "servfail" if reply[3] & 0x0F == 2 else None
                if reply is None:
                    self._done(outcome, started)
                    continue
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
                self._done(outcome, started, result)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("dns: closed a tcp connection after an error")
        finally:
            self._connections.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()


class _UdpListener(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr) -> None:
        self._server._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from clients that went away; nothing to do.
        pass
