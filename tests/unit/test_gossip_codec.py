"""Wire format: every message round-trips; malformed input is a PeerError, never anything else."""

from __future__ import annotations

import pytest

from meshcore.errors import InvalidArgument, PeerError
from meshcore.gossip import codec
from meshcore.gossip.messages import (
    Ack, Alive, Dead, IndirectPing, MemberState, Nack, Ping, PushPull, Record, State, Suspect,
)

SAMPLES = [
    Ping(1, "n1"), IndirectPing(2, "n2", ("10.0.0.2", 7946), True), Ack(3), Nack(4),
    Suspect(5, "n5", "n1"), Alive(6, "n6", "vm-6", ("10.0.0.6", 7946), b'{"gpus":8}'),
    Dead(7, "n7", "n7"), Record("svc", 2**40, "n1", b"payload", True, b"s" * 64),
    PushPull(True, False, (MemberState("n1", "vm", ("h", 1), 3, State.SUSPECT, b"f"),),
             (Record("a", 1, "n1", b"", False, b""),)),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg):
    assert codec.decode_message(codec.encode_message(msg)) == msg


def test_packet_round_trip_and_framing():
    framed = [codec.frame(codec.encode_message(m)) for m in SAMPLES[:8]]
    epoch, counter, sender, raws = codec.decode_packet(codec.encode_packet(9, 10, "n1", framed))
    assert (epoch, counter, sender) == (9, 10, "n1")
    assert [codec.decode_message(r) for r in raws] == SAMPLES[:8]


def test_push_pull_stream_may_exceed_64k():
    members = tuple(MemberState(f"node-{i}", f"vm-{i}", ("10.0.0.1", 7946), i, State.ALIVE, b"x" * 50)
                    for i in range(2000))
    pp = PushPull(False, True, members, ())
    data = codec.encode_stream(1, 2, "n1", pp)
    assert len(data) > 65536
    assert codec.decode_stream(data)[3] == pp


@pytest.mark.parametrize("raw,rule", [
    (b"", "empty"), (b"\x63", "unknown gossip message type"), (b"\x03\x00", "truncated"),
    (b"\x03\x00\x00\x00\x01\xff", "trailing"), (b"\x05\x00\x00\x00\x01\x02\xff\xfe\x00", "UTF-8"),
    (b"\x09\x00\xff\xff\xff\xff", "at most"),
])
def test_malformed_messages_name_the_rule(raw, rule):
    with pytest.raises(PeerError, match=rule):
        codec.decode_message(raw)


def test_bad_record_flag_and_state_are_refused():
    good = codec.encode_message(Record("k", 1, "o", b"", False, b""))
    bad = bytearray(good)
    bad[1 + 2 + 8 + 2] = 7  # the deleted flag
    with pytest.raises(PeerError, match="deleted flag"):
        codec.decode_message(bytes(bad))


def test_packet_header_rules():
    with pytest.raises(PeerError, match="shorter than its header"):
        codec.decode_packet(b"\x00" * 5)
    with pytest.raises(PeerError, match="empty sender"):
        codec.decode_packet(codec.encode_header(1, 1, "")[:16] + b"\x00")


def test_encoding_our_own_bad_fields_is_the_callers_mistake():
    with pytest.raises(InvalidArgument, match="at most 255"):
        codec.encode_message(Ping(1, "x" * 300))
    with pytest.raises(InvalidArgument, match="facts"):
        codec.encode_message(Alive(1, "n", "n", ("h", 1), b"x" * 5000))
    with pytest.raises(InvalidArgument, match="port"):
        codec.encode_message(Alive(1, "n", "n", ("h", 70000), b""))
