"""Node leases are durations: judged on the monotonic clock, never on the wall clock."""

from __future__ import annotations

from mesh.v1 import types_pb2
from meshcore.clock import ManualClock
from meshd.leases import LeaseConfig, Liveness
from meshd.store.sqlite import SQLiteStore

READY, UNREACHABLE = types_pb2.NODE_STATE_READY, types_pb2.NODE_STATE_UNREACHABLE


def node(node_id: str, state: int = READY) -> types_pb2.Node:
    return types_pb2.Node(id=node_id, name=node_id, state=state)


async def test_a_wall_clock_step_expires_no_lease_but_monotonic_time_past_ttl_and_grace_does():
    clock = ManualClock()
    live = Liveness(store=None, config=LeaseConfig(lease_ttl_s=10, grace_s=20), clock=clock)
    await live.renewed("n1")
    clock.step_wall(60)  # NTP or an operator steps the wall clock forward
    assert live.overdue([node("n1")]) == ([], [])
    assert live.overdue([node("n1", UNREACHABLE)]) == ([], [])
    clock.step_wall(-120)  # ...or back: no lease lives longer for it
    clock.advance(10.5)
    assert live.overdue([node("n1")]) == ([node("n1")], [])
    clock.advance(20)  # past TTL + grace
    assert live.overdue([node("n1", UNREACHABLE)]) == ([], [node("n1", UNREACHABLE)])


async def test_last_seen_is_shown_on_the_wall_clock():
    clock = ManualClock(monotonic=50.0, wall=1_700_000_000.0)
    live = Liveness(store=None, clock=clock)
    assert live.seen_at("n1") is None
    await live.renewed("n1")
    clock.advance(5)
    assert live.seen_at("n1") == 1_700_000_000.0


async def test_all_renewed_since_counts_live_nodes_only():
    clock = ManualClock()
    live = Liveness(store=None, config=LeaseConfig(lease_ttl_s=10), clock=clock)
    await live.renewed("gone")
    clock.advance(11)  # "gone" no longer counts
    await live.renewed("a")
    t = clock.monotonic()
    await live.renewed("b")
    clock.advance(1)
    assert not live.all_renewed_since(clock.monotonic())
    await live.renewed("a")
    assert not live.all_renewed_since(t + 0.5)
    await live.renewed("b")
    assert live.all_renewed_since(t + 0.5)


async def test_shared_renewals_cross_replicas_as_revisions_not_times(tmp_path):
    """Replica B's renewal reaches leader A as a new heartbeat revision, timed on A's own clock."""
    store = SQLiteStore(tmp_path / "db")
    try:
        a_clock, b_clock = ManualClock(monotonic=1000.0), ManualClock(monotonic=9_999_999.0, wall=1.0)
        cfg = LeaseConfig(lease_ttl_s=10, grace_s=10, shared=True)
        a, b = Liveness(store, cfg, a_clock), Liveness(store, cfg, b_clock)
        assert a.overdue([node("n1")]) == ([], [])  # first sight: a fresh lease
        for _ in range(3):
            a_clock.advance(6)
            await b.renewed("n1")
            assert await b.flush(force=True)
            await a.load_heartbeats()
            assert a.overdue([node("n1")]) == ([], [])
        a_clock.advance(6)
        await a.load_heartbeats()  # no new renewal: the same revision counts once
        a_clock.advance(5)
        assert a.overdue([node("n1")]) == ([node("n1")], [])
    finally:
        await store.close()


async def test_shared_renewals_are_one_digest_write_per_replica_not_one_per_node(tmp_path):
    store = SQLiteStore(tmp_path / "db")
    try:
        clock = ManualClock()
        live = Liveness(store, LeaseConfig(lease_ttl_s=15, grace_s=30, shared=True), clock)
        before = await store.revision()
        for _ in range(3):  # three rounds of 200 renewals within one digest interval
            for i in range(200):
                await live.renewed(f"n{i}")
            assert not await live.flush()  # not due yet
        assert await store.revision() == before
        clock.advance(live.config.digest_every_s)
        assert await live.flush()
        assert await store.revision() == before + 1
        leader = Liveness(store, LeaseConfig(lease_ttl_s=15, grace_s=30, shared=True), ManualClock(5000.0))
        await leader.load_heartbeats()
        assert len(leader.last_seen) == 200
    finally:
        await store.close()


async def test_meshd_running_behind_holds_leases_instead_of_expiring_them():
    from meshd.leases import LeaseLoop
    clock = ManualClock()
    live = Liveness(store=None, config=LeaseConfig(lease_ttl_s=10, grace_s=20), clock=clock)
    loop = LeaseLoop(live, nodes=None, catalog=None, gossip=None, store=None)
    await live.renewed("n1")
    assert loop.hold_if_behind() == 0.0
    clock.advance(loop.interval)  # on time: nothing held
    assert loop.hold_if_behind() == 0.0
    clock.advance(12)  # meshd's own loop stalled for 12 s: the renewal it could not read is not held against n1
    assert loop.hold_if_behind() > 0
    assert live.overdue([node("n1")]) == ([], [])
    clock.advance(10.5)  # a node that stays silent once meshd runs again still expires
    assert live.overdue([node("n1")]) == ([node("n1")], [])


def test_the_lease_ttl_grows_with_the_fleet_so_renewals_stay_within_the_rate():
    cfg = LeaseConfig(lease_ttl_s=15, max_renewals_per_s=100)
    assert cfg.ttl_for(0) == cfg.ttl_for(500) == 15  # 500 nodes renewing every 5 s: 100 a second
    assert cfg.ttl_for(501) == 20  # in steps of 5 s, not at every join
    assert cfg.ttl_for(1_000) == 30
    assert cfg.ttl_for(5_000) == 150
    for n in (1, 700, 1_000, 3_333, 5_000, 20_000):
        assert n / (cfg.ttl_for(n) / 3) <= 100  # agents renew every third of the TTL
    assert LeaseConfig(lease_ttl_s=15, max_renewals_per_s=0).ttl_for(5_000) == 15


async def test_a_ttl_granted_before_stays_in_force_for_its_length_when_the_fleet_shrinks():
    clock = ManualClock()
    live = Liveness(store=None, config=LeaseConfig(lease_ttl_s=15, grace_s=30, max_renewals_per_s=100), clock=clock)
    assert live.scale(5_000) == 150
    await live.renewed("n1")  # told 150 s: renews again within 50 s
    clock.advance(10)
    assert live.scale(10) == 15  # most of the fleet left
    clock.advance(40)
    assert live.overdue([node("n1")]) == ([], [])  # n1 still counts on 150 s
    await live.renewed("n1")  # ...and now hears 15 s
    clock.advance(16)
    assert live.overdue([node("n1")]) == ([], [])  # the 150 s granted before is in force until 160
    clock.advance(150 - 56 + 1)  # past 150 s after the smaller TTL replaced it
    assert live.ttl_in_force() == 15
    assert live.overdue([node("n1")]) == ([node("n1")], [])
