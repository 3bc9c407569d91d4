"""sd_notify without libsystemd: readiness and watchdog pings for systemd.

Model: systemd starts a `Type=notify` service with NOTIFY_SOCKET set to the
path of a unix datagram socket. The service sends one datagram per state
change, newline-separated `KEY=value` assignments: `READY=1` once it serves,
`STOPPING=1` when it shuts down, `STATUS=...` for `systemctl status`, and
`WATCHDOG=1` at least once per watchdog interval when the unit has
`WatchdogSec=`. A path starting with '@' names a socket in the abstract
namespace (the '@' stands for a leading NUL byte).

The watchdog interval comes from WATCHDOG_USEC (microseconds). WATCHDOG_PID,
when set, names the process the interval is meant for: a child that inherited
the environment must not ping on its parent's behalf. We ping at half the
interval, the margin sd_watchdog_enabled(3) recommends.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op returning False, so
the daemons call these unconditionally. A send never blocks; a failure is logged
(once per run of failures) and reported as False, never raised: a lost notification must not take a daemon down (under
systemd a missing READY=1 fails the start by timeout, which is the right
signal).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger(__name__)
_failing = False  # the last send failed: later failures are logged at debug level


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path[0] == "@":
        return "\0" + path[1:]
    if path[0] != "/":
        # sd_notify(3) accepts only absolute paths and abstract names; anything
        # else (e.g. a vsock address we do not support) is ignored with a log.
        log.warning("NOTIFY_SOCKET=%r is neither an absolute path nor an abstract name ('@...'): not notifying", path)
        return None
    return path


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1" or "READY=1\\nSTATUS=serving") to systemd.

    Returns True if the datagram was sent, False when not under systemd or
    when sending failed (logged).
    """
    global _failing
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block: the watchdog pings from the event loop, and a
            # receiver that stopped reading must not stall the daemon.
            sock.sendto(state.encode(), socket.MSG_DONTWAIT, address)
    except OSError as e:
        # Once per run of failures, not every watchdog tick.
        (log.debug if _failing else log.warning)("sd_notify to %r failed: %s", address.replace("\0", "@"), e)
        _failing = True
        return False
    _failing = False
    return True


def ready(status: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Tell systemd the daemon serves (READY=1), with an optional status line."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""), env)


def stopping(env: Mapping[str, str] | None = None) -> bool:
    """Tell systemd the daemon is shutting down on purpose."""
    return notify("STOPPING=1", env)


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog interval in seconds, or None when no watchdog is asked of this process."""
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer: watchdog disabled", raw)
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None  # meant for another process (we inherited it)
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not an integer: watchdog disabled", owner)
            return None
    return usec / 1_000_000


async def watchdog_loop(interval: float, send: Callable[[], bool] | None = None,
                        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Ping WATCHDOG=1 every `interval / 2` seconds until cancelled.

    The ping runs on the event loop on purpose: if the loop stalls, the pings
    stop and systemd restarts the daemon, which is what the watchdog is for.
    """
    send = send or (lambda: notify("WATCHDOG=1"))
    period = interval / 2
    while True:
        send()
        await sleep(period)


def start_watchdog(env: Mapping[str, str] | None = None) -> asyncio.Task[None] | None:
    """Start the watchdog pinger on the running loop; None when no watchdog is asked.

    The caller keeps the task and cancels it on shutdown.
    """
    env = dict(os.environ if env is None else env)
    interval = watchdog_interval(env)
    if interval is None or _address(env) is None:
        return None
    return asyncio.get_running_loop().create_task(
        watchdog_loop(interval, lambda: notify("WATCHDOG=1", env)), name="sd-watchdog")
