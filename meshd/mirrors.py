"""Catalog mirrors: the leader keeps Consul and Kubernetes in step with the catalog.

One `SyncLoop` (meshd/sync/base.py) per configured registry; the loops own
when to reconcile and the targets own what. This module only wires them to
the store: it watches `/services/` and `/nodes/` and, on any change, hands
every loop the whole catalog and the nodes that own it (the loops debounce
and keep only the newest). A watch that fails (compaction, a store hiccup)
is restarted from the current revision, and the loops are fed again, so a
mirror never misses a change for good.

Only the leader mirrors (two replicas writing one registry would fight over
it): `start()` when leadership is gained, `stop()` when it is lost.
"""

from __future__ import annotations

import asyncio
import logging

from meshcore.clock import SYSTEM, Clock
from meshd import catalog as catalog_keys
from meshd import nodes as node_keys
from meshd.catalog import Catalog
from meshd.nodes import Nodes
from meshd.store.base import Store

log = logging.getLogger("meshd.mirrors")


class Mirrors:
    """`consul` is a meshd.sync.consul_client.ConsulConfig, `kubernetes` a
    meshd.sync.kube_client.KubernetesConfig; None leaves that mirror off."""

    def __init__(self, store: Store, catalog: Catalog, nodes: Nodes, consul: object | None = None,
                 kubernetes: object | None = None, clock: Clock = SYSTEM) -> None:
        self.store = store
        self.catalog = catalog
        self.nodes = nodes
        self.consul = consul
        self.kubernetes = kubernetes
        self.clock = clock
        self.loops: list = []
        self._feed: asyncio.Task | None = None

    def start(self) -> None:
        """One SyncLoop per configured registry, fed the whole catalog on every change."""
        if self.loops:
            return
        from meshd.sync.base import SyncLoop
        if self.consul is not None:
            from meshd.sync.consul import ConsulTarget
            self.loops.append(SyncLoop(ConsulTarget(self.consul), clock=self.clock))
        if self.kubernetes is not None:
            from meshd.sync.kubernetes import KubernetesTarget
            self.loops.append(SyncLoop(KubernetesTarget(self.kubernetes), clock=self.clock))
        if not self.loops:
            return
        for loop in self.loops:
            loop.start()
        self._feed = asyncio.create_task(self._run_feed(), name="sync-feed")

    async def stop(self) -> None:
        if self._feed is not None:
            self._feed.cancel()
            await asyncio.gather(self._feed, return_exceptions=True)
            self._feed = None
        for loop in self.loops:
            await loop.stop()
        self.loops.clear()

    def errors(self) -> dict[str, str]:
        """Per-service errors of every mirror (one name may fail in both)."""
        errors: dict[str, str] = {}
        for loop in self.loops:
            for name, why in loop.errors().items():
                errors[name] = f"{errors[name]}; {why}" if name in errors else why
        return errors

    async def _run_feed(self) -> None:
        changed = asyncio.Event()
        changed.set()

        async def watch(prefix: str) -> None:
            while True:
                try:
                    async for _ in self.store.watch(prefix, await self.store.revision()):
                        changed.set()
                except Exception:  # compaction or a store hiccup: start over from now
                    log.exception("catalog watch for sync failed; restarting it")
                    changed.set()
                    await asyncio.sleep(1)
        watchers = [asyncio.create_task(watch(p)) for p in (catalog_keys.PREFIX, node_keys.PREFIX)]
        try:
            while True:
                await changed.wait()
                changed.clear()
                services, _ = await self.catalog.list()
                nodes, _ = await self.nodes.list()
                by_id = {n.id: n for n in nodes}
                for loop in self.loops:
                    loop.update(services, by_id)
        finally:
            for w in watchers:
                w.cancel()
