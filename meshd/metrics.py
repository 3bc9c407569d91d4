"""meshd's Prometheus metrics (served on --metrics, default 127.0.0.1:9464; docs/metrics.md).

Counters and gauges updated where things happen are module-level; values that
live in other objects (the store's size, leadership, the mirrors' status) are
read at scrape time by `CoordinatorCollector`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

RPCS = Counter("mesh_rpc_requests", "RPCs handled, by method and status code", ["method", "code"])
RPC_SECONDS = Histogram("mesh_rpc_duration_seconds", "RPC latency by method", ["method"],
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
JOINS = Counter("mesh_joins", "Join attempts by result (ok, throttled, or the refusal's status code)", ["result"])
JOINS_THROTTLED = Counter("mesh_joins_throttled",
                          "Joins refused at once because --max-pending-joins joins were already waiting")
ADMIN_SOCKET_REFUSED = Counter("mesh_admin_socket_refused",
                               "Connections to the admin socket refused by their peer credentials (not root)")
CATALOG_SERVICES = Gauge("mesh_catalog_services", "Services in the catalog")
NODES = Gauge("mesh_nodes", "Nodes by state", ["state"])
REVISION = Gauge("mesh_store_revision", "Current store revision")
WATCH_STREAMS = Gauge("mesh_watch_streams", "Open watch streams", ["kind"])
WATCH_SYNCS_WAITING = Gauge("mesh_watch_syncs_waiting", "Watch streams waiting for their turn to send the initial set")
WATCH_SYNC_TURNS_EXPIRED = Counter("mesh_watch_sync_turns_expired",
                                   "Watch streams whose initial set outlasted their turn (slow or stalled readers)")
WATCH_SEND_TURNS_EXPIRED = Counter("mesh_watch_send_turns_expired",
                                   "Watch messages whose write outlasted its turn (slow or stalled readers)")
LEASE_HOLD_SECONDS = Counter("mesh_lease_hold_seconds",
                             "Seconds every lease was held because meshd itself ran behind (its lease loop late)")
LEASE_TTL = Gauge("mesh_lease_ttl_seconds", "Lease TTL meshd grants now (grows with the fleet: --max-renewals-per-s)")
LEASE_EXPIRIES = Counter("mesh_lease_expiries", "Nodes marked unreachable after their lease expired")
COMPACTED = Gauge("mesh_store_compacted_revision", "Revision the leader last compacted the store's history to")
COMPACTIONS = Counter("mesh_store_compactions", "Compactions of the store's history by the leader")
STORE_ALARMS = Gauge("mesh_store_alarms", "Store alarms raised (1 per alarm; etcd NOSPACE: the store is read-only)",
                     ["alarm"])
RECORDS_SKIPPED = Counter("mesh_watch_records_skipped",
                          "Catalog changes left out of a watch stream because they cannot be signed or sent")
WATCHES_REFUSED = Counter("mesh_watches_refused", "Watch streams refused: the caller has too many open")
WATCHERS_LAGGING = Counter("mesh_watchers_lagging",
                           "Watchers whose event queue filled up (they re-read the history when they read again)")
TUNNELS_OPEN = Gauge("mesh_tunnels_open", "Tunnels open through meshd to a service (meshctl proxy with an admin certificate)")
TUNNEL_BYTES = Counter("mesh_tunnel_bytes", "Bytes carried by tunnels, by direction (to_service, from_service)",
                       ["direction"])
TUNNELS_REFUSED = Counter("mesh_tunnels_refused", "Tunnels refused: the caller, or meshd in all, has too many open")
TUNNELS_IDLE = Counter("mesh_tunnels_idle_closed", "Tunnels closed because no byte moved either way for too long")
ELECTION_TRANSITIONS = Counter("mesh_election_transitions", "Times this meshd gained or lost leadership")
JOIN_TOKENS_PUBLISHED = Counter("mesh_join_tokens_published",
                                "Join tokens published to SSM by --publish-join-token (rotations and replacements)")
JOIN_TOKEN_PUBLISH_ERRORS = Counter("mesh_join_token_publish_errors",
                                    "Checks of the published join token that failed (SSM or the store away)")
SYNC_SECONDS = Histogram("mesh_sync_reconcile_duration_seconds", "Time of one reconcile of a mirror, by target",
                         ["target"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SYNC_ERRORS = Counter("mesh_sync_errors", "Reconciles of a mirror that failed, by target", ["target"])
SYNC_REPAIRS = Counter("mesh_sync_drift_repairs",
                       "Objects a reconcile created, updated or deleted in a mirror, by target and action",
                       ["target", "action"])


def sync_target(name: str) -> None:
    """Make a mirror's series exist from the start (0 until something happens)."""
    SYNC_ERRORS.labels(name)
    for action in ("create", "update", "delete"):
        SYNC_REPAIRS.labels(name, action)


