"""Compact binary wire format for gossip messages (big-endian, struct-packed).

A packet (the plaintext inside one sealed datagram or TCP frame) is

    sender header:  epoch u64 | counter u64 | sender id (str8)
    messages:       repeated ( length u16 | type u8 | body )

Strings are `str8` (u8 length + UTF-8), byte blobs `bytes16` (u16 length),
addresses are host str8 + port u16. The epoch (the sender's start time in
milliseconds) and the per-datagram counter feed the receiver's replay window.

The decoder's contract: any input either decodes or raises PeerError, never
anything else, so a receiver can count and drop a bad packet with one except.
Encoding our own messages with out-of-range fields raises InvalidArgument:
that is a caller's mistake, not a peer's.
"""

from __future__ import annotations

import struct

from meshcore import limits
from meshcore.errors import InvalidArgument, PeerError
from meshcore.gossip.messages import (
    Ack, Addr, Alive, Dead, IndirectPing, Leave, MemberState, Message, Nack, Ping, PushPull, Record,
    State, Suspect,
)

MAX_ID = 255
MAX_FACTS = limits.GOSSIP_MAX_FACTS
MAX_PAYLOAD = limits.GOSSIP_MAX_PAYLOAD
MAX_SIGNATURE = 255
#: a catalog key id on the wire: 8 hex characters (meshd's gossipkeys.key_id)
KEY_ID_BYTES = 8
#: the seal of a record signed by a rotating catalog key: key id, expiry (u64), Ed25519 signature
SEALED_BYTES = KEY_ID_BYTES + 8 + 64
MAX_PUSHPULL_ITEMS = 100_000
MAX_PROOF = 1024

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_HDR = struct.Struct(">QQ")
_SEQ = struct.Struct(">BI")
_INC = struct.Struct(">BI")
_REV = struct.Struct(">Q")


def _str8(s: str) -> bytes:
    b = s.encode()
    if len(b) > MAX_ID:
        raise InvalidArgument(f"gossip string {s[:20]!r}… is {len(b)} bytes: at most {MAX_ID} allowed")
    return _U8.pack(len(b)) + b


def _bytes16(b: bytes, limit: int, what: str) -> bytes:
    if len(b) > limit:
        raise InvalidArgument(f"gossip {what} is {len(b)} bytes: at most {limit} allowed")
    return _U16.pack(len(b)) + b


def _addr(a: Addr) -> bytes:
    host, port = a
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"invalid port {port!r}: a port must be between 0 and 65535")
    return _str8(host) + _U16.pack(port)


def _seal(r: Record) -> bytes:
    """The record's signature field: the bare signature (a meshd before key rotation), or
    key id | expires u64 | signature (SEALED_BYTES long). Both fit the old u8-length field."""
    if not r.key_id:
        return r.signature
    kid = r.key_id.encode()
    if len(kid) != KEY_ID_BYTES or not 0 <= r.expires < 2**64 or len(r.signature) != 64:
        raise InvalidArgument(f"record key id {r.key_id!r} must be {KEY_ID_BYTES} characters, its expiry 0-2^64 "
                              "and its signature 64 bytes")
    return kid + _REV.pack(r.expires) + r.signature


def encode_record(r: Record) -> bytes:
    seal = _seal(r)
    if len(seal) > MAX_SIGNATURE:
        raise InvalidArgument(f"record signature of {len(seal)} bytes: at most {MAX_SIGNATURE} allowed")
    return (_str8(r.key) + _REV.pack(r.revision) + _str8(r.origin) + _U8.pack(1 if r.deleted else 0)
            + _bytes16(r.payload, MAX_PAYLOAD, "record payload")
            + _U8.pack(len(seal)) + seal)


def _member(m: MemberState) -> bytes:
    return (_str8(m.node) + _str8(m.name) + _addr(m.addr) + _U32.pack(m.incarnation)
            + _U8.pack(int(m.state)) + _bytes16(m.facts, MAX_FACTS, "facts"))


