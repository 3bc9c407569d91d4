"""Turns for sending a watch stream's initial set: bounded, and never held for long."""

from __future__ import annotations

import asyncio

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
