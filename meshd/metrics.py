"""meshd's Prometheus metrics (served on --metrics, default 127.0.0.1:9464)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RPCS = Counter("meshd_rpcs_total", "RPCs handled, by method and status code", ["method", "code"])
RPC_SECONDS = Histogram("meshd_rpc_seconds", "RPC latency by method", ["method"],
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
JOINS = Counter("meshd_joins_total", "Join attempts by result", ["result"])
CATALOG_SERVICES = Gauge("meshd_catalog_services", "Services in the catalog")
NODES = Gauge("meshd_nodes", "Nodes by state", ["state"])
REVISION = Gauge("meshd_store_revision", "Current store revision")
WATCH_STREAMS = Gauge("meshd_watch_streams", "Open watch streams", ["kind"])
LEASE_EXPIRIES = Counter("meshd_lease_expiries_total", "Nodes marked unreachable after their lease expired")
COMPACTED = Gauge("meshd_store_compacted_revision", "Revision the leader last compacted the store's history to")
STORE_ALARMS = Gauge("meshd_store_alarms", "Store alarms raised (1 per alarm; etcd NOSPACE: the store is read-only)",
                     ["alarm"])
RECORDS_SKIPPED = Counter("meshd_watch_records_skipped_total",
                          "Catalog changes left out of a watch stream because they cannot be signed or sent")
WATCHES_REFUSED = Counter("meshd_watches_refused_total", "Watch streams refused: the caller has too many open")
WATCHERS_LAGGING = Counter("meshd_watchers_lagging_total",
                           "Watchers whose event queue filled up (they re-read the history when they read again)")
