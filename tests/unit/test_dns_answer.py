"""Every kind of answer the responder gives, decided without sockets."""

from __future__ import annotations

import struct

import pytest
from dnslib import CLASS, EDNS0, QTYPE, RCODE, RR, DNSQuestion, DNSRecord, EDNSOption

from meshagent.dns.answer import Answerer
from meshagent.dns.config import DnsConfig, Upstream
from meshagent.dns.target import Target
from meshcore.clock import ManualClock

UP = (Upstream("192.0.2.53"),)
CLUSTER_UP = (Upstream("10.43.0.10"),)


class Catalog:
    def __init__(self) -> None:
        self.services = {
            "web": [Target("10.1.0.5", 8000, "tcp", "gpu-1")],
            "dual": [Target("10.1.0.6", 9000, "tcp", "gpu-2"), Target("fd00::6", 9000, "tcp", "gpu-2")],
            "v6only": [Target("fd00::7", 53, "udp", "gpu-3")],
            "pair": [Target("10.1.0.8", 7000, "tcp", "a"), Target("10.1.0.9", 7000, "tcp", "b")],
        }
        self.calls: list[str] = []

    def lookup(self, name: str) -> list[Target]:
        self.calls.append(name)
        return list(self.services.get(name, []))


@pytest.fixture
def catalog() -> Catalog:
    return Catalog()


@pytest.fixture
def answerer(catalog) -> Answerer:
    return Answerer(DnsConfig(answer_cache_s=0), catalog.lookup, UP)


def ask(answerer: Answerer, name: str, qtype: str = "A", udp: bool = True, **kw) -> tuple[str, DNSRecord]:
    query = DNSRecord.question(name, qtype, **kw)
    outcome = answerer.respond(query.pack(), udp=udp)
    assert outcome.reply is not None, outcome
    reply = DNSRecord.parse(outcome.reply)
    assert reply.header.id == query.header.id and reply.header.qr == 1
    return outcome.result, reply


def rdatas(reply: DNSRecord, qtype: str) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == getattr(QTYPE, qtype)]


@pytest.mark.parametrize("name", ["web.mesh", "web.default.svc.cluster.local", "WeB.MeSh"])
def test_a_record(answerer, name):
    result, reply = ask(answerer, name)
    assert result == "answer"
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
    assert rdatas(reply, "A") == ["10.1.0.5"]
    assert reply.rr[0].ttl == 5
    # The answer echoes the question's spelling (resolvers using 0x20 check it).
    assert str(reply.rr[0].rname).rstrip(".") == name


def test_aaaa_record(answerer):
    result, reply = ask(answerer, "dual.mesh", "AAAA")
    assert result == "answer" and rdatas(reply, "AAAA") == ["fd00::6"]


def test_any_gives_every_address(answerer):
    _, reply = ask(answerer, "dual.mesh", "ANY")
    assert sorted(map(str, (rr.rdata for rr in reply.rr))) == ["10.1.0.6", "fd00::6"]


def test_several_targets(answerer):
    _, reply = ask(answerer, "pair.mesh")
    assert sorted(rdatas(reply, "A")) == ["10.1.0.8", "10.1.0.9"]


def test_configured_ttl(catalog):
    answerer = Answerer(DnsConfig(ttl=1, negative_ttl=2), catalog.lookup)
    _, reply = ask(answerer, "web.mesh")
    assert reply.rr[0].ttl == 1
    _, reply = ask(answerer, "nope.mesh")
    assert reply.auth[0].ttl == 2 and reply.auth[0].rdata.times[-1] == 2


@pytest.mark.parametrize("name", ["web.mesh", "_web._tcp.web.mesh", "web.default.svc.cluster.local",
                                  "_web._tcp.web.default.svc.cluster.local"])
