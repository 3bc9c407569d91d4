"""sd_notify helpers: addresses, the watchdog interval rules, the ping loop."""

from __future__ import annotations

import asyncio
import socket

import pytest

from meshcore import sdnotify


def test_no_notify_socket_is_a_no_op():
    assert sdnotify.notify("READY=1", env={}) is False
    assert sdnotify.ready(env={}) is False
    assert sdnotify.watchdog_interval(env={}) is None


def test_relative_notify_socket_is_ignored(caplog):
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "run/notify"}) is False
    assert "neither an absolute path nor an abstract name" in caplog.text


def test_send_to_a_missing_socket_reports_false_and_logs(tmp_path, caplog):
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert "sd_notify to" in caplog.text


def test_ready_and_status_reach_an_abstract_socket():
    name = f"mesh-test-sdnotify-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert sdnotify.ready("serving on 127.0.0.1:7443", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving on 127.0.0.1:7443"
        assert sdnotify.stopping(env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_a_receiver_that_stopped_reading_never_blocks_the_sender(tmp_path, caplog):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))  # bound, never read: its queue fills up
        results = [sdnotify.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": str(path)}) for _ in range(2000)]
    assert results[0] is True and results[-1] is False  # dropped, not blocked
    assert caplog.text.count("sd_notify to") == 1  # one warning for the whole run of failures


@pytest.mark.parametrize("env, pid, expected", [
    ({"WATCHDOG_USEC": "30000000"}, 10, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "10"}, 10, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "11"}, 10, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, 10, None),
    ({"WATCHDOG_USEC": "soon"}, 10, None),
    ({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}, 10, None),
])
def test_watchdog_interval(env, pid, expected):
    assert sdnotify.watchdog_interval(env, pid=pid) == expected


async def test_watchdog_loop_pings_at_half_the_interval():
    sent, slept = [], []

    async def sleep(d: float) -> None:
        slept.append(d)
        if len(slept) == 3:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await sdnotify.watchdog_loop(30.0, send=lambda: sent.append(1) or True, sleep=sleep)
    assert len(sent) == 3 and slept == [15.0, 15.0, 15.0]


async def test_start_watchdog_is_none_outside_systemd():
    assert sdnotify.start_watchdog({"WATCHDOG_USEC": "1000000"}) is None
    assert sdnotify.start_watchdog({"NOTIFY_SOCKET": "@x"}) is None