class CoordinatorCollector(Collector):
    """Values read when Prometheus scrapes: leadership and the store's size on disk."""

    def __init__(self, coordinator: Callable[[], Any]) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterable[Metric]:
        c = self.coordinator()
        if c is None:
            return
        yield GaugeMetricFamily("mesh_election_is_leader",
                                "1 while this meshd leads (lease checks, key rotation, mirrors)",
                                value=1.0 if c.is_leader else 0.0)
        size = store_size_bytes(c.store)
        if size is not None:
            yield GaugeMetricFamily("mesh_store_size_bytes", "Size of the store on disk (SQLite file and WAL)",
                                    value=size)


class CostCollector(Collector):
    """Cost gauges from the nodes' instance-type/region/lifecycle labels and a price table file.

    meshd never looks a price up: `meshctl costs --price-table FILE` writes the table (from AWS),
    meshd reads it (again when the file changes) and computes the figures when Prometheus scrapes,
    off the agents' paths. `snapshot` returns (nodes, services) as protobuf messages."""

    def __init__(self, path: str, snapshot: Callable[[], tuple[list[Any], list[Any]]]) -> None:
        self.path = path
        self.snapshot = snapshot
        self._table: Any = None
        self._mtime = -1.0

    def _prices(self) -> Any:
        from pathlib import Path

        from meshcore.costs import PriceTable

        try:
            mtime = os.stat(self.path).st_mtime
            if mtime != self._mtime:
                self._table, self._mtime = PriceTable.load(Path(self.path)), mtime
        except (OSError, ValueError):
            pass  # keep the last good table; none yet means no cost gauges
        return self._table

    def collect(self) -> Iterable[Metric]:
        from meshcore import costs

        table = self._prices()
        if table is None:
            return
        nodes, services = self.snapshot()
        keys = [costs.node_key(n.name, n.region, dict(n.labels)) for n in nodes]
        c = costs.compute(keys, [(s.name, s.node_name) for s in services], table)
        per_node = GaugeMetricFamily("mesh_node_cost_dollars_per_hour", "What a node costs per hour (USD), from "
                                     "its instance type, region and lifecycle", labels=["node", "instance_type",
                                                                                       "region", "lifecycle"])
        for k, price in c.nodes:
            if price is not None:
                per_node.add_metric([k.name, k.instance_type, k.region, k.lifecycle], price)
        yield per_node
        per_service = GaugeMetricFamily("mesh_service_cost_dollars_per_hour",
                                        "A service's share of its node's cost per hour (USD)", labels=["service"])
        for name, usd in sorted(c.services.items()):
            per_service.add_metric([name], usd)
        yield per_service
        total = GaugeMetricFamily("mesh_cost_dollars_per_hour", "The mesh's cost per hour (USD) by lifecycle",
                                  labels=["lifecycle"])
        for lc, usd in sorted(c.totals.items()):
            total.add_metric([lc], usd)
        yield total
        yield GaugeMetricFamily("mesh_cost_unpriced_nodes", "Nodes without a known price (type, region or table "
                                "entry missing)", value=float(len(c.unpriced)))


def store_size_bytes(store: Any) -> float | None:
    path = getattr(store, "path", None)
    if path is None:
        return None
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except OSError:
            pass
    return float(total)


__all__ = ["CoordinatorCollector", "CostCollector", "sync_target"]
