"""Capped exponential backoff with jitter: the one retry schedule of the mesh.

Attempt n (1-based) waits `initial * 2**(n-1)`, capped at `maximum`, then
spread by ±`jitter` (a fraction) so that many agents retrying after the same
outage do not arrive together. Used by the agent's uplink, the Consul and
Kubernetes sync loops, the store's reconnects and the AWS builder's retries.
`delay()` is the pure formula; `Backoff` counts the attempts for a loop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def delay(attempt: int, initial: float, maximum: float, jitter: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1-based)."""
    base = min(maximum, initial * (2 ** min(max(0, attempt - 1), 40)))
    if not jitter:
        return base
    r = (rng or random).random()
    return max(0.0, base * (1 + jitter * (2 * r - 1)))


@dataclass
class Backoff:
    """Retry state for one loop: `next()` after a failure, `reset()` after a success."""

    initial: float
    maximum: float
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial:
            raise ValueError("backoff bounds must satisfy 0 < initial <= maximum")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff jitter must be in [0, 1)")

    def next(self) -> float:
        self.attempts += 1
        return delay(self.attempts, self.initial, self.maximum, self.jitter, self.rng)

    def reset(self) -> None:
        self.attempts = 0
