"""Broadcast queue and replay windows."""

from __future__ import annotations

from meshcore.gossip.broadcasts import BroadcastQueue
from meshcore.gossip.replay import WINDOW, ReplayWindows


def test_queue_sends_least_sent_newest_first_and_retires_at_the_limit():
    q = BroadcastQueue()
    q.put("m:a", b"A" * 10)
    q.put("m:b", b"B" * 10)
    assert q.take(100, limit=2) == [b"B" * 10, b"A" * 10]
    q.put("m:c", b"C" * 10)
    assert q.take(100, limit=2)[0] == b"C" * 10  # unsent news goes first
    assert len(q) == 1 and q.take(100, limit=2) == [b"C" * 10] and not q


def test_queue_replaces_older_news_about_the_same_key_and_respects_the_budget():
    q = BroadcastQueue()
    q.put("m:a", b"old")
    q.put("m:a", b"new")
    q.put("r:x", b"X" * 50)
    assert q.take(20, limit=5) == [b"new"]  # the 50-byte item waits for a roomier packet
    assert len(q) == 2


def test_replay_window():
    w = ReplayWindows()
    assert w.fresh("a", 1, 10) and not w.fresh("a", 1, 10)
    assert w.fresh("a", 1, 8) and not w.fresh("a", 1, 8)  # late but inside the window
    assert w.fresh("a", 1, 10 + WINDOW)
    assert not w.fresh("a", 1, 9)  # fell out of the window
    assert not w.fresh("a", 0, 999)  # an older epoch
    assert w.fresh("a", 2, 1)  # the sender restarted
    assert w.fresh("b", 1, 10)  # windows are per sender
    w.forget("a")
    assert w.fresh("a", 0, 1)
