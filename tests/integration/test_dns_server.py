"""The real DNS responder on 127.0.0.1 port 0, queried over UDP and TCP.

Forwarding is tested against small upstream DNS servers this module starts on
127.0.0.1 port 0; the host's own resolvers are never asked.
"""

from __future__ import annotations

import asyncio
import random
import struct

import pytest
from dnslib import QTYPE, RCODE, RR, TXT, A, DNSRecord
from prometheus_client import CollectorRegistry

from meshagent.dns import DnsConfig, DnsServer, Target

TIMEOUT = 3.0
EVIL = "203.0.113.66"


# -- clients ------------------------------------------------------------------

class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data, addr) -> None:
        self.replies.put_nowait(data)


async def udp_raw(port: int, data: bytes, timeout: float = TIMEOUT) -> bytes:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(data)
        return await asyncio.wait_for(client.replies.get(), timeout)
    finally:
        transport.close()


async def udp(port: int, name: str, qtype: str = "A") -> DNSRecord:
    query = DNSRecord.question(name, qtype)
    reply = DNSRecord.parse(await udp_raw(port, bytes(query.pack())))
    assert reply.header.id == query.header.id
    return reply


async def tcp(port: int, *queries: DNSRecord) -> list[DNSRecord]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        for q in queries:  # pipelined: all sent before any reply is read
            data = bytes(q.pack())
            writer.write(struct.pack("!H", len(data)) + data)
        await writer.drain()
        replies = []
        for _ in queries:
            (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), TIMEOUT))
            replies.append(DNSRecord.parse(await asyncio.wait_for(reader.readexactly(n), TIMEOUT)))
        return replies
    finally:
        writer.close()


# -- a small upstream DNS server -------------------------------------------------

class Upstream:
    """Answers `*.example.test` over UDP and TCP. `mode`: "ok", "silent" (never
    answers), "servfail", or "spoof" (a wrong-ID reply first, then the real one)."""

    BIG = 20  # TXT records in big.example.test: too big for 512-byte UDP

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.seen: list[tuple[str, int, str]] = []  # (transport, id, name)
        self.port = 0
        self._udp = self._tcp = None

    def answer(self, data: bytes, transport: str) -> bytes | None:
        query = DNSRecord.parse(data)
        self.seen.append((transport, query.header.id, str(query.q.qname)))
        if self.mode == "silent":
            return None
        reply = query.reply()
        if self.mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif str(query.q.qname) == "big.example.test.":
            for i in range(self.BIG):
                reply.add_answer(RR(query.q.qname, QTYPE.TXT, rdata=TXT("x" * 60 + str(i)), ttl=30))
            if transport == "udp":
                reply = query.reply()
                reply.header.tc = 1
        elif str(query.q.qname).endswith("example.test."):
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("192.0.2.10"), ttl=30))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return bytes(reply.pack())

    @staticmethod
    def forgeries(data: bytes) -> list[bytes]:
        """Replies an off-path attacker might race in: a wrong ID, and the right
        ID for a different question; both point at EVIL."""
        query = DNSRecord.parse(data)
        wrong_id = query.reply()
        wrong_id.header.id ^= 0x5A5A
        wrong_id.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(EVIL), ttl=30))
        other = DNSRecord.question("other.example.test")
        other.header.id = query.header.id
        wrong_q = other.reply()
        wrong_q.add_answer(RR("other.example.test", QTYPE.A, rdata=A(EVIL), ttl=30))
        return [bytes(wrong_id.pack()), bytes(wrong_q.pack())]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        upstream = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport) -> None:
                self.transport = transport

            def datagram_received(self, data, addr) -> None:
                reply = upstream.answer(data, "udp")
                if reply is not None:
                    if upstream.mode == "spoof":
                        for forged in upstream.forgeries(data):
                            self.transport.sendto(forged, addr)
                    self.transport.sendto(reply, addr)

        for _ in range(20):  # the UDP port number may be taken for TCP: pick again
            udp, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve, "127.0.0.1", port)
            except OSError:
                udp.close()
                continue
            self._udp, self.port = udp, port
            return
        raise RuntimeError("no port free for both UDP and TCP")

    async def _serve(self, reader, writer) -> None:
        try:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            reply = self.answer(await reader.readexactly(n), "tcp")
            if reply is not None:
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
            else:
                await asyncio.sleep(TIMEOUT)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def upstreams():
    started: list[Upstream] = []

    async def make(mode: str = "ok") -> Upstream:
        up = Upstream(mode)
        await up.start()
        started.append(up)
        return up

    try:
        yield make
    finally:
        for up in started:
            await up.stop()


