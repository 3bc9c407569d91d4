"""Supervised background loops: an unexpected error restarts the loop, it never ends it silently.

A daemon's loops (watch streams, lease renewal, health checks) handle the
errors they expect (an RPC failing while meshd is away). Anything else, a
full disk when a file is written, a bug, used to end the task without a
word while the daemon went on saying it was fine. Under a `Supervisor` such
an error is logged with the loop's name and traceback, counted, and the loop
starts again after a backoff (meshcore.backoff); a loop that returns has
finished its job and is not restarted.

Health: a loop is *degraded* from its failure until it has run
`healthy_after_s` without failing again (on the monotonic clock), so a loop
that fails on every pass stays degraded; `health()` is the one line the
daemon shows ("ok" or "degraded: renew (OSError: ...)").
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from meshcore.backoff import Backoff
from meshcore.clock import SYSTEM, Clock

log = logging.getLogger("meshcore.supervise")


class Supervisor:
    def __init__(self, clock: Clock = SYSTEM, backoff_min_s: float = 0.2, backoff_max_s: float = 5.0,
                 healthy_after_s: float = 30.0, rng: random.Random | None = None,
                 on_failure: Callable[[str, BaseException], None] = lambda name, error: None) -> None:
        self.clock = clock
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self.healthy_after_s = healthy_after_s
        self.rng = rng or random.Random()
        self.on_failure = on_failure
        self.failures: dict[str, int] = {}  # loop name -> failures since start
        self._last: dict[str, tuple[float, str]] = {}  # loop name -> (monotonic time, error) of the last failure

    def spawn(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task:
        return asyncio.create_task(self.run(name, loop), name=name)

    async def run(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(self.backoff_min_s, self.backoff_max_s, 0.5, self.rng)
        while True:
            started = self.clock.monotonic()
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                now = self.clock.monotonic()
                if now - started >= self.healthy_after_s:
                    backoff.reset()
                self.failures[name] = self.failures.get(name, 0) + 1
                error = f"{type(e).__name__}: {e}"
                self._last[name] = (now, error)
                wait = backoff.next()
                log.error("background loop %r failed (%s); restarting it in %.1f s (failure %d)",
                          name, error, wait, self.failures[name], exc_info=True)
                self.on_failure(name, e)
                await asyncio.sleep(wait)

    def degraded(self) -> dict[str, str]:
        """Loops that failed within the last `healthy_after_s`, with their last error."""
        now = self.clock.monotonic()
        return {n: err for n, (t, err) in sorted(self._last.items()) if now - t < self.healthy_after_s}

    def health(self) -> str:
        bad = self.degraded()
        if not bad:
            return "ok"
        return "degraded: " + "; ".join(f"{n} ({err})" for n, err in bad.items())