def test_srv_plain_and_kubernetes_named_port(answerer, name):
    result, reply = ask(answerer, name, "SRV")
    assert result == "answer"
    (srv,) = reply.rr
    zone = "mesh" if name.endswith("mesh") else "default.svc.cluster.local"
    assert (srv.rdata.port, srv.rdata.priority, str(srv.rdata.target)) == (8000, 0, f"gpu-1.web.{zone}.")
    # The target's address comes along, so the client needs no second query.
    assert [(str(rr.rname), str(rr.rdata)) for rr in reply.ar] == [(f"gpu-1.web.{zone}.", "10.1.0.5")]


def test_srv_target_names_resolve(answerer):
    _, reply = ask(answerer, "pair.mesh", "SRV")
    for srv in reply.rr:
        _, host = ask(answerer, str(srv.rdata.target))
        assert rdatas(host, "A") == [str(a.rdata) for a in reply.ar if a.rname == srv.rdata.target]


def test_srv_has_one_record_per_node_and_port(answerer):
    # "dual" has two targets on one node (IPv4 and IPv6): one SRV, both addresses.
    _, reply = ask(answerer, "dual.mesh", "SRV")
    assert [(rr.rdata.port, str(rr.rdata.target)) for rr in reply.rr] == [(9000, "gpu-2.dual.mesh.")]
    assert sorted(str(rr.rdata) for rr in reply.ar) == ["10.1.0.6", "fd00::6"]


def test_srv_udp_protocol(answerer):
    result, reply = ask(answerer, "_v6only._udp.v6only.mesh", "SRV")
    assert result == "answer" and reply.rr[0].rdata.port == 53


@pytest.mark.parametrize("name", ["_web._udp.web.mesh",       # wrong protocol
                                  "_http._tcp.web.mesh",      # the port is named after the service
                                  "_nope._tcp.nope.mesh"])
def test_srv_for_a_port_that_does_not_exist_is_nxdomain(answerer, name):
    result, reply = ask(answerer, name, "SRV")
    assert result == "nxdomain" and reply.header.rcode == RCODE.NXDOMAIN


@pytest.mark.parametrize("name", ["nope.mesh", "nope.default.svc.cluster.local", "gpu-9.web.mesh",
                                  "web_1.mesh", "a.b.c.d.mesh", "x.other.svc.cluster.local",
                                  "1-2-3-4.default.pod.cluster.local"])
def test_unknown_names_are_nxdomain_with_soa(answerer, name):
    result, reply = ask(answerer, name)
    assert result == "nxdomain"
    assert reply.header.rcode == RCODE.NXDOMAIN and reply.header.aa == 1 and not reply.rr
    (soa,) = reply.auth
    zone = "mesh." if name.endswith("mesh") else "cluster.local."
    assert soa.rtype == QTYPE.SOA and str(soa.rname) == zone and soa.ttl == 5


@pytest.mark.parametrize("name, qtype", [
    ("v6only.mesh", "A"),           # known name, no IPv4: NODATA, not NXDOMAIN (happy eyeballs)
    ("web.mesh", "AAAA"),
    ("web.mesh", "MX"),
    ("web.mesh", "TXT"),
    ("_web._tcp.web.mesh", "A"),    # the SRV name exists
    ("gpu-1.web.mesh", "SRV"),
    ("mesh", "A"),
    ("default.svc.cluster.local", "A"),
    ("svc.cluster.local", "A"),
    ("cluster.local", "A"),
    ("default.svc.cluster.local", "SOA"),  # not a zone apex
])
def test_known_names_without_that_type_are_nodata(answerer, name, qtype):
    result, reply = ask(answerer, name, qtype)
    assert result == "nodata"
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr
    assert reply.auth[0].rtype == QTYPE.SOA


@pytest.mark.parametrize("zone", ["mesh", "cluster.local"])
def test_soa_at_zone_apex(answerer, zone):
    result, reply = ask(answerer, zone, "SOA")
    assert result == "answer" and reply.rr[0].rtype == QTYPE.SOA and str(reply.rr[0].rname) == zone + "."


def test_foreign_names_are_forwarded(answerer, catalog):
    query = DNSRecord.question("example.com", "A")
    outcome = answerer.respond(query.pack())
    assert outcome.result == "forwarded" and outcome.reply is None and outcome.forward_to == UP
    assert catalog.calls == []


