"""The agent's DNS responder.

Answers A, AAAA and SRV for `<service>.mesh` and
`<service>.<namespace>.svc.cluster.local` from the agent's catalog copy (a
`lookup(name) -> list[Target]` callback) and forwards every other name to the
host's resolvers. Modules, one job each:

    config.py     DnsConfig: addresses, zones, TTLs, upstreams (and their syntax), limits
    target.py     Target: one address and port a name resolves to
    qname.py      what a query name means (zone, service, SRV form)
    answer.py     the decisions: query bytes in, reply bytes or "forward" out
    forward.py    forwarding to upstreams (UDP, TCP on truncation, timeouts)
    upstreams.py  the upstream list from config or resolv.conf, minus ourselves
    metrics.py    Prometheus counters and latency histogram
    server.py     DnsServer: the asyncio UDP and TCP listeners

Use:

    server = DnsServer(DnsConfig(host="127.0.0.1", port=53), catalog.lookup, registry)
    await server.start()
    ...                      # on every catalog change:
    server.invalidate()
    await server.stop()
"""

from meshagent.dns.config import DnsConfig
from meshagent.dns.server import DnsServer
from meshagent.dns.target import Lookup, Target

__all__ = ["DnsConfig", "DnsServer", "Lookup", "Target"]
