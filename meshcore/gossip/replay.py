"""Anti-replay windows for authenticated gossip packets (as IPsec and WireGuard do).

Every sealed packet carries the sender's epoch (its start time in ms, so a
restarted sender moves forward) and a per-packet counter. Per sender the
receiver keeps the newest epoch, the highest counter and a bitmap of the last
`WINDOW` counters. A packet is fresh if it has a newer epoch, a higher
counter, or a counter inside the window not seen before; anything else is a
replay (or too old to tell) and is dropped. Windows are only created for
packets that passed authentication, so strangers cannot fill the table.
"""

from __future__ import annotations

WINDOW = 64
_MASK = (1 << WINDOW) - 1


class ReplayWindows:
    __slots__ = ("_w",)

    def __init__(self) -> None:
        self._w: dict[str, list[int]] = {}  # sender -> [epoch, highest counter, bitmap]

    def fresh(self, sender: str, epoch: int, counter: int) -> bool:
        """True (and remembered) if this (epoch, counter) was never seen from `sender`."""
        w = self._w.get(sender)
        if w is None or epoch > w[0]:
            self._w[sender] = [epoch, counter, 1]
            return True
        if epoch < w[0]:
            return False
        top = w[1]
        if counter > top:
            shift = counter - top
            w[2] = ((w[2] << shift) | 1) & _MASK if shift < WINDOW else 1
            w[1] = counter
            return True
        back = top - counter
        if back >= WINDOW or (w[2] >> back) & 1:
            return False
        w[2] |= 1 << back
        return True

    def forget(self, sender: str) -> None:
        self._w.pop(sender, None)