def test_forwarding_without_upstreams_is_servfail(catalog):
    answerer = Answerer(DnsConfig(), catalog.lookup, upstreams=())
    result, reply = ask(answerer, "example.com")
    assert result == "servfail" and reply.header.rcode == RCODE.SERVFAIL


def test_other_namespaces_go_to_cluster_upstreams_when_configured(catalog):
    answerer = Answerer(DnsConfig(), catalog.lookup, UP, CLUSTER_UP)
    outcome = answerer.respond(DNSRecord.question("db.other.svc.cluster.local").pack())
    assert outcome.result == "forwarded" and outcome.forward_to == CLUSTER_UP
    # Our own namespace is still answered here.
    assert answerer.respond(DNSRecord.question("web.default.svc.cluster.local").pack()).result == "answer"


def test_lookup_failure_is_servfail_with_the_question(catalog):
    def broken(name: str):
        raise RuntimeError("catalog unavailable")

    result, reply = ask(Answerer(DnsConfig(), broken), "web.mesh")
    assert result == "servfail" and reply.header.rcode == RCODE.SERVFAIL
    assert str(reply.q.qname) == "web.mesh."


def test_other_class_is_refused(answerer):
    query = DNSRecord(q=DNSQuestion("web.mesh", QTYPE.A, CLASS.CH))
    reply = DNSRecord.parse(answerer.respond(query.pack()).reply)
    assert reply.header.rcode == RCODE.REFUSED


# -- malformed and odd queries --------------------------------------------------

def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, 0, 0, 0)


@pytest.mark.parametrize("data", [
    header() + b"\x03web",                               # name runs off the end
    header() + b"\x03web\x04mesh\x00\x00",               # type cut short
    header() + b"\xc0\x0c\x00\x01\x00\x01",              # compression pointer loop
    header(qd=2) + b"\x03web\x04mesh\x00\x00\x01\x00\x01",  # says 2 questions, has 1
    header(qd=0),                                        # no question at all
])
def test_malformed_queries_get_formerr(answerer, data):
    outcome = answerer.respond(data)
    assert outcome.result == "formerr"
    assert outcome.reply[:2] == data[:2]
    flags = struct.unpack("!H", outcome.reply[2:4])[0]
    assert flags & 0x8000 and flags & 0x000F == RCODE.FORMERR


def test_two_questions_are_formerr(answerer):
    query = DNSRecord.question("web.mesh")
    query.add_question(DNSQuestion("pair.mesh"))
    assert answerer.respond(query.pack()).result == "formerr"


def test_two_opt_records_are_formerr(answerer):
    query = DNSRecord.question("web.mesh")
    query.add_ar(EDNS0(udp_len=1232))
    query.add_ar(EDNS0(udp_len=4096))
    assert answerer.respond(query.pack()).result == "formerr"


@pytest.mark.parametrize("data", [b"", b"\x00", header()[:11]])
def test_too_short_for_a_header_is_dropped(answerer, data):
    outcome = answerer.respond(data)
    assert outcome.result == "dropped" and outcome.reply is None and outcome.forward_to is None


def test_responses_are_never_answered(answerer):
    reply = DNSRecord.question("web.mesh").reply().pack()
    outcome = answerer.respond(reply)
    assert outcome.result == "dropped" and outcome.reply is None


def test_other_opcodes_are_notimp(answerer):
    query = DNSRecord.question("web.mesh")
    query.header.opcode = 4  # NOTIFY
    outcome = answerer.respond(query.pack())
    assert outcome.result == "notimp" and outcome.reply[3] & 0x0F == RCODE.NOTIMP


def test_query_flag_bits_are_not_echoed(answerer):
    query = DNSRecord.question("web.mesh")
    query.header.tc = 1
    query.header.rcode = 3
    reply = DNSRecord.parse(answerer.respond(query.pack()).reply)
    assert reply.header.tc == 0 and reply.header.rcode == RCODE.NOERROR
    assert (reply.header.rd, reply.header.ra, reply.header.aa, reply.header.opcode) == (1, 1, 1, 0)


