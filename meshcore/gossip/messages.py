"""Gossip message types: what SWIM members say to each other.

Each message is a small frozen dataclass with a numeric `TYPE`. Types are only
ever appended: a number once used keeps its meaning forever, so old and new
agents can share a mesh (a decoder skips nothing silently: an unknown type is
a PeerError, counted and dropped by the receiver).

Member states: ALIVE, SUSPECT, DEAD, LEFT (a graceful leave is a DEAD message
whose sender is the member itself). Incarnation numbers order the claims
about one member: only the member raises its own incarnation, to refute.
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
    """A catalog record signed by meshd. `deleted` records are tombstones."""

    TYPE = 8
    key: str
    revision: int
    origin: str  # the node whose service this is
    payload: bytes
    deleted: bool = False
    signature: bytes = b""

    def wins_over(self, other: Record) -> bool:
        """The conflict rule: higher revision wins; on a tie the higher origin id.

        Two different records with the same revision and origin are never
        signed by meshd, but should they meet, the tombstone and then the
        bytes decide, so every node still keeps the same one."""
        return ((self.revision, self.origin, self.deleted, self.payload, self.signature)
                > (other.revision, other.origin, other.deleted, other.payload, other.signature))


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


Message = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | Record | PushPull

# Which messages may be piggybacked as broadcasts (the rest are point to point).
BROADCAST_TYPES = (Suspect, Alive, Dead, Record)
