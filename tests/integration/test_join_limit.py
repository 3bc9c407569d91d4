"""A burst of joins against a real meshd (gRPC on port 0) with a small --max-pending-joins: the ones
beyond the bound are refused at once with RESOURCE_EXHAUSTED and a `grpc-retry-pushback-ms`
trailer, leaving nothing in the store, and agents that honour it all get in."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mesh.v1 import admission_pb2, admission_pb2_grpc, types_pb2
from meshagent.agent import Agent
from meshagent.identity import fetch_pinned_ca
from meshagent.pushback import pushback_trailer
from meshagent.uplink import channel_options
from meshcore import pki
from meshcore.errors import ResourceExhausted
from meshcore.jointoken import parse_token
from meshd import metrics
from meshd.joinqueue import PUSHBACK_MAX_MS, PUSHBACK_MIN_MS
from meshd.nodes import NAMES, PREFIX
from tests.meshfix import Mesh, until


@pytest.fixture
async def small(tmp_path):
    m = await Mesh(tmp_path, max_pending_joins=2).start()
    try:
        yield m
    finally:
        await m.close()


def hold_joins(mesh: Mesh, gate) -> None:
    """Every join, once its turn comes, first awaits `gate()` (a slow join, under the test's control)."""
    nodes = mesh.coordinator.nodes
    real = nodes._join

    async def slow(*args):
        await gate()
        return await real(*args)
    nodes._join = slow


async def join_rpc(mesh: Mesh, stub, token: str, name: str):
    csr = pki.make_csr(pki.new_key(), name).decode()
    return await stub.Join(admission_pb2.JoinRequest(token=token, node=types_pb2.Node(name=name, hostname=name),
                                                     csr_pem=csr), timeout=30)


def throttled_count() -> float:
    return metrics.JOINS.labels("throttled")._value.get()


async def test_joins_beyond_the_bound_are_refused_at_once_with_a_wait_and_store_nothing(small):
    token = await small.token(uses=100)
    release = asyncio.Event()
    hold_joins(small, release.wait)
    host, port = small.join_address.rsplit(":", 1)
    ca = await asyncio.to_thread(fetch_pinned_ca, host, int(port), parse_token(token)[2])
    queue = small.coordinator.nodes.join_queue
    async with grpc.aio.secure_channel(small.join_address, grpc.ssl_channel_credentials(ca),
                                       options=channel_options()) as ch:
        stub = admission_pb2_grpc.AdmissionServiceStub(ch)
        admitted = [asyncio.create_task(join_rpc(small, stub, token, f"kept-{i}")) for i in range(3)]
        await until(lambda: queue.admitting == 3)  # one under way (held), two waiting
        revision = await small.coordinator.store.revision()
        throttled_before, refused_before = throttled_count(), metrics.JOINS_THROTTLED._value.get()
        burst = await asyncio.gather(*(join_rpc(small, stub, token, f"burst-{i}") for i in range(6)),
                                     return_exceptions=True)
        for err in burst:
            assert isinstance(err, grpc.aio.AioRpcError), err
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.details().startswith("meshd is admitting 3 joins already: at most 2 wait; retry in ")
            ms = int(pushback_trailer(err))
            assert PUSHBACK_MIN_MS <= ms <= PUSHBACK_MAX_MS
            assert err.details().endswith(f"retry in {ms} ms")
        assert await small.coordinator.store.revision() == revision  # nothing written for the refused
        assert throttled_count() == throttled_before + 6
        assert metrics.JOINS_THROTTLED._value.get() == refused_before + 6
        release.set()
        done = await asyncio.gather(*admitted)
    assert sorted(r.node.name for r in done) == ["kept-0", "kept-1", "kept-2"]
    store = small.coordinator.store
    assert len((await store.range(PREFIX))[0]) == 3
    for i in range(6):
        assert await store.get(NAMES + f"burst-{i}") is None
    assert queue.admitting == 0


async def test_the_refusal_carries_its_trailer_over_the_mtls_listener_too(small):
    """Join is also served on the mTLS port (same interceptor): the trailer is there as well."""
    token = await small.token(uses=10)
    release = asyncio.Event()
    hold_joins(small, release.wait)
    queue = small.coordinator.nodes.join_queue
    stub = small.admission()  # the admin socket: the same servicers and interceptor as --listen
    admitted = [asyncio.create_task(join_rpc(small, stub, token, f"kept-{i}")) for i in range(3)]
    await until(lambda: queue.admitting == 3)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await join_rpc(small, stub, token, "one-more")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert PUSHBACK_MIN_MS <= int(pushback_trailer(err.value)) <= PUSHBACK_MAX_MS
    release.set()
    await asyncio.gather(*admitted)


async def test_agents_honouring_the_pushback_all_join_through_a_tiny_bound(small, caplog):
    token = await small.token(uses=100)
    queue = small.coordinator.nodes.join_queue
    refusals_before = metrics.JOINS_THROTTLED._value.get()

    async def gate() -> None:
        # slow joins: the first ones wait until meshd has refused some of the burst
        if metrics.JOINS_THROTTLED._value.get() == refusals_before:
            await until(lambda: metrics.JOINS_THROTTLED._value.get() > refusals_before, timeout=30)
        await asyncio.sleep(0.01)
    hold_joins(small, gate)
    agents = [Agent(small.agent_config(f"burst-{i:02d}", token)) for i in range(20)]
    caplog.set_level("INFO", logger="meshagent")
    identities = await asyncio.wait_for(asyncio.gather(*(a.join() for a in agents)), 120)
    assert len({i.node_id for i in identities}) == 20
    assert len((await small.coordinator.store.range(PREFIX))[0]) == 20
    throttled = sum(a.uplink.join_throttled for a in agents)
    assert throttled > 0 and metrics.JOINS_THROTTLED._value.get() - refusals_before == throttled
    busy = [r for r in caplog.records if r.getMessage().startswith("meshd is busy admitting other nodes")]
    assert busy and all(r.levelname == "INFO" for r in busy)
    assert len(busy) == sum(1 for a in agents if a.uplink.join_throttled)  # one line per agent, not per retry
    assert not [r for r in caplog.records if r.levelno >= 30 and r.name == "meshagent"]
    assert queue.admitting == 0


async def test_a_full_pool_is_refused_for_good_not_retried(tmp_path):
    """RESOURCE_EXHAUSTED that waiting cannot cure carries a negative pushback: the agent stops at once."""
    m = Mesh(tmp_path)
    m.config.overlay_pool = "127.77.0.0/30"  # two addresses
    await m.start()
    try:
        token = await m.token(uses=10)
        for i in range(2):
            await Agent(m.agent_config(f"fits-{i}", token)).join()
        third = Agent(m.agent_config("one-too-many", token))
        with pytest.raises(ResourceExhausted, match="overlay pool 127.77.0.0/30 is full"):
            await asyncio.wait_for(third.join(), 30)
        assert third.uplink.join_throttled == 0
        assert await m.coordinator.store.get(NAMES + "one-too-many") is None
    finally:
        await m.close()


async def test_the_fleet_benchs_simulated_agents_honour_the_pushback_too(small):
    """bench/fleet.py's join decides with the agent's own meshagent.pushback.retry_after."""
    from bench.fleet import join_in_memory

    token = await small.token(uses=100)
    refusals_before = metrics.JOINS_THROTTLED._value.get()

    async def gate() -> None:
        if metrics.JOINS_THROTTLED._value.get() == refusals_before:
            await until(lambda: metrics.JOINS_THROTTLED._value.get() > refusals_before, timeout=30)
    hold_joins(small, gate)
    waits: list[float] = []
    slot = asyncio.Semaphore(20)

    async def one(i: int):
        async with slot:
            return await join_in_memory(small.join_address, small.address, token, f"sim-{i:02d}", slot,
                                        throttled=waits.append)
    identities = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(12))), 120)
    assert len({i.node_id for i in identities}) == 12
    assert waits and len(waits) == metrics.JOINS_THROTTLED._value.get() - refusals_before
    assert all(PUSHBACK_MIN_MS / 1000 <= w for w in waits)