def encode_message(m: Message) -> bytes:
    """One message: type byte and body (without the length prefix)."""
    t = m.TYPE
    if t in (1, 3, 4):
        body = _SEQ.pack(t, m.seq)
        return body + _str8(m.target) if t == 1 else body
    if t == 2:
        return _SEQ.pack(t, m.seq) + _str8(m.target) + _addr(m.addr) + _U8.pack(1 if m.want_nack else 0)
    if t in (5, 7):
        return _INC.pack(t, m.incarnation) + _str8(m.node) + _str8(m.sender)
    if t == 6:
        return (_INC.pack(t, m.incarnation) + _str8(m.node) + _str8(m.name) + _addr(m.addr)
                + _bytes16(m.facts, MAX_FACTS, "facts"))
    if t == 8:
        if m.revision < 0:
            raise InvalidArgument("record revision must not be negative")
        return _U8.pack(t) + encode_record(m)
    if t == 9:
        parts = [_U8.pack(t), _U8.pack((1 if m.reply else 0) | (2 if m.join else 0)),
                 _U32.pack(len(m.members))]
        parts += [_member(x) for x in m.members]
        parts.append(_U32.pack(len(m.records)))
        parts += [encode_record(r) for r in m.records]
        return b"".join(parts)
    if t == 10:
        return _INC.pack(t, m.incarnation) + _str8(m.node) + _bytes16(m.proof, MAX_PROOF, "leave proof")
    raise InvalidArgument(f"cannot encode {type(m).__name__}: not a gossip message")


def frame(encoded: bytes) -> bytes:
    """Length-prefix one encoded message for a packet (u16: messages stay under 64 KiB)."""
    if len(encoded) > 0xFFFF:
        raise InvalidArgument(f"gossip message of {len(encoded)} bytes exceeds 65535")
    return _U16.pack(len(encoded)) + encoded


def encode_header(epoch: int, counter: int, sender: str) -> bytes:
    return _HDR.pack(epoch, counter) + _str8(sender)


def encode_packet(epoch: int, counter: int, sender: str, framed: list[bytes]) -> bytes:
    return encode_header(epoch, counter, sender) + b"".join(framed)


# --- decoding: every failure becomes PeerError ------------------------------


class _Reader:
    __slots__ = ("b", "i")

    def __init__(self, b: bytes, i: int = 0) -> None:
        self.b = b
        self.i = i

    def take(self, n: int) -> bytes:
        j = self.i + n
        if j > len(self.b):
            raise PeerError(f"truncated gossip message: needed {n} bytes at offset {self.i}")
        v = self.b[self.i:j]
        self.i = j
        return v

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return _U16.unpack(self.take(2))[0]

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def u64(self) -> int:
        return _REV.unpack(self.take(8))[0]

    def str8(self) -> str:
        raw = self.take(self.u8())
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise PeerError("gossip string is not valid UTF-8") from None

    def bytes16(self, limit: int) -> bytes:
        n = self.u16()
        if n > limit:
            raise PeerError(f"gossip field of {n} bytes exceeds its {limit}-byte limit")
        return bytes(self.take(n))

    def addr(self) -> Addr:
        return (self.str8(), self.u16())

    def done(self) -> None:
        if self.i != len(self.b):
            raise PeerError(f"gossip message has {len(self.b) - self.i} trailing bytes")


def _read_record(r: _Reader) -> Record:
    key = r.str8()
    rev = r.u64()
    origin = r.str8()
    flag = r.u8()
    if flag > 1:
        raise PeerError(f"record deleted flag {flag} is not 0 or 1")
    payload = r.bytes16(MAX_PAYLOAD)
    sig = bytes(r.take(r.u8()))
    if len(sig) != SEALED_BYTES:  # a bare signature: whether it is acceptable is the verifier's call
        return Record(key, rev, origin, payload, bool(flag), sig)
    try:
        kid = sig[:KEY_ID_BYTES].decode("ascii")
    except UnicodeDecodeError:
        raise PeerError("record key id is not ASCII") from None
    return Record(key, rev, origin, payload, bool(flag), sig[KEY_ID_BYTES + 8:], kid,
                  _REV.unpack(sig[KEY_ID_BYTES:KEY_ID_BYTES + 8])[0])


