"""What a query name means: which zone, which service, which record family.

Names are compared as DNS compares them, label by label and case-insensitively.
Inside the mesh zone (`mesh`) and the published namespace of the cluster
domain (`<ns>.svc.cluster.local`), with Z standing for either suffix:

    Z                         the zone itself (exists, holds no address)
    <svc>.Z                   A / AAAA of the service; SRV gives its port
    _<svc>._<proto>.<svc>.Z   SRV, the Kubernetes named-port form; a service
                              has one port, named after the service
    <node>.<svc>.Z            A / AAAA of the service on one node: the
                              target names SRV answers point at
    anything else             does not exist (NXDOMAIN)

The rest of the cluster domain (other namespaces, `pod`, the `svc` and
`cluster.local` apexes) is `CLUSTER_OTHER`, and every other name is
`FOREIGN` (forwarded upstream).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshcore.names import is_name

from meshagent.dns.config import DnsConfig, zone_labels


class Kind(enum.Enum):
    APEX = "apex"                    # the zone apex, or `<ns>.svc.<cluster>`
    SERVICE = "service"              # <svc>.Z
    SRV_PORT = "srv_port"            # _<port>._<proto>.<svc>.Z
    NODE_HOST = "node_host"          # <node>.<svc>.Z
    NO_SUCH_NAME = "no_such_name"    # inside our zones, cannot exist
    CLUSTER_OTHER = "cluster_other"  # elsewhere in the cluster domain
    FOREIGN = "foreign"              # not ours: forward


@dataclass(frozen=True)
class Parsed:
    kind: Kind
    zone: tuple[bytes, ...] = ()     # the zone apex the name falls in (for SOA)
    suffix: tuple[bytes, ...] = ()   # Z: what service names hang from
    service: str = ""
    node: str = ""
    port_name: str = ""
    proto: str = ""


class NameParser:
    """Classifies query names for one configuration; pure and reusable."""

    def __init__(self, config: DnsConfig) -> None:
        self.mesh = zone_labels(config.mesh_domain)
        self.cluster = zone_labels(config.cluster_domain)
        self.published = (config.namespace.encode("ascii"), b"svc") + self.cluster

    def parse(self, labels: tuple[bytes, ...]) -> Parsed:
        """`labels` as on the wire (any case), without the root label."""
        name = tuple(label.lower() for label in labels)
        if _ends_with(name, self.mesh):
            return self._inside(name[: len(name) - len(self.mesh)], self.mesh, self.mesh)
        if _ends_with(name, self.published):
            return self._inside(name[: len(name) - len(self.published)], self.published, self.cluster)
        if _ends_with(name, self.cluster):
            return Parsed(Kind.CLUSTER_OTHER, zone=self.cluster)
        return Parsed(Kind.FOREIGN)

    @staticmethod
    def _inside(rest: tuple[bytes, ...], suffix: tuple[bytes, ...], zone: tuple[bytes, ...]) -> Parsed:
        texts = [_text(label) for label in rest]
        nx = Parsed(Kind.NO_SUCH_NAME, zone=zone, suffix=suffix)
        if not rest:
            return Parsed(Kind.APEX, zone=zone, suffix=suffix)
        if len(texts) == 1:
            return Parsed(Kind.SERVICE, zone, suffix, service=texts[0]) if is_name(texts[0]) else nx
        if len(texts) == 2:
            node, service = texts
            if is_name(node) and is_name(service):
                return Parsed(Kind.NODE_HOST, zone, suffix, service=service, node=node)
            return nx
        if len(texts) == 3:
            port, proto, service = texts
            if (port.startswith("_") and proto.startswith("_") and is_name(port[1:])
                    and is_name(proto[1:]) and is_name(service)):
                return Parsed(Kind.SRV_PORT, zone, suffix, service=service, port_name=port[1:], proto=proto[1:])
        return nx


def _ends_with(name: tuple[bytes, ...], suffix: tuple[bytes, ...]) -> bool:
    return len(name) >= len(suffix) and name[len(name) - len(suffix):] == suffix


def _text(label: bytes) -> str:
    # latin-1 maps every byte to one character, so a label with non-ASCII bytes
    # simply fails the RFC 1123 check instead of raising.
    return label.decode("latin-1")
