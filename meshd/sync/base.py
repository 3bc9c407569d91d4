"""Catalog sync: the SyncTarget protocol and the SyncLoop that drives a target.

Model: meshd's catalog (a list of `Service` and the `Node`s that own them) is
the desired state; an external registry (Consul, Kubernetes) is brought to
match it by a *target*, which computes the difference and applies it, and
touches only objects it marked as its own. A target is idempotent: calling
`reconcile` twice with the same input makes no writes the second time.

The `SyncLoop` owns *when* to reconcile, never *what*:
- `update(services, nodes)` records the latest desired state and wakes the
  loop; several updates within `debounce_s` are folded into one reconcile,
  and only the newest state is ever applied (no lost updates: a failed
  reconcile is retried with whatever is newest by then);
- every `resync_interval_s` it calls `target.invalidate()` and reconciles
  again, so drift made by hand in the registry is repaired even without a
  catalog change; a target that watches its registry may also call the
  loop's `kick()` (thread-safe) when it sees an object of ours change;
- a reconcile that raises is retried after a capped exponential backoff with
  jitter (meshcore.backoff; `backoff_initial_s` doubling up to `backoff_max_s`);
  the error is kept in `status` and never escapes into the catalog, whose only contact
  with the loop is the non-blocking `update`.

Clock (its monotonic time) and randomness are injected (`clock`, `rng`) so
timing and backoff are testable.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

from mesh.v1 import types_pb2
from meshcore.backoff import delay
from meshcore.clock import SYSTEM, Clock
from meshcore.errors import ConfigError

log = logging.getLogger(__name__)

Service = types_pb2.Service
Node = types_pb2.Node

MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY = "mesh"


@dataclass
class SyncReport:
    """What one reconcile did. `errors` maps a service name to why it could not be synced."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    api_calls: int = 0
    writes: int = 0
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


@runtime_checkable
class SyncTarget(Protocol):
    """A registry kept in step with the catalog.

    A target that follows its registry (a watch) may also define
    `set_kick(kick: Callable[[], None])`; the SyncLoop then hands it its
    thread-safe `kick`, to be called when one of the target's objects changes.
    """

    name: str

    async def reconcile(self, services: list[Service], nodes: dict[str, Node]) -> SyncReport:
        """Make the registry match `services` (owned by `nodes`, keyed by node id)."""
        ...

    def invalidate(self) -> None:
        """Forget cached registry state: the next reconcile reads it afresh (drift repair)."""
        ...

    async def close(self) -> None:
        ...


def service_is_live(service: Service, nodes: dict[str, Node]) -> bool:
    """A service is published while its node exists and has not left the mesh."""
    node = nodes.get(service.node_id)
    return node is not None and node.state != types_pb2.NODE_STATE_LEFT


def service_is_healthy(service: Service, nodes: dict[str, Node]) -> bool:
    """Not ready while the owner's health check fails, or while its node is unreachable (grace period)."""
    node = nodes.get(service.node_id)
    return (node is not None and node.state != types_pb2.NODE_STATE_UNREACHABLE
            and service.health_state != types_pb2.HEALTH_STATE_CRITICAL)


def service_address(service: Service, nodes: dict[str, Node]) -> str:
    node = nodes.get(service.node_id)
    return service.address or (node.mesh_address if node is not None else "")


