"""Metrics: queries by type and result, and a latency histogram."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from meshagent.dns.metrics import DnsMetrics


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_counts_by_qtype_and_result():
    registry = CollectorRegistry()
    metrics = DnsMetrics(registry)
    metrics.observe("A", "answer", 0.0002)
    metrics.observe("A", "answer", 0.0003)
    metrics.observe("AAAA", "nxdomain", 0.0001)
    assert value(registry, "mesh_dns_queries_total", qtype="A", result="answer") == 2
    assert value(registry, "mesh_dns_queries_total", qtype="AAAA", result="nxdomain") == 1
    assert value(registry, "mesh_dns_query_duration_seconds_count", result="answer") == 2
    assert value(registry, "mesh_dns_query_duration_seconds_bucket", result="answer", le="0.00025") == 1


def test_odd_qtypes_share_one_label():
    registry = CollectorRegistry()
    metrics = DnsMetrics(registry)
    for qtype in ("TYPE65000", "other", "WKS"):
        metrics.observe(qtype, "forwarded", 0.01)
    assert value(registry, "mesh_dns_queries_total", qtype="other", result="forwarded") == 3
    assert value(registry, "mesh_dns_queries_total", qtype="TYPE65000", result="forwarded") == 0


def test_without_registry_nothing_is_recorded():
    from prometheus_client import REGISTRY

    DnsMetrics(None).observe("A", "answer", 0.1)
    assert REGISTRY.get_sample_value("mesh_dns_queries_total", {"qtype": "A", "result": "answer"}) is None
