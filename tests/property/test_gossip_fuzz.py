"""Fuzzing the gossip boundary (h11 style: only invariants are checked).

- the decoders raise nothing but PeerError, whatever the bytes;
- every well-formed message round-trips;
- a `Swim` fed any mix of random, mutated, replayed and well-formed packets
  never raises, keeps its invariants, never lowers an incarnation, and counts
  every refused packet.
"""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcore.errors import PeerError
from meshcore.gossip import codec
from meshcore.gossip.keyring import Keyring, Plaintext
from meshcore.gossip.messages import (
    Ack, Alive, Dead, IndirectPing, MemberState, Nack, Ping, PushPull, Record, State, Suspect,
)
from meshcore.gossip.profiles import local
from meshcore.gossip.swim import Swim
from tests.sim.invariants import check_invariants

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.sampled_from(["n1", "n2", "n3", "n4", "n5"])
incs = st.integers(0, 6)
seqs = st.integers(0, 2**32 - 1)
addrs = st.tuples(st.sampled_from(["10.0.0.2", "10.0.0.3", "h"]), st.integers(0, 65535))
blobs = st.binary(max_size=40)
records = st.builds(Record, st.sampled_from(["a", "b", "c"]), st.integers(0, 5), ids, blobs,
                    st.booleans(), st.sampled_from([b"ok", b"bad", b""]))
messages = st.one_of(
    st.builds(Ping, seqs, ids), st.builds(IndirectPing, seqs, ids, addrs, st.booleans()),
    st.builds(Ack, seqs), st.builds(Nack, seqs), st.builds(Suspect, incs, ids, ids),
    st.builds(Alive, incs, ids, st.text(max_size=8), addrs, blobs), st.builds(Dead, incs, ids, ids),
    records)
member_states = st.builds(MemberState, ids, st.text(max_size=5), addrs, incs, st.sampled_from(list(State)), blobs)
pushpulls = st.builds(PushPull, st.booleans(), st.booleans(),
                      st.lists(member_states, max_size=6).map(tuple), st.lists(records, max_size=4).map(tuple))


@FAST
@given(st.binary(max_size=300))
def test_decoders_raise_only_peer_error(data):
    for decode in (codec.decode_message, codec.decode_packet, codec.decode_stream):
        try:
            decode(data)
        except PeerError:
            pass


@FAST
@given(st.one_of(messages, pushpulls), st.data())
def test_round_trip_and_mutations(msg, data):
    raw = codec.encode_message(msg)
    assert codec.decode_message(raw) == msg
    i = data.draw(st.integers(0, len(raw) - 1))
    mutated = raw[:i] + bytes([data.draw(st.integers(0, 255))]) + raw[i + 1:]
    for candidate in (mutated, raw[:i], raw + b"\x00"):
        try:
            codec.decode_message(candidate)
        except PeerError:
            pass


KEY = os.urandom(32)


def fresh(keyring=None) -> Swim:
    return Swim("n1", "vm-1", ("10.0.0.1", 7946), local(), random.Random(1), keyring or Plaintext(),
                lambda r: r.signature == b"ok", now=0.0)


@FAST
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_random_datagrams_are_all_counted_and_dropped(datas):
    s = fresh(Keyring(KEY))
    before = s.members()
    for k, d in enumerate(datas):
        s.receive(d, ("10.0.0.9", 1), 0.01 * k)
    st_ = s.stats
    assert st_.packets_received == len(datas)
    assert st_.decrypt_failures + st_.oversized_packets == len(datas)
    assert s.members() == before
    check_invariants(s)


packet_plans = st.lists(st.tuples(ids, st.lists(messages, min_size=1, max_size=4),
                                  st.sampled_from(["ok", "replay", "truncate", "flip"])), max_size=25)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet_plans, st.lists(pushpulls, max_size=2), st.floats(0.0, 0.5))
def test_state_machine_keeps_its_invariants_under_any_input(plan, pps, dt):
    s = fresh()
    counters: dict[str, int] = {}
    last: bytes | None = None
    incs: dict[str, int] = {}
    now = 0.0
    refused = 0
    for sender, msgs, how in plan:
        if sender == "n1":
            sender = "n9"
        counters[sender] = counters.get(sender, 0) + 1
        framed = [codec.frame(codec.encode_message(m)) for m in msgs]
        pkt = Plaintext().seal(codec.encode_packet(1, counters[sender], sender, framed))
        if how == "replay" and last is not None:
            pkt, refused = last, refused + 1  # `last` is always a packet that was accepted
        elif how == "truncate":
            pkt = pkt[: len(pkt) // 2]
        elif how == "flip":
            pkt = pkt[:-1] + bytes([pkt[-1] ^ 0xFF])
        if how == "ok":
            last = pkt
        now += dt
        s.receive(pkt, ("10.0.0.9", 7946), now)
        for _ in range(20):  # drive due timers, bounded
            if s.next_timer() > now:
                break
            s.tick(now)
        s.datagrams_to_send()
        s.pushpull_requests()
        s.events()
        check_invariants(s)
        for m in s.members():
            assert m.incarnation >= incs.get(m.node, 0), "incarnations never go back"
            incs[m.node] = m.incarnation
    for pp in pps:
        data = Plaintext().seal(codec.encode_stream(2, 1, "n7", pp))
        reply = s.receive_stream(data, ("10.0.0.7", 7946), now)
        assert reply is None or reply[0] == 0
        assert s.receive_stream(data, ("10.0.0.7", 7946), now) is None  # a replayed stream
        check_invariants(s)
    assert s.stats.replayed_packets >= refused
    assert all(r.signature == b"ok" for r in s.all_records()), "no unsigned record is ever stored"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_any_delivery_order_gives_the_same_catalog(recs, shuffler):
    views = []
    for order in (recs, shuffler.sample(recs, len(recs))):
        s = fresh()
        for k, r in enumerate(order):
            s.receive(Plaintext().seal(codec.encode_packet(1, k + 1, "n2", [codec.frame(codec.encode_message(r))])),
                      ("10.0.0.2", 7946), 0.0)
        views.append(sorted(s.all_records(), key=lambda r: r.key))
    assert views[0] == views[1]
