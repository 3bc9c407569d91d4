"""The responder's decisions, without sockets: query bytes in, reply bytes out.

`Answerer.respond(data, udp)` returns an `Outcome`: reply bytes to send, or
nothing (a packet to drop), or a request to forward upstream. The asyncio
listeners (server.py) and the forwarder (forward.py) do the I/O; everything
that can be decided from the query alone happens here, so it is tested at
full speed and fuzzed with raw bytes.

Rules, in order:
- shorter than a DNS header, or a response (QR set): dropped, never answered,
  so two responders cannot bounce packets at each other;
- not parseable, not exactly one question, or several EDNS OPT records:
  FORMERR; an opcode other than QUERY: NOTIMP;
- names in our zones (qname.py) are answered authoritatively from
  `lookup(service)`: records of the asked type, NODATA (NOERROR, no records)
  for a name that exists without that type, NXDOMAIN for a name that does not
  exist; negative answers carry the zone's SOA so caches hold them only
  `negative_ttl` seconds; a class other than IN is REFUSED;
- names elsewhere in the cluster domain: forwarded to `cluster_upstreams`, or
  NXDOMAIN (the apexes `cluster.local` and `svc.cluster.local` exist: NODATA);
- every other name is forwarded to `upstreams`; none configured: SERVFAIL.

A lookup that raises gives SERVFAIL. Over UDP a reply larger than the client's
limit (512 bytes, or its EDNS size) is sent truncated (TC set), so the client
retries over TCP.

Answers from our zones are cached for `answer_cache_s`, keyed by the query
bytes after the ID: repeated queries skip parsing entirely. The owner calls
`invalidate()` whenever the catalog changes, so the cache never serves an
answer older than the catalog.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from dnslib import AAAA, CLASS, EDNS0, QTYPE, RCODE, RR, SOA, SRV, A, DNSHeader, DNSLabel, DNSRecord

from meshcore.clock import SYSTEM, Clock

from meshagent.dns.config import DnsConfig, Upstream
from meshagent.dns.qname import Kind, NameParser, Parsed
from meshagent.dns.target import Lookup, Target

MIN_UDP = 512
# What we advertise and honour at most: the DNS flag day 2020 size, which
# avoids IP fragmentation on every path.
MAX_UDP = 1232
# The cache stays small whatever clients send: at most CACHE_ENTRIES entries of
# queries up to CACHE_QUERY_BYTES (real queries are 30-100 bytes), about 4 MB.
CACHE_ENTRIES = 4096
CACHE_QUERY_BYTES = 512
SRV_WEIGHT = 10  # equal weights: clients spread load evenly over targets


class Outcome(NamedTuple):
    result: str                     # metrics label: answer, nxdomain, nodata, forwarded, ...
    qtype: str                      # metrics label: A, AAAA, SRV, ... or "none"
    reply: bytes | None             # bytes to send; None with forward_to=None means drop
    forward_to: tuple[Upstream, ...] | None = None
    request: DNSRecord | None = None
    max_size: int = MIN_UDP         # the client's UDP size limit


class Answerer:
    def __init__(self, config: DnsConfig, lookup: Lookup, upstreams: tuple[Upstream, ...] = (),
                 cluster_upstreams: tuple[Upstream, ...] = (),
                 clock: Clock = SYSTEM) -> None:
        self.config = config
        self._lookup = lookup
        self.upstreams = upstreams
        self.cluster_upstreams = cluster_upstreams
        self._monotonic = clock.monotonic  # cache expiry
        self._parser = NameParser(config)
        self._cache: dict[tuple[bool, bytes], tuple[float, bytes, str, str]] = {}
        self._soa = {zone: self._make_soa(zone) for zone in (self._parser.mesh, self._parser.cluster)}

    def invalidate(self) -> None:
        """Forget cached answers; call on every change of the catalog."""
        self._cache.clear()

    # -- the entry point --------------------------------------------------

    def respond(self, data: bytes, udp: bool = True) -> Outcome:
        """Decide what to do with one query. Never raises."""
        if type(data) is not bytes:  # bytearray or memoryview from an embedder
            data = bytes(data)
        cache_s = self.config.answer_cache_s
        if cache_s:
            hit = self._cache.get((udp, data[2:]))
            if hit is not None and hit[0] > self._monotonic():
                return Outcome(hit[2], hit[3], data[:2] + hit[1])
        try:
            outcome = self._respond(data, udp)
        except Exception:  # never let one query take the responder down
            outcome = Outcome("servfail", "none", _bare_reply(data, RCODE.SERVFAIL))
        if outcome.reply is not None and type(outcome.reply) is not bytes:
            outcome = outcome._replace(reply=bytes(outcome.reply))  # dnslib packs bytearrays
        if (cache_s and outcome.reply is not None and outcome.result in _CACHEABLE
                and len(data) <= CACHE_QUERY_BYTES and len(outcome.reply) <= MAX_UDP):
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[(udp, data[2:])] = (self._monotonic() + cache_s, outcome.reply[2:],
                                            outcome.result, outcome.qtype)
        return outcome

    def servfail(self, outcome: Outcome) -> bytes:
        """The reply for a forwarded query no upstream answered."""
        return bytes(self._reply(outcome.request, RCODE.SERVFAIL, aa=0).pack())

    def fit(self, outcome: Outcome, reply: bytes, udp: bool) -> bytes:
        """An upstream's reply, truncated if it does not fit the client's UDP limit."""
        if udp and len(reply) > outcome.max_size:
            return self._truncated(outcome.request, aa=0)
        return reply

    # -- deciding ------------------------------------------------------------

    def _respond(self, data: bytes, udp: bool) -> Outcome:
        if len(data) < 12 or data[2] & 0x80:
            return Outcome("dropped", "none", None)
        try:
            request = DNSRecord.parse(data)
        except Exception:  # dnslib raises several types on malformed input
            return Outcome("formerr", "none", _bare_reply(data, RCODE.FORMERR))
        header = request.header
        if header.opcode != 0:
            return Outcome("notimp", "none", _bare_reply(data, RCODE.NOTIMP))
        opts = [rr for rr in request.ar if rr.rtype == QTYPE.OPT]
        if len(request.questions) != 1 or len(opts) > 1:
            return Outcome("formerr", "none", _bare_reply(data, RCODE.FORMERR))
        max_size = max(MIN_UDP, min(opts[0].rclass, MAX_UDP)) if opts else MIN_UDP
        q = request.q
        name = QTYPE.get(q.qtype)
        qtype = name if isinstance(name, str) else "other"
        parsed = self._parser.parse(tuple(q.qname.label))

        if parsed.kind is Kind.FOREIGN:
            return self._forward(request, qtype, self.upstreams, max_size)
        if parsed.kind is Kind.CLUSTER_OTHER and self.cluster_upstreams:
            return self._forward(request, qtype, self.cluster_upstreams, max_size)
        if q.qclass != CLASS.IN:
            return Outcome("refused", qtype, self._pack(request, self._reply(request, RCODE.REFUSED), udp, max_size))
        result, reply = self._authoritative(request, parsed)
        return Outcome(result, qtype, self._pack(request, reply, udp, max_size))

    def _forward(self, request: DNSRecord, qtype: str, upstreams: tuple[Upstream, ...],
                 max_size: int) -> Outcome:
        if not upstreams:
            return Outcome("servfail", qtype, self._reply(request, RCODE.SERVFAIL, aa=0).pack())
        return Outcome("forwarded", qtype, None, upstreams, request, max_size)

    def _authoritative(self, request: DNSRecord, parsed: Parsed) -> tuple[str, DNSRecord]:
        q = request.q
        kind = parsed.kind
        if kind is Kind.CLUSTER_OTHER:
            rest = tuple(label.lower() for label in q.qname.label)[: -len(self._parser.cluster)]
            kind = Kind.APEX if rest in ((), (b"svc",)) else Kind.NO_SUCH_NAME
        if kind is Kind.NO_SUCH_NAME:
            return self._negative(request, parsed, RCODE.NXDOMAIN)
        if kind is Kind.APEX:
            at_zone_apex = len(q.qname.label) == len(parsed.zone)
            if q.qtype in (QTYPE.SOA, QTYPE.ANY) and at_zone_apex:
                reply = self._reply(request, RCODE.NOERROR)
                reply.add_answer(self._soa[parsed.zone])
                return "answer", reply
            return self._negative(request, parsed, RCODE.NOERROR)

        try:
            targets = self._lookup(parsed.service)
        except Exception:  # a broken catalog must not look like a missing name
            return "servfail", self._reply(request, RCODE.SERVFAIL, aa=0)
        if kind is Kind.NODE_HOST:
            targets = [t for t in targets if t.host_label == parsed.node]
        elif kind is Kind.SRV_PORT:
            targets = [t for t in targets if parsed.port_name == parsed.service and parsed.proto == t.protocol]
        if not targets:
            return self._negative(request, parsed, RCODE.NXDOMAIN)

        reply = self._reply(request, RCODE.NOERROR)
        ttl = self.config.ttl
        qt = q.qtype
        if qt == QTYPE.SRV and kind in (Kind.SERVICE, Kind.SRV_PORT):
            base = (parsed.service.encode("ascii"),) + parsed.suffix
            srvs, addresses = {}, {}  # dicts keep order and drop duplicates (an RRset is a set)
            for t in targets:
                host = DNSLabel((t.host_label.encode("ascii"),) + base)
                srv = SRV(0, SRV_WEIGHT, t.port, host)
                srvs.setdefault((t.port, t.host_label), RR(q.qname, QTYPE.SRV, rdata=srv, ttl=ttl))
                addresses.setdefault((t.host_label, t.address), _address_rr(host, t, ttl))
            reply.add_answer(*srvs.values())
            reply.add_ar(*addresses.values())
        elif qt in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY) and kind in (Kind.SERVICE, Kind.NODE_HOST):
            seen = set()
            for t in targets:
                if t.address in seen or (qt == QTYPE.A and t.version != 4) or (qt == QTYPE.AAAA and t.version != 6):
                    continue
                seen.add(t.address)
                reply.add_answer(_address_rr(q.qname, t, ttl))
        if not reply.rr:
            return self._negative(request, parsed, RCODE.NOERROR)
        return "answer", reply

    # -- building replies ----------------------------------------------------

    def _negative(self, request: DNSRecord, parsed: Parsed, rcode: int) -> tuple[str, DNSRecord]:
        reply = self._reply(request, rcode)
        reply.add_auth(self._soa[parsed.zone])
        return ("nxdomain" if rcode == RCODE.NXDOMAIN else "nodata"), reply

    def _make_soa(self, zone: tuple[bytes, ...]) -> RR:
        neg = self.config.negative_ttl
        # serial 1: secondaries never transfer these zones; refresh/retry/expire
        # are nominal; the minimum is what RFC 2308 caches use for negative TTLs.
        rdata = SOA(DNSLabel((b"ns", b"dns") + zone), DNSLabel((b"hostmaster",) + zone), (1, 3600, 600, 86400, neg))
        return RR(DNSLabel(zone), QTYPE.SOA, rdata=rdata, ttl=neg)

    @staticmethod
    def _reply(request: DNSRecord, rcode: int, aa: int = 1) -> DNSRecord:
        # Built field by field, not from the query's flag bits: a query with
        # odd bits set (TC, an rcode) must not see them echoed back.
        bits = request.header.bitmap
        bitmap = 0x8000 | (0x0400 if aa else 0) | 0x0080 | (bits & 0x0110) | rcode  # QR AA RA, RD+CD kept
        header = DNSHeader(id=request.header.id, bitmap=bitmap)
        reply = DNSRecord(header, q=request.q)
        if any(rr.rtype == QTYPE.OPT for rr in request.ar):
            reply.add_ar(EDNS0(udp_len=MAX_UDP))
        return reply

    def _truncated(self, request: DNSRecord, aa: int = 1) -> bytes:
        reply = self._reply(request, RCODE.NOERROR, aa=aa)
        reply.header.tc = 1
        return bytes(reply.pack())

    def _pack(self, request: DNSRecord, reply: DNSRecord, udp: bool, max_size: int) -> bytes:
        packed = reply.pack()
        if udp and len(packed) > max_size:
            return self._truncated(request)
        return packed


_CACHEABLE = frozenset({"answer", "nxdomain", "nodata", "refused", "formerr", "notimp"})


def _address_rr(name: DNSLabel, target: Target, ttl: int) -> RR:
    if target.version == 4:
        return RR(name, QTYPE.A, rdata=A(target.address), ttl=ttl)
    return RR(name, QTYPE.AAAA, rdata=AAAA(target.address), ttl=ttl)


def _bare_reply(data: bytes, rcode: int) -> bytes | None:
    """A header-only reply for a query we could not (fully) read: same ID,
    opcode and RD, QR set, no sections. None when there is no header to answer."""
    if len(data) < 12:
        return None
    flags = 0x8000 | (data[2] & 0x79) << 8 | rcode
    return data[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)