def _read_member(r: _Reader) -> MemberState:
    node, name, addr, inc, st = r.str8(), r.str8(), r.addr(), r.u32(), r.u8()
    if st > State.LEFT:
        raise PeerError(f"member state {st} is not one of 0-3")
    return MemberState(node, name, addr, inc, State(st), r.bytes16(MAX_FACTS))


def decode_message(b: bytes) -> Message:
    """Decode one message (type byte and body). Raises only PeerError."""
    if not b:
        raise PeerError("empty gossip message")
    r = _Reader(b, 1)
    t = b[0]
    if t == 1:
        m: Message = Ping(r.u32(), r.str8())
    elif t == 2:
        seq, target, addr, nack = r.u32(), r.str8(), r.addr(), r.u8()
        m = IndirectPing(seq, target, addr, bool(nack))
    elif t == 3:
        m = Ack(r.u32())
    elif t == 4:
        m = Nack(r.u32())
    elif t == 5:
        m = Suspect(r.u32(), r.str8(), r.str8())
    elif t == 6:
        m = Alive(r.u32(), r.str8(), r.str8(), r.addr(), r.bytes16(MAX_FACTS))
    elif t == 7:
        m = Dead(r.u32(), r.str8(), r.str8())
    elif t == 8:
        m = _read_record(r)
    elif t == 9:
        flags = r.u8()
        n = r.u32()
        if n > MAX_PUSHPULL_ITEMS:
            raise PeerError(f"push-pull claims {n} members: at most {MAX_PUSHPULL_ITEMS}")
        members = tuple(_read_member(r) for _ in range(n))
        n = r.u32()
        if n > MAX_PUSHPULL_ITEMS:
            raise PeerError(f"push-pull claims {n} records: at most {MAX_PUSHPULL_ITEMS}")
        records = tuple(_read_record(r) for _ in range(n))
        m = PushPull(bool(flags & 1), bool(flags & 2), members, records)
    elif t == 10:
        m = Leave(r.u32(), r.str8(), r.bytes16(MAX_PROOF))
    else:
        raise PeerError(f"unknown gossip message type {t}")
    r.done()
    return m


def decode_packet(b: bytes) -> tuple[int, int, str, list[bytes]]:
    """Split a packet into (epoch, counter, sender, raw messages). Raises only PeerError.

    Messages are returned undecoded so one bad message does not cost the rest."""
    if len(b) < _HDR.size + 1:
        raise PeerError(f"gossip packet of {len(b)} bytes is shorter than its header")
    epoch, counter = _HDR.unpack_from(b, 0)
    r = _Reader(b, _HDR.size)
    sender = r.str8()
    if not sender:
        raise PeerError("gossip packet has an empty sender id")
    out = []
    n = len(b)
    while r.i < n:
        out.append(r.take(r.u16()))
    return epoch, counter, sender, out


def encode_stream(epoch: int, counter: int, sender: str, m: Message) -> bytes:
    """A TCP (push-pull) packet: the header and one unframed message, which may exceed 64 KiB."""
    return encode_header(epoch, counter, sender) + encode_message(m)


def decode_stream(b: bytes) -> tuple[int, int, str, Message]:
    """Inverse of encode_stream. Raises only PeerError."""
    if len(b) < _HDR.size + 1:
        raise PeerError(f"gossip stream packet of {len(b)} bytes is shorter than its header")
    epoch, counter = _HDR.unpack_from(b, 0)
    r = _Reader(b, _HDR.size)
    sender = r.str8()
    if not sender:
        raise PeerError("gossip packet has an empty sender id")
    return epoch, counter, sender, decode_message(b[r.i:])
