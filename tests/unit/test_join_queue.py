"""The join queue's bound and its suggested wait (meshd/joinqueue.py), and how the agent reads
that wait (meshagent/pushback.py); no network, a manual clock."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys

import grpc
import pytest

from meshagent.pushback import JITTER, PUSHBACK_CAP_S, retry_after
from meshcore.backoff import Backoff
from meshcore.clock import ManualClock
from meshcore.errors import RETRY_PUSHBACK_KEY, ResourceExhausted
from meshd import metrics
from meshd.joinqueue import FIRST_ESTIMATE_S, PUSHBACK_MAX_MS, PUSHBACK_MIN_MS, JoinQueue, pushback_ms


@pytest.mark.parametrize("ahead, average_s", [(0, 0.05), (1, 0.0), (3, 0.05), (64, 0.05), (64, 2.0), (10**6, 10.0)])
def test_the_suggested_wait_is_bounded_whatever_the_queue(ahead, average_s):
    for r in (0.0, 0.5, 0.999999):
        assert PUSHBACK_MIN_MS <= pushback_ms(ahead, average_s, r) <= PUSHBACK_MAX_MS


def test_the_suggested_wait_grows_with_the_queue_ahead_and_is_spread():
    assert pushback_ms(40, 0.1, 0.5) == 4000  # 40 joins of 100 ms ahead
    assert pushback_ms(80, 0.1, 0.5) == 8000
    spread = {pushback_ms(40, 0.1, r / 10) for r in range(10)}
    assert len(spread) == 10 and min(spread) >= 3000 and max(spread) < 5000


async def test_one_join_beyond_the_waiting_ones_is_refused_at_once_with_a_wait():
    clock = ManualClock()
    queue = JoinQueue(2, clock, random.Random(1))
    release = asyncio.Event()
    inside = []

    async def join(i: int) -> None:
        async with queue.turn():
            inside.append(i)
            await release.wait()
            clock.advance(1.0)  # each join takes 1 s on the monotonic clock

    tasks = [asyncio.create_task(join(i)) for i in range(3)]  # one under way, two waiting
    for _ in range(100):
        if queue.admitting == 3:
            break
        await asyncio.sleep(0)
    assert queue.admitting == 3 and queue.waiting == 2 and inside == [0]
    before = metrics.JOINS_THROTTLED._value.get()
    with pytest.raises(ResourceExhausted) as err:
        async with queue.turn():
            pytest.fail("a join beyond the bound got its turn")
    e = err.value
    assert str(e).startswith("meshd is admitting 3 joins already: at most 2 wait; retry in ")
    assert str(e).endswith(f"retry in {e.retry_pushback_ms} ms")
    assert e.retry_pushback_ms == pushback_ms(3, FIRST_ESTIMATE_S, random.Random(1).random())
    assert metrics.JOINS_THROTTLED._value.get() == before + 1
    release.set()
    await asyncio.gather(*tasks)
    assert inside == [0, 1, 2] and queue.admitting == 0
    assert queue.average_s > FIRST_ESTIMATE_S  # three joins of 1 s each moved the average up
    e2 = queue._refuse()
    assert e2.retry_pushback_ms == PUSHBACK_MIN_MS  # nothing ahead: the shortest wait


async def test_a_join_that_gives_up_while_waiting_leaves_its_place():
    queue = JoinQueue(1)
    release = asyncio.Event()

    async def join() -> None:
        async with queue.turn():
            await release.wait()

    first = asyncio.create_task(join())
    second = asyncio.create_task(join())
    for _ in range(100):
        if queue.waiting == 1:
            break
        await asyncio.sleep(0)
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert queue.waiting == 0
    third = asyncio.create_task(join())  # takes the place the cancelled one left
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, third)
    assert queue.admitting == 0


async def test_no_bound_with_zero():
    queue = JoinQueue(0)
    release = asyncio.Event()

    async def join() -> None:
        async with queue.turn():
            await release.wait()
    tasks = [asyncio.create_task(join()) for _ in range(200)]
    await asyncio.sleep(0)
    assert queue.admitting == 200
    release.set()
    await asyncio.gather(*tasks)


def refused(code: grpc.StatusCode, pushback: str | None) -> grpc.aio.AioRpcError:
    trailers = grpc.aio.Metadata((RETRY_PUSHBACK_KEY, pushback)) if pushback is not None else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, "refused")


def test_the_agent_waits_what_meshd_suggests_never_less_and_capped():
    backoff = Backoff(0.2, 5.0, 0.5, random.Random(3))
    for _ in range(50):
        wait = retry_after(refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "1500"), backoff)
        assert 1.5 <= wait < 1.5 * (1 + JITTER)
        capped = retry_after(refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "3600000"), backoff)
        assert PUSHBACK_CAP_S <= capped < PUSHBACK_CAP_S * (1 + JITTER)
    assert backoff.attempts == 0  # a suggested wait is not a failure of the agent's own schedule


def test_without_a_trailer_the_agents_own_backoff_and_a_negative_one_means_do_not_retry():
    backoff = Backoff(0.2, 5.0, 0.5, random.Random(3))
    assert 0.1 <= retry_after(refused(grpc.StatusCode.RESOURCE_EXHAUSTED, None), backoff) <= 0.3
    assert backoff.attempts == 1
    assert retry_after(refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "-1"), backoff) is None
    assert retry_after(refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "soon"), backoff) is None
    assert retry_after(refused(grpc.StatusCode.UNAVAILABLE, "100"), backoff) is None
    assert retry_after(refused(grpc.StatusCode.INVALID_ARGUMENT, None), backoff) is None


@pytest.mark.parametrize("value", ["-1", "x"])
def test_a_bad_max_pending_joins_is_one_line_naming_the_rule(value):
    r = subprocess.run([sys.executable, "-m", "meshd.main", f"--max-pending-joins={value}"], capture_output=True,
                       text=True, timeout=30, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("meshd: error:") and "--max-pending-joins" in errors[0], r.stderr
    if value == "-1":
        assert "must be 0 (no bound) or more" in errors[0]


def test_max_pending_joins_reaches_the_config(tmp_path):
    from meshd.main import parse_args
    assert parse_args(["--state-dir", str(tmp_path)]).max_pending_joins == 64
    assert parse_args(["--state-dir", str(tmp_path), "--max-pending-joins", "0"]).max_pending_joins == 0