# -- the responder ----------------------------------------------------------------

CATALOG: dict[str, list[Target]] = {}


@pytest.fixture
async def responder():
    """`await responder(upstreams=(...), **config)` -> a started DnsServer."""
    servers: list[DnsServer] = []
    catalog = {"web": [Target("10.1.0.5", 8000, "tcp", "gpu-1"), Target("fd00::5", 8000, "tcp", "gpu-1")]}

    async def make(upstreams: tuple[str, ...] = (), registry=None, **config) -> DnsServer:
        config.setdefault("upstream_timeout", 2.0)
        server = DnsServer(DnsConfig(host="127.0.0.1", port=0, upstreams=upstreams, **config),
                           lambda name: catalog.get(name, []), registry, rng=random.Random(7))
        server.catalog = catalog
        await server.start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            await server.stop()


async def test_answers_over_udp(responder):
    server = await responder()
    assert server.port > 0
    reply = await udp(server.port, "web.default.svc.cluster.local")
    assert [str(rr.rdata) for rr in reply.rr] == ["10.1.0.5"]
    assert [str(rr.rdata) for rr in (await udp(server.port, "web.mesh", "AAAA")).rr] == ["fd00::5"]
    srv = await udp(server.port, "_web._tcp.web.mesh", "SRV")
    assert srv.rr[0].rdata.port == 8000
    nx = await udp(server.port, "nope.mesh")
    assert nx.header.rcode == RCODE.NXDOMAIN and nx.auth[0].rtype == QTYPE.SOA
    nodata = await udp(server.port, "web.mesh", "TXT")
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr


async def test_answers_over_tcp_pipelined_on_one_connection(responder):
    server = await responder()
    replies = await tcp(server.port, DNSRecord.question("web.mesh"), DNSRecord.question("nope.mesh"),
                        DNSRecord.question("web.mesh", "SRV"))
    assert [r.header.rcode for r in replies] == [RCODE.NOERROR, RCODE.NXDOMAIN, RCODE.NOERROR]
    assert str(replies[0].rr[0].rdata) == "10.1.0.5" and replies[2].rr[0].rtype == QTYPE.SRV


async def test_catalog_change_is_visible_after_invalidate(responder):
    server = await responder()
    assert (await udp(server.port, "new.mesh")).header.rcode == RCODE.NXDOMAIN
    server.catalog["new"] = [Target("10.1.0.7", 80, "tcp", "gpu-2")]
    server.invalidate()
    assert [str(rr.rdata) for rr in (await udp(server.port, "new.mesh")).rr] == ["10.1.0.7"]
    del server.catalog["web"]
    server.invalidate()
    assert (await udp(server.port, "web.mesh")).header.rcode == RCODE.NXDOMAIN


async def test_forwards_other_names_with_a_fresh_id(responder, upstreams):
    up = await upstreams()
    server = await responder(upstreams=(up.address,))
    query = DNSRecord.question("www.example.test")
    reply = DNSRecord.parse(await udp_raw(server.port, bytes(query.pack())))
    assert reply.header.id == query.header.id
    assert reply.header.rcode == RCODE.NOERROR and str(reply.rr[0].rdata) == "192.0.2.10"
    ((transport, upstream_id, name),) = up.seen
    assert (transport, name) == ("udp", "www.example.test.")
    assert upstream_id == random.Random(7).getrandbits(16)  # the injected generator picked it
    # The upstream's NXDOMAIN comes through unchanged.
    assert (await udp(server.port, "elsewhere.invalid")).header.rcode == RCODE.NXDOMAIN


