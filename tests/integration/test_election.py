"""Leader election on the SQLite store: a single meshd leads at once; the
hand-over and step-down rules, with a fake clock where timing matters. (The
same election on a real etcd cluster is in test_etcd_ha.py.)"""

from __future__ import annotations

import asyncio

import pytest

from meshcore.clock import ManualClock
from meshcore.errors import InvalidArgument, Unavailable
from meshd.election import Election, ElectionConfig
from meshd.store.base import Put
from meshd.store.sqlite import SQLiteStore

FAST = ElectionConfig(key="/election/test", ttl=3.0, keepalive_interval=0.1, step_down_margin=0.5, retry_interval=0.05)


@pytest.fixture
async def store(tmp_path):
    s = SQLiteStore(tmp_path / "state.db")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def elections():
    made: list[Election] = []
    try:
        yield made
    finally:
        for e in made:
            await e.resign()


async def test_a_single_candidate_leads_at_once_and_resigns(store, elections):
    changes = []
    e = Election(store, "meshd-a", FAST, on_change=changes.append)
    elections.append(e)
    e.start()
    await asyncio.wait_for(e.wait_leader(), 5)
    assert e.is_leader and await e.leader() == "meshd-a"
    kv = await store.get(FAST.key)
    assert kv.lease != 0  # the key lives under the candidate's lease
    await e.resign()
    assert not e.is_leader and changes == [True, False]
    assert await store.get(FAST.key) is None  # handed over at once, not after the TTL


async def test_the_follower_takes_over_on_resign_and_on_revoke(store, elections):
    a = Election(store, "a", FAST)
    b = Election(store, "b", FAST)
    c = Election(store, "c", FAST)
    elections.extend([a, b, c])
    a.start()
    await asyncio.wait_for(a.wait_leader(), 5)
    b.start()
    c.start()
    await asyncio.sleep(0.3)
    assert not b.is_leader and not c.is_leader and await a.leader() == "a"
    await a.resign()
    await asyncio.wait_for(asyncio.wait([asyncio.create_task(b.wait_leader()),
                                         asyncio.create_task(c.wait_leader())],
                                        return_when=asyncio.FIRST_COMPLETED), 5)
    leader, other = (b, c) if b.is_leader else (c, b)
    assert not other.is_leader and await a.leader() == leader.candidate
    # the leader's lease revoked (as when etcd expires it): it steps down, the other leads
    await store.lease_revoke((await store.get(FAST.key)).lease)
    await asyncio.wait_for(other.wait_leader(), 5)
    await asyncio.wait_for(leader.wait_follower(), 5)
    assert await a.leader() == other.candidate


async def test_a_stale_leader_key_from_a_previous_run_expires(tmp_path, elections):
    clock = ManualClock()
    store = SQLiteStore(tmp_path / "db", clock=clock)
    try:
        old = await store.lease_grant(5)
        await store.put(FAST.key, b"meshd-before-restart", lease=old)
        e = Election(store, "meshd-now", FAST)
        elections.append(e)
        e.start()
        await asyncio.sleep(0.3)
        assert not e.is_leader and await e.leader() == "meshd-before-restart"
        clock.advance(6)  # the old lease is past its TTL; the election drives SQLite's expiry
        await asyncio.wait_for(e.wait_leader(), 5)
        assert await e.leader() == "meshd-now"
        await e.resign()
    finally:
        await store.close()


class FlakyKeepalive:
    """A store whose lease renewals can be made to fail, as when etcd is unreachable."""

    def __init__(self, store, clock) -> None:
        self._store = store
        self._clock = clock
        self.broken = False
        self.last_ok = None

    def __getattr__(self, name):
        return getattr(self._store, name)

    async def lease_keepalive(self, lease: int) -> float:
        if self.broken:
            raise Unavailable("etcd unreachable (test)")
        self.last_ok = self._clock.monotonic()
        return await self._store.lease_keepalive(lease)


async def test_a_leader_that_cannot_renew_steps_down_before_its_lease_can_expire(store, elections):
    clock = ManualClock()

    async def sleep(seconds: float) -> None:  # manual time: advance the clock, let other tasks run
        clock.advance(seconds)
        await asyncio.sleep(0.001)

    flaky = FlakyKeepalive(store, clock)
    cfg = ElectionConfig(key="/election/flaky", ttl=6.0, keepalive_interval=2.0, step_down_margin=1.0,
                         retry_interval=0.5)
    stepped = []
    e = Election(flaky, "a", cfg, clock=clock, sleep=sleep,
                 on_change=lambda leading: None if leading else stepped.append(clock.monotonic()))
    elections.append(e)
    e.start()
    await asyncio.wait_for(e.wait_leader(), 5)
    for _ in range(200):  # bounded: until one renewal has succeeded
        if flaky.last_ok is not None:
            break
        await asyncio.sleep(0.005)
    flaky.broken = True
    await asyncio.wait_for(e.wait_follower(), 5)
    # stepped down exactly at last successful renewal + ttl - margin: before the server could expire it
    assert stepped and stepped[0] - flaky.last_ok == pytest.approx(cfg.ttl - cfg.margin, abs=1e-6)


def test_bad_election_timing_is_refused():
    with pytest.raises(InvalidArgument, match="keepalive_interval"):
        ElectionConfig(ttl=2, keepalive_interval=2)
    with pytest.raises(InvalidArgument, match="ttl"):
        ElectionConfig(ttl=0)


async def test_a_key_held_by_someone_else_is_never_taken(store, elections):
    # a non-expiring key (no lease) at the election key: nobody may lead over it
    await store.txn([], [Put("/election/held", b"operator")])
    e = Election(store, "a", ElectionConfig(key="/election/held", ttl=3, keepalive_interval=0.1))
    elections.append(e)
    e.start()
    await asyncio.sleep(0.5)
    assert not e.is_leader and await e.leader() == "operator"
    await store.delete("/election/held")
    await asyncio.wait_for(e.wait_leader(), 5)
