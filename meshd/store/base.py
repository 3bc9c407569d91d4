"""The store: a revisioned key-value store shaped like etcd's.

Model (as etcd v3):
- One global `revision` counter. Every committed write (a put, a delete or a
  transaction) increments it once; all its changes carry that revision.
- Each key has `create_revision`, `mod_revision` and `version` (number of
  writes since creation). Compares in a transaction test these or the value.
- A transaction is `if all(compares) then success ops else failure ops`,
  committed atomically as one revision (compare-and-swap).
- Leases have a TTL; keys attached to a lease are deleted when it expires or
  is revoked. Expiry is driven by `expire_leases(now)` so the clock is injected.
- `watch(prefix, from_revision)` yields every change after `from_revision`
  (history first, then live), in revision order, with no gap and no repeat.
  Right after the history it yields one empty batch: the watcher is caught
  up (meshd uses it to tell a resuming agent it is in sync).
  History older than the compaction point raises `Compacted`, and the caller
  falls back to a fresh read (meshd sends a RESET and the current set).

meshd's servicers only use this interface, so SQLite (embedded default) and
etcd (highly available coordinator) are interchangeable.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from meshcore.errors import MeshError


class Compacted(MeshError):
    """The requested revision is older than the retained history."""

    code = "OUT_OF_RANGE"

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"revision {requested} is compacted (history starts after {compacted})")
        self.requested = requested
        self.compacted = compacted


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    type: Literal["put", "delete"]
    kv: KeyValue  # for a delete: the key's last value, mod_revision = the delete's revision
    revision: int


@dataclass(frozen=True, slots=True)
class Compare:
    """Compare a key's field. target: "value" | "version" | "create" | "mod"; op: = != < >.

    A missing key has version 0, create 0, mod 0 and value None.
    """

    key: str
    target: Literal["value", "version", "create", "mod"]
    op: Literal["=", "!=", "<", ">"]
    value: int | bytes | None

    def holds(self, kv: KeyValue | None) -> bool:
        if self.target == "value":
            actual: int | bytes | None = kv.value if kv else None
        else:
            attr = {"version": "version", "create": "create_revision", "mod": "mod_revision"}[self.target]
            actual = getattr(kv, attr) if kv else 0
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        if actual is None or self.value is None:
            return False
        return actual < self.value if self.op == "<" else actual > self.value  # type: ignore[operator]


# Shorthands for the common compares.
def absent(key: str) -> Compare:
    return Compare(key, "version", "=", 0)


def unchanged(kv: KeyValue) -> Compare:
    return Compare(kv.key, "mod", "=", kv.mod_revision)


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class DeletePrefix:
    prefix: str


Op = Put | Delete | DeletePrefix


@dataclass(slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # the new revision if anything was written, else the current one
    events: list[Event] = field(default_factory=list)


class Store(abc.ABC):
    """Revisioned key-value store; see the module docstring."""

    #: a short description for status output, e.g. "sqlite:/var/lib/meshd/state.db"
    describe: str = ""

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under `prefix` (sorted) and the revision they were read at."""

    @abc.abstractmethod
    async def txn(self, compares: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult: ...

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        return (await self.txn((), [Put(key, value, lease)])).revision

    async def delete(self, key: str) -> int:
        return (await self.txn((), [Delete(key)])).revision

    @abc.abstractmethod
    async def revision(self) -> int: ...

    @abc.abstractmethod
    async def lease_grant(self, ttl: float) -> int:
        """A new lease id with `ttl` seconds to live from now."""

    @abc.abstractmethod
    async def lease_keepalive(self, lease: int) -> float:
        """Renew; returns the TTL. NotFound if the lease expired or never existed."""

    @abc.abstractmethod
    async def lease_revoke(self, lease: int) -> None: ...

    async def expire_leases(self) -> int:
        """Revoke expired leases where the backend leaves that to its owner (SQLite); etcd does it itself."""
        return 0

    #: whether `watch` hands a reader that fell behind what waited for it as one batch (SQLite);
    #: False: one revision at a time, however far behind (etcd)
    joins_waiting: bool = False

    @abc.abstractmethod
    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[list[Event]]:
        """Batches of events after `from_revision`: history, one empty batch, then live.

        Raises Compacted (at the first iteration) if `from_revision` is older than the history."""

    @abc.abstractmethod
    async def changes(self, prefix: str, after: int) -> tuple[list[Event], int, set[str] | None]:
        """What changed under `prefix` after revision `after`, to bring a copy up to date: the
        events, the revision they bring it to, and either None (the events list deletions too)
        or every key the prefix holds then (deletions are the copy's keys missing from it).
        May raise Compacted."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...