async def test_truncated_upstream_reply_is_fetched_over_tcp(responder, upstreams):
    up = await upstreams()
    server = await responder(upstreams=(up.address,))
    (reply,) = await tcp(server.port, DNSRecord.question("big.example.test", "TXT"))
    assert len(reply.rr) == Upstream.BIG and reply.header.tc == 0
    assert [t for t, _, _ in up.seen] == ["udp", "tcp"]
    # A UDP client gets TC (the answer is over 512 bytes) and retries over TCP itself.
    small = await udp(server.port, "big.example.test", "TXT")
    assert small.header.tc == 1 and not small.rr


async def test_silent_upstream_times_out_and_the_next_answers(responder, upstreams):
    silent, good = await upstreams("silent"), await upstreams()
    server = await responder(upstreams=(silent.address, good.address), upstream_timeout=1.0)
    reply = await udp(server.port, "www.example.test")
    assert str(reply.rr[0].rdata) == "192.0.2.10"
    assert len(silent.seen) == 1 and len(good.seen) == 1


async def test_all_upstreams_failing_is_servfail(responder, upstreams):
    silent, broken = await upstreams("silent"), await upstreams("servfail")
    registry = CollectorRegistry()
    server = await responder(upstreams=(silent.address, broken.address), upstream_timeout=1.0, registry=registry)
    reply = await udp(server.port, "www.example.test")
    assert reply.header.rcode == RCODE.SERVFAIL
    (reply,) = await tcp(server.port, DNSRecord.question("www.example.test"))
    assert reply.header.rcode == RCODE.SERVFAIL
    assert registry.get_sample_value("mesh_dns_queries_total", {"qtype": "A", "result": "servfail"}) == 2


async def test_forged_replies_are_ignored(responder, upstreams):
    up = await upstreams("spoof")
    server = await responder(upstreams=(up.address,))
    reply = await udp(server.port, "www.example.test")
    assert reply.header.rcode == RCODE.NOERROR
    assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.10"]  # never EVIL


async def test_forwards_beyond_the_limit_get_servfail_at_once(responder, upstreams):
    silent = await upstreams("silent")
    server = await responder(upstreams=(silent.address,), upstream_timeout=1.0, max_forwards=1)
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, remote_addr=("127.0.0.1", server.port))
    try:
        first, second = DNSRecord.question("one.example.test"), DNSRecord.question("two.example.test")
        transport.sendto(bytes(first.pack()))
        transport.sendto(bytes(second.pack()))
        # The second is refused while the first still waits for the silent upstream.
        reply = DNSRecord.parse(await asyncio.wait_for(client.replies.get(), TIMEOUT))
        assert reply.header.id == second.header.id and reply.header.rcode == RCODE.SERVFAIL
        reply = DNSRecord.parse(await asyncio.wait_for(client.replies.get(), TIMEOUT))
        assert reply.header.id == first.header.id and reply.header.rcode == RCODE.SERVFAIL
        assert [name for _, _, name in silent.seen] == ["one.example.test."]  # two never went upstream
    finally:
        transport.close()
    # With the first done, forwarding is possible again.
    assert (await udp(server.port, "three.example.test")).header.rcode == RCODE.SERVFAIL
    assert len(silent.seen) == 2


async def test_no_upstreams_is_servfail_not_a_hang(responder):
    server = await responder(upstreams=())
    assert (await udp(server.port, "www.example.test")).header.rcode == RCODE.SERVFAIL


