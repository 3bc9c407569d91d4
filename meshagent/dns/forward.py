"""Forwarding a query to upstream resolvers.

Each upstream is tried in turn, each for at most `timeout` seconds: the query
goes out over UDP from a fresh socket (a random source port) with a fresh
random ID, and a reply is accepted only if it comes back on that socket with
that ID, QR set and the same question, which is what makes blind spoofing of
forwarded answers hard. A reply with TC set is fetched again over TCP from the
same upstream. SERVFAIL or REFUSED from an upstream, a timeout, or a network
error moves on to the next; when none answers, `forward` returns None and the
caller answers SERVFAIL. The client's own ID is put back on the reply.
"""

from __future__ import annotations

import asyncio
import random
import struct

from meshagent.dns.config import Upstream

_SERVFAIL, _REFUSED = 2, 5
MAX_MESSAGE = 65535


class Forwarder:
    def __init__(self, timeout: float, rng: random.Random | None = None) -> None:
        self.timeout = timeout
        # IDs must be unpredictable to an off-path attacker: SystemRandom by default.
        self._rng = rng or random.SystemRandom()

    async def forward(self, query: bytes, upstreams: tuple[Upstream, ...]) -> bytes | None:
        question = _question(query)
        if question is None:
            return None
        for upstream in upstreams:
            qid = self._rng.getrandbits(16).to_bytes(2, "big")
            outgoing = qid + query[2:]
            try:
                reply = await asyncio.wait_for(self._ask(upstream, outgoing, question), self.timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, EOFError):
                continue
            if reply is None or reply[3] & 0x0F in (_SERVFAIL, _REFUSED):
                continue
            return query[:2] + reply[2:]
        return None

    async def _ask(self, upstream: Upstream, outgoing: bytes, question: bytes) -> bytes | None:
        reply = await _udp(upstream, outgoing, question)
        if reply is not None and reply[2] & 0x02:  # TC: the full answer needs TCP
            reply = await _tcp(upstream, outgoing, question)
        return reply


def _matches(reply: bytes, outgoing: bytes, question: bytes) -> bool:
    return (len(reply) >= 12 + len(question) and reply[:2] == outgoing[:2] and bool(reply[2] & 0x80)
            and reply[4:6] == b"\x00\x01" and reply[12:12 + len(question)].lower() == question.lower())


class _UdpExchange(asyncio.DatagramProtocol):
    def __init__(self, outgoing: bytes, question: bytes) -> None:
        self.outgoing, self.question = outgoing, question
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        # Anything that is not the reply to our query is ignored, not fatal.
        if not self.done.done() and _matches(data, self.outgoing, self.question):
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def _udp(upstream: Upstream, outgoing: bytes, question: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _UdpExchange(outgoing, question), remote_addr=(upstream.host, upstream.port))
    try:
        transport.sendto(outgoing)
        return await protocol.done
    finally:
        transport.close()


async def _tcp(upstream: Upstream, outgoing: bytes, question: bytes) -> bytes | None:
    reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
    try:
        writer.write(struct.pack("!H", len(outgoing)) + outgoing)
        await writer.drain()
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        reply = await reader.readexactly(length)
        return reply if _matches(reply, outgoing, question) else None
    finally:
        writer.close()


def _question(query: bytes) -> bytes | None:
    """The raw question section of a one-question query (name, type, class)."""
    i = 12
    while i < len(query):
        n = query[i]
        if n == 0:
            end = i + 5
            return query[12:end] if end <= len(query) else None
        if n & 0xC0:  # compression pointers have no place in a query's question
            return None
        i += n + 1
    return None
