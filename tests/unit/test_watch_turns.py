"""Turns for sending a watch stream's initial set, and for writing each message: bounded, and
never held for long; and the pause after live changes, which grows with the streams open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys

import pytest

from meshcore import limits
from meshd import metrics
from meshd.servicers import WatchSlots


async def test_at_most_n_streams_send_their_initial_set_at_once():
    slots = WatchSlots(syncs_at_once=2, turn_s=60)
    first, second = await slots.sync_turn(), await slots.sync_turn()
    third = asyncio.ensure_future(slots.sync_turn())
    await asyncio.sleep(0.05)
    assert not third.done()  # waits for a turn
    assert metrics.WATCH_SYNCS_WAITING._value.get() == 1
    first()
    first()  # a second release gives nothing back
    done = await asyncio.wait_for(third, 5)
    fourth = asyncio.ensure_future(slots.sync_turn())
    await asyncio.sleep(0.05)
    assert not fourth.done()  # the double release did not make room
    second()
    (await asyncio.wait_for(fourth, 5))()
    done()


async def test_a_turn_held_too_long_ends_by_itself_so_a_stalled_reader_holds_no_one_back():
    slots = WatchSlots(syncs_at_once=1, turn_s=0.2)
    expired = metrics.WATCH_SYNC_TURNS_EXPIRED._value.get()
    stalled = await slots.sync_turn()  # never released by its stream
    nxt = await asyncio.wait_for(slots.sync_turn(), 5)  # the turn ended by itself
    assert metrics.WATCH_SYNC_TURNS_EXPIRED._value.get() == expired + 1
    stalled()  # the stalled stream finishing late gives back nothing it no longer holds
    waiting = asyncio.ensure_future(slots.sync_turn())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    nxt()
    (await asyncio.wait_for(waiting, 5))()


async def test_messages_of_many_streams_are_written_a_few_at_a_time_and_each_stream_keeps_its_order():
    """A change reaches every stream at once; gRPC writes what a stream yields, then asks for the
    next. With turns, at most `sends_at_once` messages are being written at any moment, and
    something else scheduled meanwhile (a renewal) runs before the last stream's write."""
    slots = WatchSlots(sends_at_once=3, send_turn_s=60)
    writing, most, order = 0, 0, []

    async def stream(k: int):
        async def messages():
            for i in range(4):
                yield (k, i)
        async for message in slots.paced(messages()):  # as gRPC consumes a response stream
            nonlocal writing, most
            writing += 1
            most = max(most, writing)
            await asyncio.sleep(0.001)  # the write
            writing -= 1
            order.append(message)

    async def renewal():
        order.append("renewal")

    streams = [asyncio.ensure_future(stream(k)) for k in range(30)]
    await asyncio.sleep(0)  # every stream is under way
    renewed = asyncio.ensure_future(renewal())
    await asyncio.wait_for(asyncio.gather(*streams, renewed), 10)
    assert most == 3
    assert order.index("renewal") < len(order) - 30  # not behind every stream's messages
    for k in range(30):
        assert [m for m in order if m != "renewal" and m[0] == k] == [(k, i) for i in range(4)]


async def test_a_write_that_outlasts_its_turn_lets_the_others_go_on_and_a_closed_stream_gives_its_turn_back():
    slots = WatchSlots(sends_at_once=1, send_turn_s=0.2)
    expired = metrics.WATCH_SEND_TURNS_EXPIRED._value.get()
    closed = []

    async def messages(name: str):
        try:
            for i in range(3):
                yield (name, i)
        finally:
            closed.append(name)

    stalled = slots.paced(messages("stalled"))
    assert await anext(stalled) == ("stalled", 0)  # its write never completes: the turn ends by itself
    other = slots.paced(messages("other"))
    assert await asyncio.wait_for(anext(other), 5) == ("other", 0)
    assert metrics.WATCH_SEND_TURNS_EXPIRED._value.get() == expired + 1
    await other.aclose()  # the client went away mid-stream: the turn and the source are closed
    assert closed == ["other"]
    await stalled.aclose()
    assert await asyncio.wait_for(anext(slots.paced(messages("third"))), 5) == ("third", 0)


def test_a_stream_pauses_by_the_streams_of_its_kind_open_and_the_rate_with_a_floor():
    slots = WatchSlots(live_messages_per_s=4000)
    assert slots.pause("nodes", 0.25) == 0.25 and slots.pause("services") == 0  # none open
    with contextlib.ExitStack() as open_streams:
        open_streams.enter_context(slots.stream("services"))
        assert slots.pause("services") == 1 / 4000 and slots.pause("nodes", 0.25) == 0.25
        for _ in range(5000):
            open_streams.enter_context(slots.stream("nodes"))
        assert slots.pause("nodes", 0.25) == 1.25 and slots.pause("services") == 1 / 4000
    assert slots.pause("nodes", 0.25) == 0.25 and slots.pause("services") == 0  # closed streams count no more
    assert WatchSlots(live_messages_per_s=0).pause("services") == 0  # no bound
    assert WatchSlots(live_messages_per_s=0).pause("nodes", 0.25) == 0.25


async def test_pauses_end_when_asked_and_those_ending_together_share_one_timer():
    slots = WatchSlots()
    loop = asyncio.get_running_loop()
    start = loop.time()
    pauses = [slots.wait(0.2) for _ in range(50)]
    assert len(slots._waking) <= 2  # 50 paused streams, one timer (two if the clock crossed a grain)
    assert not any(p.done() for p in pauses)
    await asyncio.wait_for(asyncio.gather(*pauses), 5)
    assert loop.time() - start >= 0.2  # never shorter than asked (longer by under a grain, and the loop's lag)
    assert slots._waking == {}  # nothing left behind
    assert slots.wait(0).done()  # no pause: no wait at all


async def test_a_stream_that_ends_while_paused_leaves_the_others_pausing_with_it_alone():
    slots = WatchSlots()

    async def stream(seconds: float) -> str:
        await slots.wait(seconds)
        return "sent"
    streams = [asyncio.ensure_future(stream(0.2)) for _ in range(3)]
    await asyncio.sleep(0.05)
    streams[0].cancel()  # its agent went away: the pause it shared is not cancelled for the rest
    done = await asyncio.wait_for(asyncio.gather(*streams, return_exceptions=True), 5)
    assert isinstance(done[0], asyncio.CancelledError) and done[1:] == ["sent", "sent"]


@pytest.mark.parametrize("value", ["-1", "x"])
def test_a_bad_max_watch_messages_per_s_is_one_line_naming_the_rule(value):
    r = subprocess.run([sys.executable, "-m", "meshd.main", f"--max-watch-messages-per-s={value}"],
                       capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--max-watch-messages-per-s" in errors[0], r.stderr
    if value == "-1":
        assert "must be 0 (no bound) or more" in errors[0]


def test_max_watch_messages_per_s_reaches_the_config(tmp_path):
    from meshd.main import parse_args
    assert parse_args(["--state-dir", str(tmp_path)]).max_watch_messages_per_s == limits.WATCH_LIVE_MESSAGES_PER_S
    assert parse_args(["--state-dir", str(tmp_path), "--max-watch-messages-per-s", "0"]).max_watch_messages_per_s == 0