# -- size limits and EDNS -----------------------------------------------------

@pytest.fixture
def big(catalog) -> Answerer:
    catalog.services["big"] = [Target(f"10.2.{i // 250}.{i % 250 + 1}", 80, "tcp", f"n{i}") for i in range(60)]
    return Answerer(DnsConfig(answer_cache_s=0), catalog.lookup)


def test_udp_answer_too_big_is_truncated_and_tcp_is_whole(big):
    result, reply = ask(big, "big.mesh")
    assert result == "answer" and reply.header.tc == 1 and not reply.rr
    assert str(reply.q.qname) == "big.mesh."
    _, whole = ask(big, "big.mesh", udp=False)
    assert whole.header.tc == 0 and len(whole.rr) == 60


def test_edns_raises_the_udp_limit_and_is_echoed(big):
    query = DNSRecord.question("big.mesh")
    query.add_ar(EDNS0(udp_len=4096))
    reply = DNSRecord.parse(big.respond(query.pack()).reply)
    assert reply.header.tc == 0 and len(reply.rr) == 60  # 60 A records fit in 1232 bytes
    (opt,) = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    assert opt.rclass == 1232


def test_fit_truncates_big_forwarded_replies_for_udp_only(answerer):
    query = DNSRecord.question("example.com", "TXT")
    outcome = answerer.respond(query.pack())
    upstream = query.reply()
    upstream.add_answer(*RR.fromZone("example.com. 60 IN TXT " + "x" * 250) * 4)
    packed = upstream.pack()
    assert len(packed) > 512
    assert DNSRecord.parse(answerer.fit(outcome, packed, udp=True)).header.tc == 1
    assert answerer.fit(outcome, packed, udp=False) == packed
    assert DNSRecord.parse(answerer.servfail(outcome)).header.rcode == RCODE.SERVFAIL


# -- the answer cache -----------------------------------------------------------

def test_cache_serves_repeats_and_invalidate_forgets(catalog):
    answerer = Answerer(DnsConfig(answer_cache_s=1.0), catalog.lookup, clock=ManualClock())
    first = DNSRecord.question("new.mesh")
    assert answerer.respond(first.pack()).result == "nxdomain"
    catalog.services["new"] = [Target("10.9.9.9", 80)]
    again = DNSRecord.question("new.mesh")
    cached = answerer.respond(again.pack())
    # Served from cache, with the new query's ID.
    assert cached.result == "nxdomain" and cached.reply[:2] == again.pack()[:2]
    assert catalog.calls == ["new"]
    answerer.invalidate()
    result, reply = ask(answerer, "new.mesh")
    assert result == "answer" and rdatas(reply, "A") == ["10.9.9.9"]


def test_cache_entries_expire(catalog):
    clock = ManualClock()
    answerer = Answerer(DnsConfig(answer_cache_s=1.0), catalog.lookup, clock=clock)
    ask(answerer, "web.mesh")
    ask(answerer, "web.mesh")
    assert catalog.calls == ["web"]
    clock.advance(1.5)
    ask(answerer, "web.mesh")
    assert catalog.calls == ["web", "web"]


def test_forwarded_and_failed_answers_are_not_cached(catalog):
    answerer = Answerer(DnsConfig(answer_cache_s=10.0), catalog.lookup, UP)
    for _ in range(2):
        assert answerer.respond(DNSRecord.question("example.com").pack()).forward_to == UP


def test_cache_is_bounded(catalog):
    from meshagent.dns import answer as module

    answerer = Answerer(DnsConfig(answer_cache_s=60.0), catalog.lookup)
    for i in range(module.CACHE_ENTRIES + 10):
        answerer.respond(DNSRecord.question(f"n{i}.mesh").pack())
    assert 0 < len(answerer._cache) <= module.CACHE_ENTRIES
    # Oversized queries (possible over TCP) are answered but never kept.
    answerer.invalidate()
    big = DNSRecord.question("web.mesh")
    big.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(65001, b"x" * 600)]))
    assert answerer.respond(big.pack(), udp=False).result == "answer"
    assert len(answerer._cache) == 0
