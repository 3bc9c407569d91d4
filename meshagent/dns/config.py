"""Configuration of the DNS responder: one dataclass, every default explained.

The responder is authoritative for two zones and forwards everything else:

- `<mesh_domain>` (default `mesh`): `<service>.mesh`.
- `<cluster_domain>` (default `cluster.local`): `<service>.<namespace>.svc.cluster.local`
  for the one namespace the mesh publishes (default `default`), the same
  names Kubernetes gives the Services meshd creates.

Names elsewhere in the cluster domain (other namespaces, pod records) are
answered NXDOMAIN, as CoreDNS answers for a Service that does not exist,
unless `cluster_upstreams` names a cluster DNS (e.g. K3s' CoreDNS at
10.43.0.10) to forward them to. They are never sent to the host's public
resolvers: `cluster.local` is a private zone, and leaking it to the internet
is slow and reveals internal names.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from meshcore.defaults import DNS_PORT
from meshcore.errors import ConfigError
from meshcore.names import is_name


@dataclass(frozen=True)
class DnsConfig:
    # Address the UDP and TCP listeners bind. The agent points the host's
    # resolv.conf here; tests use port 0 (the kernel picks a free port, and
    # TCP then binds the same port number).
    host: str = "127.0.0.1"
    port: int = DNS_PORT
    # Zones. `mesh_domain` and `cluster_domain` may have several labels.
    mesh_domain: str = "mesh"
    cluster_domain: str = "cluster.local"
    namespace: str = "default"
    # TTL of positive answers, seconds. Short, so a name that moves to another
    # node (failover) is re-resolved within seconds by every cache in between.
    ttl: int = 5
    # TTL and SOA minimum of negative answers (NXDOMAIN, NODATA): a name that
    # was just exposed becomes resolvable within this many seconds even behind
    # a caching resolver that already saw it missing.
    negative_ttl: int = 5
    # Upstream resolvers for every name outside our zones, as "host" or
    # "host:port" ("[v6]:port"). None reads `resolv_conf`; our own address is
    # always left out, so the responder never forwards to itself.
    upstreams: tuple[str, ...] | None = None
    resolv_conf: str = "/etc/resolv.conf"
    # Where names of the cluster domain that are not ours go; empty answers
    # them NXDOMAIN (see the module docstring).
    cluster_upstreams: tuple[str, ...] = ()
    # Seconds to wait for one upstream before trying the next. glibc's stub
    # resolver retries after 5 s, so two upstreams fit before the client gives up.
    upstream_timeout: float = 2.0
    # Forwarded queries in flight at once; beyond this we answer SERVFAIL
    # rather than open unbounded sockets.
    max_forwards: int = 512
    # TCP: open connections at once, and seconds an idle connection is kept.
    max_tcp_connections: int = 128
    tcp_idle_timeout: float = 10.0
    # Seconds an answer from our zones may be served from the responder's
    # answer cache. The agent calls `invalidate()` on every catalog change, so
    # this only bounds staleness if it forgets; 0 disables the cache.
    answer_cache_s: float = 1.0

    def validate(self) -> DnsConfig:
        """Return self, or raise ConfigError naming the rule that is broken."""
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"invalid dns port {self.port!r}: must be 0-65535 (0 picks a free port)")
        for what, domain in (("mesh_domain", self.mesh_domain), ("cluster_domain", self.cluster_domain)):
            labels = domain.lower().strip(".").split(".")
            if not domain or not all(is_name(label) for label in labels):
                raise ConfigError(f"invalid {what} {domain!r}: must be dot-separated RFC 1123 labels")
        if not is_name(self.namespace):
            raise ConfigError(f"invalid namespace {self.namespace!r}: must be an RFC 1123 label")
        mesh, cluster = zone_labels(self.mesh_domain), zone_labels(self.cluster_domain)
        if _is_suffix(mesh, cluster) or _is_suffix(cluster, mesh):
            raise ConfigError(f"mesh_domain {self.mesh_domain!r} and cluster_domain {self.cluster_domain!r} "
                              "must not contain one another")
        for what, value in (("ttl", self.ttl), ("negative_ttl", self.negative_ttl)):
            if not isinstance(value, int) or not 0 <= value <= 86400:
                raise ConfigError(f"invalid {what} {value!r}: must be whole seconds, 0-86400")
        if not self.upstream_timeout > 0:
            raise ConfigError(f"invalid upstream_timeout {self.upstream_timeout!r}: must be > 0 seconds")
        if self.max_forwards < 1 or self.max_tcp_connections < 1:
            raise ConfigError("max_forwards and max_tcp_connections must be at least 1")
        if not self.tcp_idle_timeout > 0:
            raise ConfigError(f"invalid tcp_idle_timeout {self.tcp_idle_timeout!r}: must be > 0 seconds")
        if self.answer_cache_s < 0:
            raise ConfigError(f"invalid answer_cache_s {self.answer_cache_s!r}: must be >= 0")
        for upstream in (*(self.upstreams or ()), *self.cluster_upstreams):
            parse_upstream(upstream)
        return self


class Upstream(NamedTuple):
    host: str
    port: int = DNS_PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_upstream(text: str) -> Upstream:
    """"10.0.0.2", "10.0.0.2:5353", "fd00::1", "[fd00::1]:5353" -> Upstream."""
    raw = text.strip()
    host, port = raw, DNS_PORT
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"invalid upstream {text!r}: use host, host:port or [v6]:port")
        if rest:
            port = _port(rest[1:], text)
    elif raw.count(":") == 1:
        host, _, p = raw.partition(":")
        port = _port(p, text)
    try:
        # A scope (fe80::1%eth0) is kept for the socket but not for the check.
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ConfigError(f"invalid upstream {text!r}: must be an IP address "
                          "(resolvers are not looked up by name)") from None
    return Upstream(host, port)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"invalid upstream {whole!r}: port must be 1-65535")
    return int(text)


def zone_labels(domain: str) -> tuple[bytes, ...]:
    """`"cluster.local"` -> `(b"cluster", b"local")`, lowercase, as DNS compares them."""
    return tuple(label.encode("ascii") for label in domain.lower().strip(".").split("."))


def _is_suffix(short: tuple[bytes, ...], long: tuple[bytes, ...]) -> bool:
    return len(short) <= len(long) and long[len(long) - len(short):] == short
