"""Node leases: which nodes are alive, and what happens to those that are not.

A node renews its lease every third of `lease_ttl_s`. Liveness is kept in
memory, as etcd keeps lease deadlines: a renewal is not a disk write. A node
whose lease is not renewed within `lease_ttl_s` is marked UNREACHABLE (one
write); after a further `grace_s` its services leave the catalog, so no stale
name resolves. When it renews again it is READY, and its agent re-asserts its
services. After a meshd restart (or a change of leader) every node gets a
fresh lease period.

Every duration here is on the injected clock's monotonic time, so neither
NTP nor an operator stepping the wall clock expires (or prolongs) a lease.
The wall clock only turns a renewal into the `last_seen` timestamp shown.

Replicas on etcd share renewals (`shared=True`): a renewal received by any
replica bumps `/heartbeats/<node id>`, and the leader, which judges liveness,
counts a new revision of that key as a renewal seen at that moment on its own
clock. Revisions, not times, cross between machines: monotonic clocks of two
machines cannot be compared, and wall clocks may disagree. The leader looks at
least every lease check (at most 1 s apart), which bounds the error.

`Liveness` is the table of renewals (sans-IO but for the shared heartbeats);
`LeaseLoop` is meshd's background loop that acts on it when leading: it marks
nodes unreachable, takes their services out of the catalog, advances gossip
key rotations, exports the gauges and drives the store's own lease expiry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from mesh.v1 import types_pb2
from meshcore.clock import SYSTEM, Clock
from meshcore.defaults import NODE_STATE_NAMES
from meshd import metrics
from meshd.store.base import Store

log = logging.getLogger("meshd.leases")

HEARTBEATS = "/heartbeats/"


@dataclass
class LeaseConfig:
    #: seconds within which a node must renew (agents renew every third of it)
    lease_ttl_s: float = 15.0
    #: seconds an unreachable node keeps its services before they leave the catalog
    grace_s: float = 30.0
    #: replicas share renewals through the store (etcd); a lone meshd keeps them in memory
    shared: bool = False


class Liveness:
    """When each node last renewed, on the monotonic clock."""

    def __init__(self, store: Store, config: LeaseConfig | None = None, clock: Clock = SYSTEM) -> None:
        self.store = store
        self.config = config or LeaseConfig()
        self.clock = clock
        self.last_seen: dict[str, float] = {}  # node id -> monotonic time of the last renewal
        self._beats: dict[str, int] = {}  # node id -> revision of its heartbeat key last counted

    async def renewed(self, node_id: str) -> None:
        """A renewal (or the join) of `node_id`, received now by this replica."""
        self.last_seen[node_id] = self.clock.monotonic()
        if self.config.shared:  # the leader may be another replica: tell it through the store
            self._beats[node_id] = await self.store.put(HEARTBEATS + node_id, repr(self.clock.wall()).encode())

    def forget(self, node_id: str) -> None:
        self.last_seen.pop(node_id, None)
        self._beats.pop(node_id, None)

    def seen_at(self, node_id: str) -> float | None:
        """Wall-clock time of the last renewal, for display; None if none was seen since start."""
        seen = self.last_seen.get(node_id)
        if seen is None:
            return None
        return self.clock.wall() - (self.clock.monotonic() - seen)

    async def load_heartbeats(self) -> None:
        """Count renewals other replicas received (shared heartbeats only)."""
        if not self.config.shared:
            return
        kvs, _ = await self.store.range(HEARTBEATS)
        now = self.clock.monotonic()
        for kv in kvs:
            node_id = kv.key[len(HEARTBEATS):]
            if self._beats.get(node_id) != kv.mod_revision:
                self._beats[node_id] = kv.mod_revision
                self.last_seen[node_id] = now

    def overdue(self, nodes: list[types_pb2.Node]) -> tuple[list[types_pb2.Node], list[types_pb2.Node]]:
        """(READY nodes whose lease expired, UNREACHABLE or LEFT nodes past the grace period)."""
        now = self.clock.monotonic()
        ttl, grace = self.config.lease_ttl_s, self.config.grace_s
        expired, gone = [], []
        for n in nodes:
            age = now - self.last_seen.setdefault(n.id, now)  # unknown (after a restart): a fresh lease
            if n.state == types_pb2.NODE_STATE_READY and age > ttl:
                expired.append(n)
            elif n.state in (types_pb2.NODE_STATE_UNREACHABLE, types_pb2.NODE_STATE_LEFT) and age > ttl + grace:
                gone.append(n)
        return expired, gone

    def all_renewed_since(self, t: float) -> bool:
        """Every live node (renewed within its lease) has renewed since monotonic time `t`."""
        now, ttl = self.clock.monotonic(), self.config.lease_ttl_s
        return all(seen >= t for seen in self.last_seen.values() if now - seen <= ttl)


class LeaseLoop:
    """The leader's periodic lease check (every lease_ttl_s / 5, between 0.2 and 1 s).

    `nodes`, `catalog` and `gossip` are meshd's Nodes, Catalog and GossipKeys;
    `is_leader` says whether this replica judges liveness now.
    """

    def __init__(self, liveness: Liveness, nodes, catalog, gossip, store: Store,
                 is_leader: Callable[[], bool] = lambda: True) -> None:
        self.liveness = liveness
        self.nodes = nodes
        self.catalog = catalog
        self.gossip = gossip
        self.store = store
        self.is_leader = is_leader
        self.interval = max(0.2, min(1.0, liveness.config.lease_ttl_s / 5))

    async def check(self) -> None:
        """Mark nodes past their lease unreachable; drop the services of those past the grace period."""
        await self.liveness.load_heartbeats()
        nodes, _ = await self.nodes.list()
        expired, gone = self.liveness.overdue(nodes)
        for n in expired:
            log.warning("node %s (%s) missed its lease: unreachable", n.name, n.id)
            metrics.LEASE_EXPIRIES.inc()
            await self.nodes.set_state(n.id, types_pb2.NODE_STATE_UNREACHABLE)
        for n in gone:
            removed = await self.catalog.remove_node_services(n.id)
            if removed:
                log.warning("node %s unreachable past the grace period: removed %s", n.name,
                            ", ".join(s.name for s in removed))
        counts: dict[int, int] = {}
        for n in nodes:
            counts[n.state] = counts.get(n.state, 0) + 1
        for state, name in NODE_STATE_NAMES.items():
            if state != types_pb2.NODE_STATE_UNSPECIFIED:
                metrics.NODES.labels(name).set(counts.get(state, 0))

    async def tick(self) -> None:
        services, rev = await self.catalog.list()
        metrics.CATALOG_SERVICES.set(len(services))
        metrics.REVISION.set(rev)
        if self.is_leader():
            await self.check()
            stage = await self.gossip.advance(self.liveness.all_renewed_since)
            if stage:
                log.info("gossip key rotation: %s", stage)
        await self.store.expire_leases()

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # never let the loop die; it is retried next tick
                log.exception("lease check failed")
            await asyncio.sleep(self.interval)
