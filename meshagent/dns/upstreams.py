"""Which resolvers forwarded queries go to.

By default the host's own resolvers, read from resolv.conf `nameserver`
lines. Our own listening address is removed from the list: once the agent
points resolv.conf at the responder, forwarding to it would loop. When the
responder listens on a wildcard address, every loopback upstream on our port
would reach it too, so those are removed as well.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

from meshcore.defaults import DNS_PORT

from meshagent.dns.config import DnsConfig, Upstream, parse_upstream


def parse_resolv_conf(text: str) -> list[Upstream]:
    """The `nameserver` lines of a resolv.conf, in order. resolv.conf has no ports,
    so an IPv6 address is always bare; malformed lines are ignored, as the C
    library ignores them."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                ipaddress.ip_address(fields[1].split("%", 1)[0])
            except ValueError:
                continue
            found.append(Upstream(fields[1], DNS_PORT))
    return found


def _loops_back(up: Upstream, host: str, port: int) -> bool:
    if up.port != port:
        return False
    try:
        ip = ipaddress.ip_address(up.host.split("%", 1)[0])
        ours = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip == ours:
        return True
    return ours.is_unspecified and ip.is_loopback


def resolve_upstreams(config: DnsConfig, bound_port: int | None = None,
                      read: Callable[[str], str] = lambda p: Path(p).read_text()) -> tuple[Upstream, ...]:
    """The upstream list for `config`, with our own address removed.

    `bound_port` is the port actually bound (differs from config.port when that is 0).
    An unreadable resolv.conf gives an empty list: forwarded names then get SERVFAIL.
    """
    if config.upstreams is not None:
        candidates = [parse_upstream(u) for u in config.upstreams]
    else:
        try:
            candidates = parse_resolv_conf(read(config.resolv_conf))
        except OSError:
            candidates = []
    port = config.port if bound_port is None else bound_port
    return tuple(u for u in dict.fromkeys(candidates) if not _loops_back(u, config.host, port))


def cluster_upstreams(config: DnsConfig, bound_port: int | None = None) -> tuple[Upstream, ...]:
    port = config.port if bound_port is None else bound_port
    return tuple(u for u in map(parse_upstream, config.cluster_upstreams)
                 if not _loops_back(u, config.host, port))
