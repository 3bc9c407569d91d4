"""One encoding of each watch event, shared by every stream that sends it.

Every agent holds two watch streams, so with N agents each change is sent N
times and each agent's first sync sends the whole list: N² objects. The bytes
are the same for every stream that sends the same event (a live change at a
revision, or the n-th batch of the set as of a revision), so each is encoded
(and, for catalog records, signed) once and the bytes handed to every stream;
gRPC sends them as they are (`passthrough`). The current set is likewise read
and decoded once per store revision (`Snapshots`), not once per stream.

Streams that start at different revisions (a fleet booting: every join is a
new revision) send different batches of mostly the same objects, so a batch is
put together from its objects' own encodings (`Encoded` again, keyed by the
object's version): a protobuf message is the concatenation of its fields, and
a repeated field's entries may come in any number of runs, so
`header + entry + entry + ...` is the batch message, and each object is
encoded (and signed) once per version however many batches carry it.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from meshd.store.base import Compacted

#: encoded events kept: enough for every stream of a large fleet to catch up on a burst
LIMIT = 16384
#: encoded batch entries kept (one per object version): a large fleet's nodes and services
ENTRIES = 65536


def batch(header: bytes, entries: list[bytes | None]) -> bytes:
    """A batch message: its other fields (`header`, encoded) followed by its entries, each an
    encoded message holding one entry of the repeated field(s) (None: left out)."""
    return header + b"".join(e for e in entries if e is not None)


def passthrough(message_cls) -> Callable[[Any], bytes]:
    """A response serializer that sends already encoded bytes as they are."""
    encode = message_cls.SerializeToString

    def serialize(message: Any) -> bytes:
        return message if isinstance(message, bytes) else encode(message)
    return serialize


class Memo:
    """Bounded map from a key to what `build()` made for it the first time (least recently used
    goes first)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        try:
            value = self._items[key]
        except KeyError:
            self.misses += 1
            value = self._items[key] = build()
            if len(self._items) > self.limit:
                self._items.popitem(last=False)
            return value
        self.hits += 1
        self._items.move_to_end(key)
        return value


class Decoded:
    """A decoder that decodes each stored version once, however many watch streams receive it
    (a change goes to every stream of the fleet); the objects are shared: read them only."""

    def __init__(self, decode_fn: Callable[[Any], Any], limit: int = 4096) -> None:
        self.decode_fn = decode_fn
        self._memo = Memo(limit)

    def __call__(self, kv) -> Any:
        return self._memo.get((kv.key, kv.mod_revision), lambda: self.decode_fn(kv))


class Encoded(Memo):
    """Bounded map from an event's identity to its encoding (least recently used goes first)."""

    def __init__(self, limit: int = LIMIT) -> None:
        super().__init__(limit)

    def get(self, key: Hashable, build: Callable[[], Any]) -> bytes | None:
        """The encoding of the event `key`; `build()` makes the message (or its bytes) the first
        time (None: skip it)."""
        return super().get(key, lambda: _encode(build()))


def _encode(message: Any) -> bytes | None:
    return message if message is None or isinstance(message, bytes) else message.SerializeToString()


class Snapshots:
    """The decoded objects under a prefix (with their revisions) as of the store's current
    revision, read once per revision.

    Streams that start while nothing changed share one read; the objects are shared, so
    callers must not change them. The store is asked only for the changes since the copy's
    revision (`changes`: SQLite from its history, etcd the keys written since and the names
    of all, to notice deletions), and only they are decoded: each join into a
    5,000-node fleet then costs one small read, not a read and decode of every node. When the
    history no longer reaches back, the whole prefix is read again.

    `index` (optional) follows the copy change by change: `reset(objects)` after a whole
    read, `change(old, new)` for each object that changed (None for absent)."""

    def __init__(self, store, prefix: str, decode_fn, index=None) -> None:
        self.store = store
        self.prefix = prefix
        self.decode_fn = decode_fn
        self.index = index
        self._rev = -1
        self._items: list = []
        self._by_key: dict[str, tuple] = {}  # key -> (decoded object, mod revision)
        self._keys: list[str] = []  # sorted, as a range lists them
        self._reading: asyncio.Task | None = None
        self.reads = 0  # whole-prefix reads
        self.catch_ups = 0  # reads of the changes alone

    async def _read(self) -> tuple[list, int]:
        if self._rev >= 0:
            try:
                events, rev, keys = await self.store.changes(self.prefix, self._rev)
            except Compacted:
                pass
            else:
                self.catch_ups += 1
                for e in events:
                    old = self._by_key.get(e.kv.key)
                    if e.type == "delete":
                        if old is not None:
                            del self._by_key[e.kv.key]
                            del self._keys[bisect.bisect_left(self._keys, e.kv.key)]
                            self._changed(old[0], None)
                        continue
                    if old is None:
                        bisect.insort(self._keys, e.kv.key)
                    self._by_key[e.kv.key] = new = (self.decode_fn(e.kv), e.kv.mod_revision)
                    self._changed(old[0] if old is not None else None, new[0])
                if keys is not None and len(keys) != len(self._keys):  # deletions the store does not list
                    for k in self._keys:
                        if k not in keys:
                            self._changed(self._by_key[k][0], None)
                    self._keys = [k for k in self._keys if k in keys]
                    self._by_key = {k: self._by_key[k] for k in self._keys}
                # a new list each revision: streams still sending an older one keep it as it was
                self._rev, self._items = rev, [self._by_key[k] for k in self._keys]
                return self._items, rev
        kvs, rev = await self.store.range(self.prefix)
        self.reads += 1
        items = [(self.decode_fn(kv), kv.mod_revision) for kv in kvs]
        self._by_key = {kv.key: item for kv, item in zip(kvs, items)}
        self._keys = [kv.key for kv in kvs]
        self._rev, self._items = rev, items
        if self.index is not None:
            self.index.reset(obj for obj, _ in items)
        return items, rev

    def _changed(self, old, new) -> None:
        if self.index is not None:
            self.index.change(old, new)

    async def get(self) -> tuple[list, int]:
        if self._rev >= 0 and await self.store.revision() == self._rev:
            return self._items, self._rev
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read())
        return await asyncio.shield(self._reading)
