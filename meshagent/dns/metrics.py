"""Prometheus metrics of the DNS responder.

`mesh_dns_queries_total{qtype, result}` counts every query by its type and
what became of it: answer, nxdomain, nodata, forwarded, servfail, formerr,
notimp, refused or dropped (not answered at all, e.g. a response sent to us).
`mesh_dns_query_duration_seconds{result}` is the time from receiving a query
to sending its reply. Query types outside a fixed set are counted as "other",
so a stream of odd queries cannot grow the label set without bound.

Without a registry every call is a no-op, so tests and embedders need not
touch the process-global default registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

RESULTS = ("answer", "nxdomain", "nodata", "forwarded", "servfail", "formerr", "notimp", "refused", "dropped")
QTYPES = frozenset({"A", "AAAA", "SRV", "ANY", "SOA", "NS", "PTR", "CNAME", "MX", "TXT", "HTTPS", "SVCB",
                    "DS", "DNSKEY", "CAA", "NAPTR", "none"})
# DNS answers take microseconds locally and up to seconds when forwarded.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class DnsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._counter = self._histogram = None
        self._children: dict[tuple[str, str], tuple] = {}
        if registry is None:
            return
        from prometheus_client import Counter, Histogram

        self._counter = Counter("mesh_dns_queries", "DNS queries by query type and result",
                                ["qtype", "result"], registry=registry)
        self._histogram = Histogram("mesh_dns_query_duration_seconds",
                                    "Time from receiving a DNS query to sending its reply",
                                    ["result"], buckets=BUCKETS, registry=registry)

    def observe(self, qtype: str, result: str, seconds: float) -> None:
        if self._counter is None:
            return
        key = (qtype if qtype in QTYPES else "other", result)
        children = self._children.get(key)
        if children is None:
            # Label look-ups are the slow part of prometheus_client; keep the children.
            children = (self._counter.labels(*key), self._histogram.labels(result))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