async def test_a_join_that_lost_its_races_is_tried_again_by_the_agent_and_by_the_fleet_bench(small):
    """meshd answers ABORTED when a join loses too many races with concurrent joins (meshd/nodes.py):
    not for good. The agent tries again after its backoff, and so do the fleet bench's simulated
    agents, which decide with the same meshagent.pushback.join_retry."""
    from bench.fleet import join_in_memory
    from meshcore.errors import Conflict

    lost: list[str] = []
    budget = [1]  # joins still to lose
    nodes = small.coordinator.nodes
    real = nodes._join

    async def loses_first(*args):
        if budget[0]:
            budget[0] -= 1
            lost.append("lost")
            raise Conflict("join lost too many races with concurrent joins; retry")
        return await real(*args)
    nodes._join = loses_first
    token = await small.token(uses=10)
    agent = Agent(small.agent_config("racer", token))
    ident = await asyncio.wait_for(agent.join(), 60)
    assert ident.name == "racer" and lost == ["lost"] and agent.uplink.join_throttled == 0
    retried: list[str] = []
    budget[0] = 1
    sim = await asyncio.wait_for(join_in_memory(small.join_address, small.address, token, "sim-racer",
                                                retried=retried.append), 60)
    assert sim.name == "sim-racer" and len(lost) == 2
    assert retried == ["ABORTED: join lost too many races with concurrent joins; retry"]
