"""Node leases: which nodes are alive, and what happens to those that are not.

A node renews its lease every third of the TTL meshd grants it (in every
Join and Renew answer). Liveness is kept in memory, as etcd keeps lease
deadlines: a renewal is not a disk write. A node whose lease is not renewed
within its TTL is marked UNREACHABLE (one write); after a further `grace_s`
its services leave the catalog, so no stale name resolves. When it renews
again it is READY, and its agent re-asserts its services. After a meshd
restart (or a change of leader) every node gets a fresh lease period.

The TTL granted grows with the fleet, as Nomad scales its heartbeat TTL:
`lease_ttl_s`, or long enough that the fleet's renewals stay within
`max_renewals_per_s` (3 × nodes / rate, in steps of 5 s), whichever is longer.
A 5,000-node fleet then renews 100 times a second rather than 1,000, and meshd
notices a silent node within minutes; the agents' gossip, not the lease,
takes a crashed node's names out of DNS within seconds. A TTL once granted
stays in force for its length after a smaller one replaces it, so a fleet
that shrinks never expires the leases of nodes told the longer one.

Every duration here is on the injected clock's monotonic time, so neither
NTP nor an operator stepping the wall clock expires (or prolongs) a lease.
The wall clock only turns a renewal into the `last_seen` timestamp shown.

Replicas on etcd share renewals (`shared=True`) without a store write per
renewal (0.2 per node per second would fill etcd's space quota): each replica
collects the node ids it heard from and writes them as one digest,
`/heartbeats/<replica id>`, at most every `digest_interval_s` (a fifth of the
lease TTL, 3 s by default); the leader, which judges liveness, counts a new
revision of a digest as a renewal, seen at that moment on its own clock, of
every node it lists. Revisions, not times, cross between machines: monotonic
clocks of two machines cannot be compared, and wall clocks may disagree. A
node renewing every third of the TTL appears in a digest at least every
TTL/3 + TTL/5 (+ one lease check), well inside its TTL; the store sees one
write per replica per interval, whatever the number of nodes.

The leader also compacts the store's history (shared stores: the SQLite
backend trims its own), keeping the last `keep_revisions` so that an agent
reconnecting after an outage resumes from its revision rather than reloading
the catalog; one further back gets the full current set (watch_prefix).

`Liveness` is the table of renewals (sans-IO but for the shared heartbeats);
`LeaseLoop` is meshd's background loop that acts on it when leading: it marks
nodes unreachable, takes their services out of the catalog, advances gossip
key rotations and the catalog signing-key schedule, exports the gauges and drives the store's own lease expiry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from mesh.v1 import types_pb2
from meshcore.clock import SYSTEM, Clock
from meshcore.defaults import NODE_STATE_NAMES
from meshd import metrics
from meshd.store.base import Store

log = logging.getLogger("meshd.leases")

HEARTBEATS = "/heartbeats/"
#: a scaled TTL moves in steps of this many seconds (not at every join)
TTL_STEP_S = 5.0


@dataclass
class LeaseConfig:
    #: seconds within which a node must renew (agents renew every third of it)
    lease_ttl_s: float = 15.0
    #: seconds an unreachable node keeps its services before they leave the catalog
    grace_s: float = 30.0
    #: replicas share renewals through the store (etcd); a lone meshd keeps them in memory
    shared: bool = False
    #: seconds between a replica's renewal digests (0: a fifth of the lease TTL)
    digest_interval_s: float = 0.0
    #: history the leader keeps when it compacts a shared store, in revisions (a watch resumes within it)
    keep_revisions: int = 10_000
    #: seconds between compactions of a shared store
    compact_every_s: float = 300.0
    #: renewals a second the fleet may send: beyond lease_ttl_s * rate / 3 nodes the TTL grows (0: fixed TTL)
    max_renewals_per_s: float = 100.0

    def ttl_for(self, nodes: int) -> float:
        """The lease TTL to grant in a fleet of `nodes` renewing nodes."""
        if self.max_renewals_per_s <= 0:
            return self.lease_ttl_s
        needed = 3 * nodes / self.max_renewals_per_s
        if needed <= self.lease_ttl_s:
            return self.lease_ttl_s
        return float(math.ceil(needed / TTL_STEP_S) * TTL_STEP_S)

    @property
    def digest_every_s(self) -> float:
        return self.digest_interval_s or self.lease_ttl_s / 5


class Liveness:
    """When each node last renewed, on the monotonic clock."""

    def __init__(self, store: Store, config: LeaseConfig | None = None, clock: Clock = SYSTEM,
                 replica: str = "") -> None:
        self.store = store
        self.config = config or LeaseConfig()
        self.clock = clock
        self.replica = replica or uuid.uuid4().hex[:12]
        self.last_seen: dict[str, float] = {}  # node id -> monotonic time of the last renewal
        self._beats: dict[str, int] = {}  # digest key -> its revision last counted
        self._pending: set[str] = set()  # nodes renewed here since the last digest
        self._flushed_at = clock.monotonic()
        self.ttl = self.config.lease_ttl_s  # granted now
        metrics.LEASE_TTL.set(self.ttl)
        self._earlier: list[tuple[float, float]] = []  # (monotonic time replaced, TTL) of TTLs granted before

    def scale(self, nodes: int) -> float:
        """Grant the TTL for a fleet of `nodes` renewing nodes from now on; returns it."""
        ttl = self.config.ttl_for(nodes)
        if ttl != self.ttl:
            log.info("lease TTL %.0f s for %d nodes (at most %.0f renewals a second)", ttl, nodes,
                     self.config.max_renewals_per_s)
            self._earlier.append((self.clock.monotonic(), self.ttl))
            self.ttl = ttl
            metrics.LEASE_TTL.set(ttl)
        return ttl

    def ttl_in_force(self) -> float:
        """The longest TTL a node may still be counting on: the one granted now, or an earlier,
        longer one for as long as a node told it just before it was replaced may rely on it."""
        now = self.clock.monotonic()
        self._earlier = [(at, ttl) for at, ttl in self._earlier if now - at <= ttl]
        return max([self.ttl, *(ttl for _, ttl in self._earlier)])

    async def renewed(self, node_id: str) -> None:
        """A renewal (or the join) of `node_id`, received now by this replica."""
        self.last_seen[node_id] = self.clock.monotonic()
        if self.config.shared:  # the leader may be another replica: the next digest tells it
            self._pending.add(node_id)

    async def flush(self, force: bool = False) -> bool:
        """Write this replica's digest of renewals if one is due; True if written."""
        now = self.clock.monotonic()
        if not self._pending or (not force and now - self._flushed_at < self.config.digest_every_s):
            return False
        nodes, self._pending = sorted(self._pending), set()
        key = HEARTBEATS + self.replica
        try:
            self._beats[key] = await self.store.put(key, json.dumps(nodes).encode())
        except Exception:
            self._pending.update(nodes)  # told next time
            raise
        self._flushed_at = now
        return True

    def forget(self, node_id: str) -> None:
        self.last_seen.pop(node_id, None)
        self._pending.discard(node_id)

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
            if self._beats.get(kv.key) == kv.mod_revision:
                continue
            self._beats[kv.key] = kv.mod_revision
            try:
                nodes = json.loads(kv.value)
            except ValueError:
                continue
            if isinstance(nodes, list):  # (a per-node key of an older meshd holds a time: skipped)
                for node_id in nodes:
                    self.last_seen[str(node_id)] = now

    def overdue(self, nodes: list[types_pb2.Node]) -> tuple[list[types_pb2.Node], list[types_pb2.Node]]:
        """(READY nodes whose lease expired, UNREACHABLE or LEFT nodes past the grace period)."""
        now = self.clock.monotonic()
        ttl, grace = self.ttl_in_force(), self.config.grace_s
        expired, gone = [], []
        for n in nodes:
            age = now - self.last_seen.setdefault(n.id, now)  # unknown (after a restart): a fresh lease
            if n.state == types_pb2.NODE_STATE_READY and age > ttl:
                expired.append(n)
            elif n.state in (types_pb2.NODE_STATE_UNREACHABLE, types_pb2.NODE_STATE_LEFT) and age > ttl + grace:
                gone.append(n)
        return expired, gone

    def credit(self, seconds: float) -> None:
        """meshd itself was stalled for `seconds` (its own loop behind): renewals sent meanwhile
        could not be read, so every lease is held for that long instead of expiring for it."""
        if seconds > 0:
            for node_id in self.last_seen:
                self.last_seen[node_id] += seconds

    def all_renewed_since(self, t: float) -> bool:
        """Every live node (renewed within its lease) has renewed since monotonic time `t`."""
        now, ttl = self.clock.monotonic(), self.ttl_in_force()
        return all(seen >= t for seen in self.last_seen.values() if now - seen <= ttl)