@dataclass
class SyncLoopConfig:
    """Timing of a SyncLoop. Defaults suit a coordinator with up to thousands of services."""

    # Fold catalog changes arriving this close together into one reconcile:
    # an expose burst costs one pass, and a lone change waits at most this long.
    debounce_s: float = 0.02
    # Re-read the registry this often to repair drift made by hand. Consul's
    # anti-entropy runs every 60 s for comparison; watches make most repairs
    # immediate, so this is a safety net.
    resync_interval_s: float = 30.0
    # First retry delay after a failed reconcile; doubles per failure...
    backoff_initial_s: float = 0.2
    # ...up to this cap, so a registry that comes back is used within 30 s.
    backoff_max_s: float = 30.0
    # +/- fraction of random spread on each delay, so coordinators do not retry in step.
    jitter: float = 0.2

    def __post_init__(self) -> None:
        for name in ("debounce_s", "resync_interval_s", "backoff_initial_s", "backoff_max_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"invalid sync {name} {getattr(self, name)}: must not be negative")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("invalid sync backoff: backoff_max_s must be at least backoff_initial_s")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"invalid sync jitter {self.jitter}: must be in [0, 1)")


@dataclass
class SyncStatus:
    generation: int = 0          # desired-state updates received
    synced_generation: int = 0   # newest generation applied by a successful reconcile
    reconciles: int = 0
    failures: int = 0            # consecutive failed reconciles (0 when healthy)
    last_error: str = ""
    last_report: SyncReport | None = None
    errors: dict[str, str] = field(default_factory=dict)  # per service, from the last success


class SyncLoop:
    """Runs one SyncTarget: debounced on change, periodic for drift, retried with backoff."""

    def __init__(self, target: SyncTarget, config: SyncLoopConfig | None = None,
                 clock: Clock = SYSTEM, rng: random.Random | None = None) -> None:
        self.target = target
        self.config = config or SyncLoopConfig()
        self.clock = clock
        self.rng = rng or random.Random()
        self.status = SyncStatus()
        self._services: list[Service] = []
        self._nodes: dict[str, Node] = {}
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_resync = 0.0
        self._stopping = False

    # --- the catalog's side -----------------------------------------------------
    def update(self, services: list[Service], nodes: dict[str, Node]) -> None:
        """Record the newest desired state; never blocks, never raises."""
        self._services = list(services)
        self._nodes = dict(nodes)
        self.status.generation += 1
        self._synced.clear()
        self._wake.set()

    def kick(self) -> None:
        """Ask for a reconcile soon (thread-safe: a target's watch thread may call it)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # loop closing
            pass

    def errors(self) -> dict[str, str]:
        """Per-service errors to show next to the catalog (e.g. a name collision)."""
        return dict(self.status.errors)

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        from meshd import metrics
        metrics.sync_target(self.target.name)
        self._loop = asyncio.get_running_loop()
        set_kick = getattr(self.target, "set_kick", None)
        if callable(set_kick):
            set_kick(self.kick)
        self._next_resync = self.clock.monotonic() + self.config.resync_interval_s
        self._task = asyncio.create_task(self._run(), name=f"sync-{self.target.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.target.close()

    async def wait_synced(self, timeout_s: float) -> bool:
        """True once every update so far has been applied by a successful reconcile."""
        try:
            await asyncio.wait_for(self._synced.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    # --- the loop ---------------------------------------------------------------------
    async def _sleep_or_wake(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if woken by an update or kick first."""
        if self._wake.is_set():
            return True
        # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that races
        # with the event being set, and a kick arrives from watch threads at any time.
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait({waiter}, timeout=max(0.0, seconds))
        finally:
            waiter.cancel()
        return bool(done)

    async def _run(self) -> None:
        pending = True  # reconcile once at start: a restarted coordinator repairs what it missed
        while not self._stopping:
            if not pending:
                woke = await self._sleep_or_wake(self._next_resync - self.clock.monotonic())
                if not woke:
                    self.target.invalidate()
                pending = True
            if self._wake.is_set() and self.config.debounce_s:
                await asyncio.sleep(self.config.debounce_s)  # let a burst of changes settle
            self._wake.clear()
            generation = self.status.generation
            if await self._reconcile_once(generation):
                pending = False
                self._next_resync = self.clock.monotonic() + self.config.resync_interval_s
                continue
            # Failed: wait out the backoff. An update during the wait does not cut it
            # short (that would hammer a failing registry) but is not lost: the retry
            # reads the newest desired state.
            cfg = self.config
            await asyncio.sleep(delay(self.status.failures, cfg.backoff_initial_s, cfg.backoff_max_s, cfg.jitter, self.rng))
            self.target.invalidate()  # after a failure the registry's state is uncertain

    async def _reconcile_once(self, generation: int) -> bool:
        from meshd import metrics
        services, nodes = self._services, self._nodes
        self.status.reconciles += 1
        t0 = self.clock.monotonic()
        try:
            report = await self.target.reconcile(services, nodes)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a registry failure must never reach the catalog
            metrics.SYNC_SECONDS.labels(self.target.name).observe(self.clock.monotonic() - t0)
            metrics.SYNC_ERRORS.labels(self.target.name).inc()
            self.status.failures += 1
            self.status.last_error = f"{self.target.name} sync failed: {e}"
            if self.status.failures == 1 or self.status.failures % 10 == 0:
                log.warning("%s (attempt %d)", self.status.last_error, self.status.failures)
            return False
        metrics.SYNC_SECONDS.labels(self.target.name).observe(self.clock.monotonic() - t0)
        for action, names in (("create", report.created), ("update", report.updated), ("delete", report.deleted)):
            if names:
                metrics.SYNC_REPAIRS.labels(self.target.name, action).inc(len(names))
        self.status.failures = 0
        self.status.last_error = ""
        self.status.last_report = report
        self.status.errors = dict(report.errors)
        self.status.synced_generation = generation
        if generation == self.status.generation:
            self._synced.set()
        return True