async def test_malformed_datagrams_never_stop_the_listener(responder):
    server = await responder()
    formerr = await udp_raw(server.port, struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\x05ab")
    assert formerr[:2] == b"\xbe\xef" and formerr[3] & 0x0F == RCODE.FORMERR
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Client, remote_addr=("127.0.0.1", server.port))
    try:
        for junk in (b"", b"\x00", b"\xff" * 11, bytes(range(256)), b"\x12\x34\x81\x80" + b"\x00" * 8):
            transport.sendto(junk)
    finally:
        transport.close()
    # Garbage over TCP, and a connection that sends half a message and leaves.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\x00\x20garbage")
    writer.close()
    assert [str(rr.rdata) for rr in (await udp(server.port, "web.mesh")).rr] == ["10.1.0.5"]
    (reply,) = await tcp(server.port, DNSRecord.question("web.mesh"))
    assert str(reply.rr[0].rdata) == "10.1.0.5"


async def test_idle_tcp_connection_is_closed(responder):
    server = await responder(tcp_idle_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        assert await asyncio.wait_for(reader.read(1), TIMEOUT) == b""  # EOF from the responder
    finally:
        writer.close()


async def test_metrics_count_answer_types(responder, upstreams):
    up = await upstreams()
    registry = CollectorRegistry()
    server = await responder(upstreams=(up.address,), registry=registry)
    await udp(server.port, "web.mesh")
    await udp(server.port, "nope.mesh")
    await udp(server.port, "web.mesh", "MX")
    await udp(server.port, "www.example.test")
    await udp_raw(server.port, struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0))

    def count(qtype: str, result: str) -> float | None:
        return registry.get_sample_value("mesh_dns_queries_total", {"qtype": qtype, "result": result})

    assert (count("A", "answer"), count("A", "nxdomain"), count("MX", "nodata"), count("A", "forwarded"),
            count("none", "formerr")) == (1, 1, 1, 1, 1)
    assert registry.get_sample_value("mesh_dns_query_duration_seconds_count", {"result": "forwarded"}) == 1


async def test_stop_closes_both_listeners(responder):
    server = await responder()
    port = server.port
    await server.stop()
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)


async def test_port_in_use_is_a_clear_error(responder):
    from meshcore.errors import Unavailable

    first = await responder()
    with pytest.raises(Unavailable, match=r"cannot listen for DNS on udp 127\.0\.0\.1:\d+"):
        await DnsServer(DnsConfig(port=first.port, upstreams=()), lambda n: []).start()


async def test_tcp_connections_beyond_the_limit_are_closed(responder):
    server = await responder(max_tcp_connections=1)
    first_reader, first = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        # The first connection is being served...
        data = bytes(DNSRecord.question("web.mesh").pack())
        first.write(struct.pack("!H", len(data)) + data)
        (n,) = struct.unpack("!H", await asyncio.wait_for(first_reader.readexactly(2), TIMEOUT))
        await asyncio.wait_for(first_reader.readexactly(n), TIMEOUT)
        # ...so a second one is closed at once.
        reader, second = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await asyncio.wait_for(reader.read(1), TIMEOUT) == b""
        finally:
            second.close()
    finally:
        first.close()
    # With the first gone, connections are served again (its close is seen within a few tries).
    for _ in range(20):
        try:
            (reply,) = await tcp(server.port, DNSRecord.question("web.mesh"))
            break
        except (asyncio.IncompleteReadError, ConnectionError):
            await asyncio.sleep(0.05)
    else:
        pytest.fail("tcp was not served again after the first connection closed")
    assert str(reply.rr[0].rdata) == "10.1.0.5"


def test_runs_on_the_standard_asyncio_loop_too():
    # Every other test here runs on uvloop (tests/conftest.py); the responder
    # must not depend on it.
    async def scenario() -> list[str]:
        server = DnsServer(DnsConfig(host="127.0.0.1", port=0, upstreams=()),
                           lambda name: [Target("10.1.0.5", 80)] if name == "web" else [])
        await server.start()
        try:
            assert "uvloop" not in type(asyncio.get_running_loop()).__module__
            (reply,) = await tcp(server.port, DNSRecord.question("web.mesh"))
            return [str(rr.rdata) for rr in (await udp(server.port, "web.mesh")).rr + reply.rr]
        finally:
            await server.stop()

    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        assert runner.run(scenario()) == ["10.1.0.5", "10.1.0.5"]
