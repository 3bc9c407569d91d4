"""The life of a daemon process (meshd, meshagent): start, say ready, serve until a signal, stop.

One machine-readable line `<name> ready key=value ...` goes to stdout when
serving (scripts and tests that start a daemon on port 0 read their ports
from it), then READY=1 to systemd and the watchdog pings. A typed error from
start-up (bad state, bad config) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from meshcore import __version__, sdnotify
from meshcore.errors import MeshError


def add_common_arguments(p: argparse.ArgumentParser, name: str) -> None:
    """The flags every daemon takes: --log-level, --log-format (see meshcore.logs) and --version."""
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="text (default) or json: one line per event, with the node and request ids")
    p.add_argument("--version", action="version", version=f"{name} {__version__}")


async def serve(name: str, start: Callable[[], Awaitable[dict[str, object]]],
                stop: Callable[[], Awaitable[None]], health: Callable[[], str] | None = None) -> None:
    """Run `start()` (returns the facts for the ready line), serve until SIGTERM/SIGINT, then `stop()`.

    A signal during start-up (an agent waiting for an unreachable meshd) stops at once.
    `health()` ("ok" or "degraded: ...") goes to systemd as STATUS= whenever it changes."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    starting = asyncio.create_task(start())
    waiting = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([starting, waiting], return_when=asyncio.FIRST_COMPLETED)
    if starting not in done:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        return
    waiting.cancel()
    facts = starting.result()
    print(f"{name} ready " + " ".join(f"{k}={v}" for k, v in facts.items()), flush=True)
    sdnotify.notify("READY=1")
    watchdog = sdnotify.start_watchdog()
    status = asyncio.create_task(_report_health(health)) if health else None
    try:
        await stopping.wait()
    finally:
        sdnotify.notify("STOPPING=1")
        for task in (watchdog, status):
            if task:
                task.cancel()
        await stop()


async def _report_health(health: Callable[[], str], interval: float = 1.0) -> None:
    last = "ok"
    while True:
        await asyncio.sleep(interval)
        now = health()
        if now != last:
            sdnotify.notify(f"STATUS={now}")
            last = now


def run(name: str, main: Callable[[], Awaitable[None]]) -> int:
    """Run a daemon's main coroutine on uvloop; typed errors become one line and exit code 2."""
    import uvloop
    try:
        uvloop.run(main())
    except MeshError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
