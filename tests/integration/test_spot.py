"""The spot interruption watch against a local IMDSv2 double (real HTTP on port 0)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from meshagent.spot import ACTION_PATH, ImdsClient, InterruptionNotice, SpotConfig, SpotWatcher
from testbed.doubles.imds import ImdsDouble


@pytest.fixture
def imds():
    double = ImdsDouble().start()
    try:
        yield double
    finally:
        double.stop()


class Leaves:
    def __init__(self) -> None:
        self.calls: list[InterruptionNotice] = []

    async def __call__(self, notice: InterruptionNotice) -> None:
        self.calls.append(notice)


def watcher(url: str, leave, **cfg) -> SpotWatcher:
    config = SpotConfig(endpoint=url, poll_s=0.01, timeout_s=1.0, **cfg)
    return SpotWatcher(leave, config)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_terminate_notice_calls_leave_once(imds):
    leave = Leaves()
    w = watcher(imds.url, leave)
    task = asyncio.create_task(w.run(max_polls=500))
    for _ in range(100):  # a few polls without a notice first
        if w.polls >= 3:
            break
        await asyncio.sleep(0.01)
    assert w.polls >= 3 and leave.calls == []
    imds.post_notice("terminate", "2026-11-23T18:00:00Z")
    notice = await asyncio.wait_for(task, 10)
    assert notice == InterruptionNotice("terminate", "2026-11-23T18:00:00Z")
    assert leave.calls == [notice] and not notice.keeps_name
    polls = w.polls
    await asyncio.sleep(0.05)
    assert w.polls == polls and len(leave.calls) == 1  # the watch is over: leave never called twice


async def test_stop_notice_keeps_the_name(imds):
    imds.post_notice("stop")
    leave = Leaves()
    notice = await asyncio.wait_for(watcher(imds.url, leave).run(max_polls=50), 10)
    assert notice.action == "stop" and notice.keeps_name
    assert leave.calls == [notice]


async def test_no_notice_means_nothing_happens(imds):
    leave = Leaves()
    w = watcher(imds.url, leave)
    assert await asyncio.wait_for(w.run(max_polls=20), 10) is None
    assert w.polls == 20 and leave.calls == []
    statuses = {s for m, p, s in imds.requests if p == ACTION_PATH}
    assert statuses == {404}


async def test_on_demand_instance_is_not_watched(imds):
    imds.lifecycle = "on-demand"
    imds.post_notice("terminate")
    leave = Leaves()
    w = watcher(imds.url, leave)
    assert await asyncio.wait_for(w.run(max_polls=20), 10) is None
    assert w.polls == 0 and leave.calls == []


async def test_imds_unreachable_logs_clearly_and_does_not_crash(caplog):
    url = f"http://127.0.0.1:{unused_port()}"
    leave = Leaves()
    w = watcher(url, leave, lifecycle_attempts=2)
    with caplog.at_level(logging.WARNING, logger="meshagent.spot"):
        assert await asyncio.wait_for(w.run(max_polls=5), 10) is None
    assert leave.calls == []
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1
    assert "not watching for spot interruptions" in msgs[0] and url in msgs[0] and "tried 2 times" in msgs[0]


async def test_outage_while_watching_is_logged_once_and_the_watch_recovers(imds, caplog):
    leave = Leaves()
    w = watcher(imds.url, leave)
    with caplog.at_level(logging.INFO, logger="meshagent.spot"):
        task = asyncio.create_task(w.run(max_polls=500))
        for _ in range(100):
            if w.polls >= 1:
                break
            await asyncio.sleep(0.01)
        imds.fail_next(500, 4)
        for _ in range(200):
            if not imds.faults.pending:
                break
            await asyncio.sleep(0.01)
        imds.post_notice("terminate")
        notice = await asyncio.wait_for(task, 10)
    assert notice.action == "terminate" and len(leave.calls) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "spot watch:" in r.getMessage()]
    assert len(warnings) == 1 and "answered 500" in warnings[0]
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_client_fetches_a_new_token_when_the_old_one_expired(imds):
    client = ImdsClient(SpotConfig(endpoint=imds.url, timeout_s=1.0))
    assert client.lifecycle() == "spot"
    puts = sum(1 for m, _, _ in imds.requests if m == "PUT")
    imds.expire_tokens()
    assert client.notice() is None
    assert sum(1 for m, _, _ in imds.requests if m == "PUT") == puts + 1
    assert [s for _, p, s in imds.requests if p == ACTION_PATH] == [401, 404]


def test_garbage_notice_is_an_error_not_a_leave(imds):
    imds.notice = "not json"  # type: ignore[assignment]
    client = ImdsClient(SpotConfig(endpoint=imds.url, timeout_s=1.0))
    from meshagent.spot import ImdsError
    with pytest.raises(ImdsError, match="not a notice"):
        client.notice()
