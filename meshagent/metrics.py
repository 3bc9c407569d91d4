"""meshagent's Prometheus metrics (served on --metrics, default 127.0.0.1:9465).

DNS queries by answer type are counted by the responder (meshagent/dns/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CATALOG_SERVICES = Gauge("meshagent_catalog_services", "Services in the agent's catalog copy")
CATALOG_REVISION = Gauge("meshagent_catalog_revision", "Revision of the agent's catalog copy")
CONNECTED = Gauge("meshagent_meshd_connected", "1 while the watch stream to meshd is up")
RECONNECTS = Counter("meshagent_meshd_disconnects_total", "Times the connection to meshd was lost")
LOOP_FAILURES = Counter("meshagent_loop_failures_total",
                        "Unexpected errors that restarted a background loop, by loop", ["loop"])
HEALTHY = Gauge("meshagent_healthy", "1 while no background loop is restarting after an unexpected error (see Status)")
RECORDS_SKIPPED = Counter("meshagent_records_skipped_total",
                          "Signed catalog records from meshd that could not be passed on to gossip")
