"""Health checks of this node's own services (the HTTP or TCP check given at expose).

Each check runs every `interval_s` (default 10 s; the first at once) against
the node's mesh address: HTTP GET of the path answering 2xx, or a TCP connect.
Only a change of result is reported to meshd (the service is exposed again
with its new state), so a steady service costs no writes. A service with a
check starts CRITICAL: other nodes leave it out of DNS until it passes, as
Consul does with a new check.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from mesh.v1 import types_pb2
from meshcore.clock import SYSTEM, Clock

log = logging.getLogger("meshagent.health")
PASSING, CRITICAL = types_pb2.HEALTH_STATE_PASSING, types_pb2.HEALTH_STATE_CRITICAL
TIMEOUT_S = 2.0


def probe(svc: types_pb2.Service, address: str, timeout: float = TIMEOUT_S) -> bool:
    """One check, blocking (run it in a thread)."""
    kind = svc.health.WhichOneof("kind")
    import http.client  # here: an agent without HTTP checks never loads it
    try:
        if kind == "http_path":
            conn = http.client.HTTPConnection(address, svc.port, timeout=timeout)
            try:
                conn.request("GET", svc.health.http_path, headers={"User-Agent": "meshagent-health"})
                return 200 <= conn.getresponse().status < 300
            finally:
                conn.close()
        with socket.create_connection((address, svc.port), timeout=timeout):
            return True
    except (OSError, http.client.HTTPException):
        return False


class HealthChecker:
    def __init__(self, services: Callable[[], dict[str, types_pb2.Service]], address: str,
                 report: Callable[[types_pb2.Service, int], Awaitable[None]],
                 clock: Clock = SYSTEM) -> None:
        self._services = services
        self._address = address
        self._report = report
        self._clock = clock
        self.states: dict[str, int] = {}
        self._due: dict[str, float] = {}

    async def check_due(self) -> None:
        now = self._clock.monotonic()
        for name, svc in list(self._services().items()):
            if not svc.health.WhichOneof("kind") or self._due.get(name, 0) > now:
                continue
            self._due[name] = now + (svc.health.interval_s or 10)
            state = PASSING if await asyncio.to_thread(probe, svc, self._address) else CRITICAL
            if self.states.get(name) != state:
                log.info("service %s is %s", name, "passing" if state == PASSING else "critical")
                try:
                    await self._report(svc, state)
                    self.states[name] = state
                except Exception as e:  # meshd away: keep the old state, report at the next check
                    log.warning("cannot report the health of %s: %s", name, e)
        for gone in set(self.states) - set(self._services()):
            self.states.pop(gone, None)
            self._due.pop(gone, None)

    def forget(self, name: str) -> None:
        """Check `name` again at once (it was just exposed or changed)."""
        self._due.pop(name, None)

    async def run(self) -> None:
        while True:
            await self.check_due()
            await asyncio.sleep(0.5)
