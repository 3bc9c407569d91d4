"""Query names: which zone, which service, which form."""

from __future__ import annotations

import pytest

from meshagent.dns.config import DnsConfig
from meshagent.dns.qname import Kind, NameParser


def labels(name: str) -> tuple[bytes, ...]:
    return tuple(label.encode() for label in name.strip(".").split(".") if label)


@pytest.fixture
def parser() -> NameParser:
    return NameParser(DnsConfig())


@pytest.mark.parametrize("name, kind, service", [
    ("web.mesh", Kind.SERVICE, "web"),
    ("WEB.Mesh", Kind.SERVICE, "web"),
    ("web.default.svc.cluster.local", Kind.SERVICE, "web"),
    ("Web.DEFAULT.svc.Cluster.Local", Kind.SERVICE, "web"),
    ("_web._tcp.web.mesh", Kind.SRV_PORT, "web"),
    ("_web._udp.web.default.svc.cluster.local", Kind.SRV_PORT, "web"),
    ("node-1.web.mesh", Kind.NODE_HOST, "web"),
    ("node-1.web.default.svc.cluster.local", Kind.NODE_HOST, "web"),
    ("mesh", Kind.APEX, ""),
    ("default.svc.cluster.local", Kind.APEX, ""),
    ("web.other.svc.cluster.local", Kind.CLUSTER_OTHER, ""),
    ("svc.cluster.local", Kind.CLUSTER_OTHER, ""),
    ("cluster.local", Kind.CLUSTER_OTHER, ""),
    ("1-2-3-4.default.pod.cluster.local", Kind.CLUSTER_OTHER, ""),
    ("example.com", Kind.FOREIGN, ""),
    ("mesh.example.com", Kind.FOREIGN, ""),
    ("local", Kind.FOREIGN, ""),
    ("", Kind.FOREIGN, ""),
])
def test_names_are_classified(parser, name, kind, service):
    parsed = parser.parse(labels(name))
    assert parsed.kind is kind
    assert parsed.service == service


@pytest.mark.parametrize("name", [
    "web_1.mesh",                 # '_' breaks the RFC 1123 label rule
    "-web.mesh",                  # leading '-'
    "a" * 64 + ".mesh",           # longer than 63
    "a.b.c.d.mesh",               # too deep
    "web._tcp.web.mesh",          # SRV form needs '_' on both labels
    "_web.tcp.web.mesh",
    "__._tcp.web.mesh",
    "x.y.web.default.svc.cluster.local",
])
def test_names_that_cannot_exist_in_our_zones(parser, name):
    assert parser.parse(labels(name)).kind is Kind.NO_SUCH_NAME


def test_non_ascii_label_is_no_such_name_not_an_error(parser):
    assert parser.parse((b"w\xffb", b"mesh")).kind is Kind.NO_SUCH_NAME


def test_srv_parts_are_split(parser):
    parsed = parser.parse(labels("_web._tcp.web.mesh"))
    assert (parsed.port_name, parsed.proto, parsed.service) == ("web", "tcp", "web")
    assert parsed.suffix == (b"mesh",)


def test_configured_zones_and_namespace():
    parser = NameParser(DnsConfig(mesh_domain="mesh.internal", cluster_domain="k8s.example", namespace="gpu"))
    assert parser.parse(labels("web.mesh.internal")).kind is Kind.SERVICE
    assert parser.parse(labels("web.mesh")).kind is Kind.FOREIGN
    assert parser.parse(labels("web.gpu.svc.k8s.example")).kind is Kind.SERVICE
    assert parser.parse(labels("web.default.svc.k8s.example")).kind is Kind.CLUSTER_OTHER
    assert parser.parse(labels("web.default.svc.cluster.local")).kind is Kind.FOREIGN
