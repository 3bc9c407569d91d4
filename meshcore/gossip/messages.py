"""Gossip message types: what SWIM members say to each other.

Each message is a small frozen dataclass with a numeric `TYPE`. Types are only
ever appended: a number once used keeps its meaning forever, so old and new
agents can share a mesh (a decoder skips nothing silently: an unknown type is
a PeerError, counted and dropped by the receiver).

Member states: ALIVE, SUSPECT, DEAD, LEFT. A graceful leave is a LEAVE message
carrying a proof made with the leaving node's own key (or, from older agents
and in the simulator, a DEAD message whose sender is the member itself).
Incarnation numbers order the claims about one member: only the member raises
its own incarnation, to refute. They are 32 bits on the wire and compared in
serial-number arithmetic (RFC 1982, `newer`): the next incarnation after
2**32-1 is 0, and it is newer, so a member can always refute.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

Addr = tuple[str, int]


class State(IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def label(self) -> str:
        return self.name.lower()


INCARNATION_BITS = 32
_MOD = 1 << INCARNATION_BITS
_HALF = 1 << (INCARNATION_BITS - 1)


def newer(a: int, b: int) -> bool:
    """True if incarnation `a` is newer than `b` (serial-number arithmetic: never overflows)."""
    return 0 < (a - b) % _MOD < _HALF


def at_least(a: int, b: int) -> bool:
    """True if `a` is `b` or newer."""
    return a == b or newer(a, b)


def next_incarnation(a: int) -> int:
    return (a + 1) % _MOD


def newest(a: int, b: int) -> int:
    return a if at_least(a, b) else b


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE = 1
    seq: int
    target: str  # node id the sender means to reach (an address may be reused)


@dataclass(frozen=True, slots=True)
class IndirectPing:
    TYPE = 2
    seq: int
    target: str
    addr: Addr
    want_nack: bool = True


@dataclass(frozen=True, slots=True)
class Ack:
    TYPE = 3
    seq: int


@dataclass(frozen=True, slots=True)
class Nack:
    TYPE = 4
    seq: int


@dataclass(frozen=True, slots=True)
class Suspect:
    TYPE = 5
    incarnation: int
    node: str
    sender: str  # who suspects: confirmations must come from distinct members


@dataclass(frozen=True, slots=True)
class Alive:
    TYPE = 6
    incarnation: int
    node: str
    name: str
    addr: Addr
    facts: bytes = b""


@dataclass(frozen=True, slots=True)
class Dead:
    TYPE = 7
    incarnation: int
    node: str
    sender: str  # sender == node means a graceful leave


@dataclass(frozen=True, slots=True)
class Record:
    """A catalog record signed by meshd. `deleted` records are tombstones.

    `key_id` names the catalog key that signed it and `expires` (unix seconds)
    ends its validity; both are covered by the signature (records.py). A record
    without them is of a meshd before key rotation (accepted only from one)."""

    TYPE = 8
    key: str
    revision: int
    origin: str  # the node whose service this is
    payload: bytes
    deleted: bool = False
    signature: bytes = b""
    key_id: str = ""
    expires: int = 0

    def wins_over(self, other: Record) -> bool:
        """The conflict rule: higher revision wins; on a tie the higher origin id.

        Two different records with the same revision and origin are never
        signed by meshd, but should they meet, the tombstone and then the
        bytes decide, so every node still keeps the same one. A record meshd
        signed again (a new key, or a later expiry) has the same revision and
        wins by its later expiry, so a refreshed record replaces the old one."""
        return ((self.revision, self.origin, self.deleted, self.expires, self.payload, self.key_id, self.signature)
                > (other.revision, other.origin, other.deleted, other.expires, other.payload, other.key_id,
                   other.signature))


@dataclass(frozen=True, slots=True)
class MemberState:
    """One member as carried in a push-pull exchange."""

    node: str
    name: str
    addr: Addr
    incarnation: int
    state: State
    facts: bytes = b""


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full state, sent over TCP. `reply` is False on the request, True on the answer."""

    TYPE = 9
    reply: bool
    join: bool
    members: tuple[MemberState, ...]
    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class Leave:
    """A graceful leave, proved by the leaving node: `proof` is checked by the injected
    `verify_leave(node, incarnation, proof)` (a certificate from the mesh CA and a signature)."""

    TYPE = 10
    incarnation: int
    node: str
    proof: bytes


Message = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | Record | PushPull | Leave

# Which messages may be piggybacked as broadcasts (the rest are point to point).
BROADCAST_TYPES = (Suspect, Alive, Dead, Record, Leave)
