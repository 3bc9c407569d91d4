"""Transmit-limited broadcast queue: the news a member piggybacks on its packets.

Each item (a membership claim or a catalog record, already framed) is sent
at most `limit` times, where the caller computes `limit` from the mesh size
(retransmit_limit: it grows with log N). Items sent the fewest times go first,
and among those the newest, so fresh news overtakes old news. A newer item
about the same key (a member id or a record key) replaces the older one: only
the latest claim about a member is worth spreading.
"""

from __future__ import annotations


class BroadcastQueue:
    __slots__ = ("_items", "_n")

    def __init__(self) -> None:
        self._items: dict[str, list] = {}  # key -> [transmits, order, framed bytes]
        self._n = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def put(self, key: str, framed: bytes) -> None:
        self._n += 1
        self._items[key] = [0, self._n, framed]

    def clear(self) -> None:
        self._items.clear()

    def take(self, budget: int, limit: int) -> list[bytes]:
        """Items fitting in `budget` bytes; each counts one transmit and leaves at `limit`."""
        items = self._items
        if not items:
            return []
        order = sorted(items.items(), key=lambda kv: (kv[1][0], -kv[1][1])) if len(items) > 1 else list(items.items())
        out = []
        for key, item in order:
            size = len(item[2])
            if size > budget:
                continue
            budget -= size
            out.append(item[2])
            item[0] += 1
            if item[0] >= limit:
                del items[key]
            if budget < 16:  # nothing useful fits any more
                break
        return out
