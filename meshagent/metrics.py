"""meshagent's Prometheus metrics (served on --metrics, default 127.0.0.1:9465; docs/metrics.md).

DNS queries by answer type are counted by the responder (meshagent/dns/metrics.py).
Gossip, WireGuard and path values live in their own objects and are read at
scrape time by `AgentCollector`; WireGuard's per-peer counters come from the
device, read by the agent every few seconds (`Agent.wg_stats`), never from
the scrape thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any


class Value:
    """A counter or gauge the agent keeps itself; prometheus_client (about 3 MB of imports) is
    loaded only when --metrics serves them (`AgentCollector`), so an agent without metrics never
    imports it. Counters are named without `_total`, which the exposition appends."""

    def __init__(self, name: str, doc: str, kind: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name, self.doc, self.kind, self.labelnames = name, doc, kind, labelnames
        self._values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0.0}
        self._function: Callable[[], float] | None = None

    def labels(self, *values: str) -> _Child:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        self._values.setdefault(tuple(values), 0.0)
        return _Child(self, tuple(values))

    def inc(self, amount: float = 1.0) -> None:
        _Child(self, ()).inc(amount)

    def set(self, value: float) -> None:
        if self.kind != "gauge":
            raise TypeError(f"{self.name} is a counter: it only goes up")
        self._values[()] = float(value)

    def set_function(self, fn: Callable[[], float]) -> None:
        self._function = fn

    def get(self, *values: str) -> float:
        if self._function is not None and not values:
            return float(self._function())
        return self._values.get(tuple(values), 0.0)

    def family(self) -> Metric:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        fam = cls(self.name, self.doc, labels=list(self.labelnames))
        if self._function is not None:
            fam.add_metric([], self.get())
        else:
            for labels, value in sorted(dict(self._values).items()):  # a copy: the loop thread adds labels
                fam.add_metric(list(labels), value)
        return fam


class _Child:
    def __init__(self, parent: Value, labels: tuple[str, ...]) -> None:
        self.parent, self.key = parent, labels

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"{self.parent.name}: counters only go up")
        self.parent._values[self.key] = self.parent._values.get(self.key, 0.0) + amount


Metric = Any  # prometheus_client.core.Metric, imported only where metrics are served

CATALOG_SERVICES = Value("mesh_agent_catalog_services", "Services in the agent's catalog copy", "gauge")
CATALOG_REVISION = Value("mesh_agent_catalog_revision", "Revision of the agent's catalog copy", "gauge")
CONNECTED = Value("mesh_agent_meshd_connected", "1 while the watch stream to meshd is up", "gauge")
RECONNECTS = Value("mesh_agent_meshd_disconnects", "Times the connection to meshd was lost", "counter")
LOOP_FAILURES = Value("mesh_agent_loop_failures",
                      "Unexpected errors that restarted a background loop, by loop", "counter", ("loop",))
HEALTHY = Value("mesh_agent_healthy", "1 while no background loop is restarting after an unexpected error (see Status)",
                "gauge")
RECORDS_SKIPPED = Value("mesh_agent_records_skipped",
                        "Signed catalog records from meshd that could not be passed on to gossip", "counter")
LOCAL_API_REFUSED = Value("mesh_agent_local_api_refused",
                          "Connections to the local API socket refused by their peer credentials", "counter")
RECORDS_REFUSED = Value("mesh_agent_gossip_records_refused",
                        "Catalog records refused: unknown or retired key, expired, bad signature, unsealed", "counter",
                        ("reason",))
VALUES = (CATALOG_SERVICES, CATALOG_REVISION, CONNECTED, RECONNECTS, LOOP_FAILURES, HEALTHY, RECORDS_SKIPPED,
          LOCAL_API_REFUSED, RECORDS_REFUSED)

#: path kinds the data plane plans (meshagent/paths.py), always exported so a panel shows 0
PATH_KINDS = ("direct", "tunnel", "relay")
MEMBER_STATES = ("alive", "suspect", "dead", "left")


class AgentCollector:
    """The agent's own values, and gossip, WireGuard and paths of the agent that `agent()`
    returns (None: nothing yet). A prometheus_client collector (it needs only `collect`)."""

    def __init__(self, agent: Callable[[], Any]) -> None:
        self.agent = agent

    def collect(self) -> Iterable[Metric]:
        for v in VALUES:
            yield v.family()
        a = self.agent()
        if a is None:
            return
        yield from self._gossip(a.gossip)
        yield from self._wireguard(a)

    @staticmethod
    def _gossip(g) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        members = GaugeMetricFamily("mesh_gossip_members", "Gossip members this agent knows, by state",
                                    labels=["state"])
        counts = dict.fromkeys(MEMBER_STATES, 0)
        stats: dict[str, Any] = {}
        if g is not None:
            for m in g.node.members():
                state = getattr(getattr(m, "state", None), "name", str(getattr(m, "state", "unknown"))).lower()
                counts[state] = counts.get(state, 0) + 1
            stats = g.node.swim.stats.as_dict()
        for state, n in sorted(counts.items()):
            members.add_metric([state], n)
        yield members
        probes = CounterMetricFamily("mesh_gossip_probes", "Probes sent, by kind and result", labels=["kind", "result"])
        probes.add_metric(["direct", "sent"], stats.get("probes_sent", 0))
        probes.add_metric(["direct", "failed"], stats.get("probes_failed", 0))
        probes.add_metric(["indirect", "sent"], stats.get("indirect_probes_sent", 0))
        yield probes
        for name, key, doc in (
                ("mesh_gossip_suspicions", "suspicions", "Members this agent started to suspect"),
                ("mesh_gossip_refutes", "refutations", "Suspicions of this agent it refuted"),
                ("mesh_gossip_members_declared_dead", "members_declared_dead", "Members this agent declared dead"),
                ("mesh_gossip_sent_bytes", "bytes_sent", "Gossip bytes sent (UDP and TCP)"),
                ("mesh_gossip_received_bytes", "bytes_received", "Gossip bytes received (UDP and TCP)"),
                ("mesh_gossip_bad_packets", "bad_packets", "Gossip packets dropped as malformed, undecryptable "
                                                           "or replayed")):
            value = stats.get(key, 0)
            if key == "bad_packets":
                value = sum(stats.get(k, 0) for k in ("bad_packets", "decrypt_failures", "replayed_packets",
                                                      "oversized_packets"))
            yield CounterMetricFamily(name, doc, value=value)

    @staticmethod
    def _wireguard(a) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        dp = a.dataplane
        peers = GaugeMetricFamily("mesh_wireguard_peers", "WireGuard peers of this node's interface")
        paths = GaugeMetricFamily("mesh_paths", "Peers by the path the data plane chose", labels=["kind"])
        kinds = dict.fromkeys(PATH_KINDS, 0)
        age = GaugeMetricFamily("mesh_wireguard_handshake_age_seconds",
                                "Seconds since the latest handshake with a peer", labels=["peer"])
        rx = CounterMetricFamily("mesh_wireguard_received_bytes", "Bytes received from a peer", labels=["peer"])
        tx = CounterMetricFamily("mesh_wireguard_sent_bytes", "Bytes sent to a peer", labels=["peer"])
        stats, names = (a.wg_stats, a.wg_names) if dp is not None else ({}, {})
        if dp is not None:
            for kind in dp.paths.values():
                kinds[kind] = kinds.get(kind, 0) + 1
        now = time.time()
        for key, st in sorted(stats.items()):
            peer = names.get(key, key[:8])
            if st.last_handshake_s:
                age.add_metric([peer], max(0.0, now - st.last_handshake_s))
            rx.add_metric([peer], st.rx_bytes)
            tx.add_metric([peer], st.tx_bytes)
        peers.add_metric([], len(stats))
        for kind, n in sorted(kinds.items()):
            paths.add_metric([kind], n)
        yield from (peers, paths, age, rx, tx)
