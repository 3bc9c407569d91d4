"""Fuzzing the responder with raw bytes: it never raises, and every reply it
sends is a well-formed response to the query it got (same ID, QR set)."""

from __future__ import annotations

import struct

from dnslib import DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshagent.dns.answer import Answerer, Outcome
from meshagent.dns.config import DnsConfig, Upstream
from meshagent.dns.metrics import RESULTS
from meshagent.dns.target import Target

CATALOG = {"web": [Target("10.1.0.5", 8000, "tcp", "gpu-1"), Target("fd00::5", 8000, "tcp", "gpu-1")]}
SEEDS = [DNSRecord.question(n, t).pack() for n, t in [
    ("web.mesh", "A"), ("_web._tcp.web.default.svc.cluster.local", "SRV"), ("nope.mesh", "AAAA"),
    ("example.com", "MX"), ("gpu-1.web.mesh", "ANY")]]


def make(cache: float) -> Answerer:
    return Answerer(DnsConfig(answer_cache_s=cache), lambda n: CATALOG.get(n, []), (Upstream("192.0.2.1"),))


ANSWERERS = [make(0.0), make(1.0)]


def check(query: bytes, udp: bool) -> None:
    for answerer in ANSWERERS:
        outcome = answerer.respond(query, udp=udp)
        assert isinstance(outcome, Outcome)
        assert outcome.result in RESULTS
        # The catch-all (an internal error turned into SERVFAIL) must never be needed.
        assert not (outcome.result == "servfail" and outcome.qtype == "none"), query
        if outcome.forward_to is not None:
            assert outcome.reply is None and outcome.request is not None
            continue
        if outcome.reply is None:
            assert outcome.result == "dropped"
            continue
        reply = outcome.reply
        assert isinstance(reply, bytes) and len(reply) >= 12
        assert reply[:2] == query[:2] and reply[2] & 0x80
        if udp:
            assert len(reply) <= 1232
        if outcome.result not in ("formerr", "notimp", "servfail"):
            DNSRecord.parse(reply)  # our own answers always parse


fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes(data, udp):
    check(data, udp)


@fuzz
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 599), st.integers(0, 255)), max_size=8),
       st.integers(0, 80), st.booleans())
def test_mutated_queries(seed, flips, cut, udp):
    data = bytearray(seed)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    data = bytes(data[: max(0, len(data) - cut)]) if cut < 40 else bytes(data)
    check(data, udp)


@fuzz
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 3), st.integers(0, 3),
       st.integers(0, 3), st.integers(0, 3), st.binary(max_size=300))
def test_headers_with_random_counts(qid, flags, qd, an, ns, ar, body):
    check(struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar) + body, True)


@fuzz
@given(st.lists(st.binary(min_size=1, max_size=63), min_size=1, max_size=6),
       st.sampled_from([b"mesh", b"default\x03svc\x07cluster\x05local"]), st.integers(0, 0xFFFF))
def test_arbitrary_labels_in_our_zones(labels, zone, qtype):
    first = zone.split(b"\x03")[0]  # the zone's first label, whose length byte is missing
    name = b"".join(bytes([len(label)]) + label for label in labels) + bytes([len(first)]) + zone + b"\x00"
    check(struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1), True)
