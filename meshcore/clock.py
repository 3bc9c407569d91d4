"""One clock for the whole mesh, injected wherever time is read.

Durations (leases, timeouts, backoff, debounce, suspicion) are measured on
`monotonic()`, which never jumps when an operator or NTP steps the wall clock.
`wall()` is for what is shown to people or stored as a point in time (token
expiry, join time, certificate validity) and nothing else. Code takes a
`Clock` argument (default `SYSTEM`); tests pass a `ManualClock` and move it by
hand, so a lease can be expired, or the wall clock stepped, without sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that only moves forward; for durations."""

    def wall(self) -> float:
        """Seconds since the epoch; for timestamps shown or stored."""


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


SYSTEM = SystemClock()


class ManualClock:
    """A clock that moves only when told: `advance(s)` moves both; `step_wall(s)` moves the wall alone."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._mono, self._wall = monotonic, wall

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self._mono += seconds
        self._wall += seconds

    def step_wall(self, seconds: float) -> None:
        """An operator or NTP stepping the wall clock (either way); durations do not notice."""
        self._wall += seconds
