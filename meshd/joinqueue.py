"""Joins take turns, and only so many may wait for theirs.

Joins on one meshd run one at a time: they would all race for the same address
cursor (the store's compare-and-swap still guards against other replicas). When
a fleet of thousands boots at once, joins arrive faster than they are admitted;
unbounded, the queue grows until callers time out and retry, and every retry
lengthens it. So at most `max_pending` joins wait (0: no bound). One more is
refused at once, before any store read or signature, with ResourceExhausted
whose `retry_pushback_ms` says how long the joins ahead should take: their
number × a moving average of recent join durations, spread by jitter so that
the callers refused together do not come back together, and bounded to
[PUSHBACK_MIN_MS, PUSHBACK_MAX_MS]. The error interceptor sends it as the
standard `grpc-retry-pushback-ms` trailer; meshagent waits that long before it
tries again (meshagent/pushback.py).

Durations are on the monotonic clock; `pushback_ms` is the pure formula.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from meshcore.clock import SYSTEM, Clock
from meshcore.errors import ResourceExhausted
from meshd import metrics

#: joins that may wait for their turn by default (meshd --max-pending-joins)
MAX_PENDING_JOINS = 64
#: bounds of the suggested wait: not so short that refused callers hammer meshd, not so long that
#: an idle meshd waits for callers who were told to come back much later
PUSHBACK_MIN_MS, PUSHBACK_MAX_MS = 200, 30_000
#: the estimate of one join before any has been timed (a join signs a CSR and writes one transaction)
FIRST_ESTIMATE_S = 0.05
#: weight of the newest duration in the moving average: about the last ten joins count
SMOOTHING = 0.2
#: the suggested wait is spread over [1 - JITTER, 1 + JITTER) of the estimate
JITTER = 0.25


def pushback_ms(ahead: int, average_s: float, r: float) -> int:
    """The wait suggested to a join refused with `ahead` joins before it, each taking `average_s`
    on average; `r` in [0, 1) spreads it."""
    estimate_ms = ahead * average_s * 1000.0 * (1 + JITTER * (2 * r - 1))
    return int(min(PUSHBACK_MAX_MS, max(PUSHBACK_MIN_MS, estimate_ms)))


class JoinQueue:
    """`async with queue.turn():` waits for this join's turn, or raises ResourceExhausted at once
    when `max_pending` joins are already waiting."""

    def __init__(self, max_pending: int = MAX_PENDING_JOINS, clock: Clock = SYSTEM,
                 rng: random.Random | None = None) -> None:
        if max_pending < 0:
            raise ValueError("max_pending must be 0 (no bound) or more")
        self.max_pending = max_pending
        self.clock = clock
        self.rng = rng or random.Random()
        self.waiting = 0
        self.average_s = FIRST_ESTIMATE_S
        self._lock = asyncio.Lock()

    @property
    def admitting(self) -> int:
        """Joins waiting or under way."""
        return self.waiting + (1 if self._lock.locked() else 0)

    def _refuse(self) -> ResourceExhausted:
        ahead = self.admitting
        ms = pushback_ms(ahead, self.average_s, self.rng.random())
        metrics.JOINS_THROTTLED.inc()
        return ResourceExhausted(f"meshd is admitting {ahead} joins already: at most {self.max_pending} wait; "
                                 f"retry in {ms} ms", retry_pushback_ms=ms)

    def _timed(self, seconds: float) -> None:
        self.average_s += SMOOTHING * (max(0.0, seconds) - self.average_s)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self.max_pending and self.waiting >= self.max_pending:
            raise self._refuse()
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:  # also when the caller gave up while waiting
            self.waiting -= 1
        t0 = self.clock.monotonic()
        try:
            yield
        finally:
            self._timed(self.clock.monotonic() - t0)
            self._lock.release()