def renewing(nodes: list[types_pb2.Node]) -> int:
    """Nodes that renew a lease: every one that has not left."""
    return sum(1 for n in nodes if n.state != types_pb2.NODE_STATE_LEFT)


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
        self._compacted_at = liveness.clock.monotonic()
        self._compacted = 0
        self._ticked_at: float | None = None

    def hold_if_behind(self) -> float:
        """Seconds this loop ran late since its last tick beyond one interval's slack (meshd busy
        or stalled, not the nodes): credited to every lease, so that meshd falling behind never
        turns into lease expiries, UNREACHABLE flips and yet more events to send. Returns the credit."""
        now = self.liveness.clock.monotonic()
        last, self._ticked_at = self._ticked_at, now
        if last is None:
            return 0.0
        late = (now - last) - 2 * self.interval
        if late > 0:
            self.liveness.credit(late)
            metrics.LEASE_HOLD_SECONDS.inc(late)
            return late
        return 0.0

    async def check(self) -> None:
        """Mark nodes past their lease unreachable; drop the services of those past the grace period."""
        await self.liveness.load_heartbeats()
        # read and decoded once per store revision, not every tick (the list is shared: read only)
        nodes = await self.nodes.current()
        self.liveness.scale(renewing(nodes))
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
        self.hold_if_behind()
        services, rev = await self.catalog.list()
        metrics.CATALOG_SERVICES.set(len(services))
        metrics.REVISION.set(rev)
        await self.liveness.flush()
        if self.is_leader():
            await self.check()
            stage = await self.gossip.advance(self.liveness.all_renewed_since)
            if stage:
                log.info("gossip key rotation: %s", stage)
            changed = await self.gossip.rotate_catalog_key()
            if changed:
                log.info("catalog signing keys: %s", changed)
            await self.compact(rev)
        else:  # the leader rotates keys: follow what it wrote
            self.liveness.scale(renewing(await self.nodes.current()))
            await self.gossip.refresh()
        await self.store.expire_leases()

    async def compact(self, revision: int, force: bool = False) -> int:
        """Compact a shared store's history to `keep_revisions` behind `revision`, every
        `compact_every_s`; returns the compaction point (0: not now)."""
        cfg = self.liveness.config
        now = self.liveness.clock.monotonic()
        if not cfg.shared or (not force and now - self._compacted_at < cfg.compact_every_s):
            return 0
        self._compacted_at = now
        point = revision - cfg.keep_revisions
        if point <= self._compacted:
            return 0
        await self.store.compact(point)
        self._compacted = point
        metrics.COMPACTED.set(point)
        metrics.COMPACTIONS.inc()
        log.info("compacted the store's history up to revision %d (keeping %d)", point, cfg.keep_revisions)
        return point

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # never let the loop die; it is retried next tick
                log.exception("lease check failed")
            await asyncio.sleep(self.interval)
