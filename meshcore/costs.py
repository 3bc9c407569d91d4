"""What the mesh costs right now: per node, per service, in total; spot and on-demand apart.

A node's price comes from the facts its agent discovered and meshd keeps
as labels: `node.kubernetes.io/instance-type`, `topology.kubernetes.io/region`
(or the node's region) and `mesh.lifecycle` (spot / on-demand; missing
means on-demand). Prices come from a `PriceTable`: plain data, keyed by
(lifecycle, region, instance type), made by meshctl from AWS (infra.prices)
and written to a file meshd may read with `--price-table`. Nothing here
calls AWS, so meshd serves cost gauges without a lookup on any path.

A service costs its node's hourly price shared equally among the services
on that node (a node with no service is counted only in the node view).
A node whose type or price is unknown is listed with no price and counted
in `unpriced`, never silently as zero.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TYPE_LABEL = "node.kubernetes.io/instance-type"
REGION_LABEL = "topology.kubernetes.io/region"
LIFECYCLE_LABEL = "mesh.lifecycle"
ON_DEMAND, SPOT = "on-demand", "spot"


def lifecycle_of(value: str) -> str:
    return SPOT if value == SPOT else ON_DEMAND  # scheduled / capacity-block are billed as reserved on-demand


@dataclass
class PriceTable:
    """USD per hour by "lifecycle/region/type"."""

    prices: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def key(lifecycle: str, region: str, instance_type: str) -> str:
        return f"{lifecycle_of(lifecycle)}/{region}/{instance_type}"

    def get(self, lifecycle: str, region: str, instance_type: str) -> float | None:
        return self.prices.get(self.key(lifecycle, region, instance_type))

    def set(self, lifecycle: str, region: str, instance_type: str, usd: float) -> None:
        self.prices[self.key(lifecycle, region, instance_type)] = float(usd)

    def dump(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"version": 1, "usd_per_hour": self.prices}, indent=1, sort_keys=True))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PriceTable:
        raw = json.loads(path.read_text())
        prices = raw.get("usd_per_hour") if isinstance(raw, dict) else None
        if not isinstance(prices, dict) or not all(isinstance(v, (int, float)) for v in prices.values()):
            raise ValueError(f"{path}: not a price table (want {{\"usd_per_hour\": {{\"on-demand/region/type\": 0.1}}}})")
        return cls({str(k): float(v) for k, v in prices.items()})


@dataclass(frozen=True)
class NodeKey:
    name: str
    instance_type: str
    region: str
    lifecycle: str


def node_key(name: str, region: str, labels: dict[str, str]) -> NodeKey:
    return NodeKey(name, labels.get(TYPE_LABEL, ""), labels.get(REGION_LABEL, "") or region,
                   lifecycle_of(labels.get(LIFECYCLE_LABEL, "")))


@dataclass
class Costs:
    nodes: list[tuple[NodeKey, float | None]] = field(default_factory=list)
    services: dict[str, float] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=lambda: {ON_DEMAND: 0.0, SPOT: 0.0})
    unpriced: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.totals.values())


def compute(nodes: Iterable[NodeKey], services: Iterable[tuple[str, str]], table: PriceTable) -> Costs:
    """`services`: (service name, node name) pairs."""
    out = Costs()
    hourly: dict[str, float | None] = {}
    for n in nodes:
        price = table.get(n.lifecycle, n.region, n.instance_type) if n.instance_type and n.region else None
        hourly[n.name] = price
        out.nodes.append((n, price))
        if price is None:
            out.unpriced.append(n.name)
        else:
            out.totals[n.lifecycle] += price
    by_node: dict[str, list[str]] = {}
    for svc, node in services:
        by_node.setdefault(node, []).append(svc)
    for node, svcs in by_node.items():
        price = hourly.get(node)
        if price is None:
            continue
        for s in svcs:
            out.services[s] = out.services.get(s, 0.0) + price / len(svcs)
    return out


def needed(nodes: Iterable[NodeKey]) -> set[tuple[str, str, str]]:
    """The (lifecycle, region, type) prices a table must hold for these nodes."""
    return {(n.lifecycle, n.region, n.instance_type) for n in nodes if n.instance_type and n.region}


def rows(c: Costs) -> list[dict[str, Any]]:
    out = [{"kind": "node", "name": n.name, "type": n.instance_type or "-", "region": n.region or "-",
            "lifecycle": n.lifecycle, "per_hour": price} for n, price in c.nodes]
    out += [{"kind": "service", "name": s, "type": "", "region": "", "lifecycle": "", "per_hour": round(v, 6)}
            for s, v in sorted(c.services.items())]
    out += [{"kind": "total", "name": lc, "type": "", "region": "", "lifecycle": lc, "per_hour": round(v, 6)}
            for lc, v in sorted(c.totals.items())]
    out.append({"kind": "total", "name": "all", "type": "", "region": "", "lifecycle": "",
                "per_hour": round(c.total, 6)})
    return out


__all__ = ["PriceTable", "NodeKey", "node_key", "Costs", "compute", "needed", "rows", "lifecycle_of"]
