"""SyncLoop: debounce, retry with capped backoff, no lost updates, periodic resync, errors kept inside."""

from __future__ import annotations

import asyncio
import random

import pytest

from meshcore.backoff import delay
from meshcore.errors import InvalidArgument, Unavailable
from meshd.sync.base import SyncLoop, SyncLoopConfig, SyncReport, SyncTarget
from testbed.doubles.sync_helpers import by_id, node, service
from tests.meshfix import eventually


class ScriptedTarget:
    """Records what it was asked to apply; fails while `failures` > 0; can be held mid-reconcile."""

    name = "scripted"

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.applied: list[list[str]] = []
        self.invalidations = 0
        self.hold: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.closed = False

    async def reconcile(self, services, nodes) -> SyncReport:
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.failures > 0:
            self.failures -= 1
            raise Unavailable("registry down")
        self.applied.append(sorted(s.name for s in services))
        return SyncReport(errors={s.name: "collides" for s in services if s.name.startswith("dup")})

    def invalidate(self) -> None:
        self.invalidations += 1

    async def close(self) -> None:
        self.closed = True


FAST = SyncLoopConfig(debounce_s=0.01, resync_interval_s=60, backoff_initial_s=0.01, backoff_max_s=0.04)
VM = node("vm1")


def test_scripted_target_satisfies_the_protocol():
    assert isinstance(ScriptedTarget(), SyncTarget)


def backoff_delay(failures: int, cfg: SyncLoopConfig, rng: random.Random) -> float:
    """The delay SyncLoop waits after `failures` failed reconciles in a row."""
    return delay(failures, cfg.backoff_initial_s, cfg.backoff_max_s, cfg.jitter, rng)


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter():
    cfg = SyncLoopConfig(backoff_initial_s=0.5, backoff_max_s=4, jitter=0.0)
    assert [backoff_delay(n, cfg, random.Random(1)) for n in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]
    assert backoff_delay(10_000, cfg, random.Random(1)) == 4  # days of failures: still the cap
    jittery = SyncLoopConfig(backoff_initial_s=1, backoff_max_s=1, jitter=0.2)
    rng = random.Random(7)
    delays = [backoff_delay(3, jittery, rng) for _ in range(200)]
    assert all(0.8 <= d <= 1.2 for d in delays) and max(delays) - min(delays) > 0.1


def test_config_rules_are_named():
    with pytest.raises(InvalidArgument, match="negative"):
        SyncLoopConfig(debounce_s=-1)
    with pytest.raises(InvalidArgument, match="at least"):
        SyncLoopConfig(backoff_initial_s=5, backoff_max_s=1)
    with pytest.raises(InvalidArgument, match="jitter"):
        SyncLoopConfig(jitter=1.5)


async def test_a_burst_of_updates_is_folded_and_the_last_one_applied():
    t = ScriptedTarget()
    loop = SyncLoop(t, SyncLoopConfig(debounce_s=0.05, resync_interval_s=60))
    loop.start()
    try:
        assert await eventually(lambda: len(t.applied) == 1, 2)  # the start-up reconcile
        for i in range(20):
            loop.update([service(f"s{i}", VM)], by_id(VM))
        assert await loop.wait_synced(2)
        assert t.applied[-1] == ["s19"]
        assert len(t.applied) <= 3  # start-up, then at most two passes for the burst
    finally:
        await loop.stop()
    assert t.closed


async def test_failures_are_retried_with_backoff_and_stay_inside():
    t = ScriptedTarget(failures=3)
    loop = SyncLoop(t, FAST, rng=random.Random(3))
    loop.start()
    try:
        loop.update([service("a", VM)], by_id(VM))
        assert await eventually(lambda: loop.status.failures >= 1, 2)
        assert "registry down" in loop.status.last_error
        loop.update([service("b", VM)], by_id(VM))  # arrives while failing: must not be lost
        assert await loop.wait_synced(3)
        assert t.applied[-1] == ["b"]
        assert loop.status.failures == 0 and loop.status.last_error == ""
        assert loop.status.reconciles >= 4 and t.invalidations >= 3  # state is uncertain after a failure
    finally:
        await loop.stop()


async def test_an_update_during_a_reconcile_gets_its_own_pass():
    t = ScriptedTarget()
    loop = SyncLoop(t, FAST)
    loop.start()
    try:
        assert await eventually(lambda: len(t.applied) == 1, 2)
        t.hold, t.entered = asyncio.Event(), asyncio.Event()
        loop.update([service("a", VM)], by_id(VM))
        await asyncio.wait_for(t.entered.wait(), 2)
        loop.update([service("a", VM), service("b", VM)], by_id(VM))
        assert not await loop.wait_synced(0.05)
        t.hold.set()
        assert await loop.wait_synced(2)
        assert t.applied[-1] == ["a", "b"]
    finally:
        await loop.stop()


async def test_periodic_resync_invalidates_and_reconciles():
    t = ScriptedTarget()
    loop = SyncLoop(t, SyncLoopConfig(debounce_s=0, resync_interval_s=0.05))
    loop.start()
    try:
        assert await eventually(lambda: t.invalidations >= 2 and len(t.applied) >= 3, 3)
    finally:
        await loop.stop()


async def test_per_service_errors_are_exposed_and_kick_is_thread_safe():
    t = ScriptedTarget()
    loop = SyncLoop(t, FAST)
    loop.start()
    try:
        loop.update([service("dup-name", VM), service("ok", VM)], by_id(VM))
        assert await loop.wait_synced(2)
        assert loop.errors() == {"dup-name": "collides"}
        before = len(t.applied)
        await asyncio.to_thread(loop.kick)  # from a watch thread
        assert await eventually(lambda: len(t.applied) > before, 2)
    finally:
        await loop.stop()
