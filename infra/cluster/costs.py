"""What a cluster costs to keep up, per hour and per day, for its profile and for the other one.

Counted: the coordinators (performance: three meshd replicas; cost-savings:
one), the warm instances (on-demand, in the region each is placed in), and
the network that makes the coordinators reachable:

- performance: a Network Load Balancer (its hour, an NLCU estimate) and a
  public IPv4 address in each of its three zones;
- cost-savings: one Elastic IP (the public IPv4 charge).

Every instance also pays for its own public IPv4 address, except the
cost-savings coordinator, whose address is the Elastic IP. Not counted:
EBS volumes, data transfer, and whatever jobs run on spot or on demand
later (`meshctl costs` shows those from the running mesh).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from infra import prices as p
from infra.cluster.spec import COST_SAVINGS, PERFORMANCE, REPLICAS, ClusterSpec

HOURS_PER_DAY = 24


@dataclass(frozen=True)
class Line:
    what: str
    count: int
    unit_hour: float | None  # None: AWS has no price for it

    @property
    def hour(self) -> float | None:
        return None if self.unit_hour is None else self.count * self.unit_hour


@dataclass
class Estimate:
    profile: str
    lines: list[Line] = field(default_factory=list)

    @property
    def hour(self) -> float | None:
        """The total, or None when a line has no price (never a total that silently leaves one out)."""
        parts = [ln.hour for ln in self.lines]
        return None if any(x is None for x in parts) else sum(parts)  # type: ignore[misc]

    @property
    def day(self) -> float | None:
        return None if self.hour is None else self.hour * HOURS_PER_DAY

    def unpriced(self) -> list[str]:
        return [ln.what for ln in self.lines if ln.unit_hour is None]


def estimate(spec: ClusterSpec, prices: Any, warm_regions: dict[str, str]) -> Estimate:
    """`warm_regions`: instance type → the region its warm instances go to (instances.warm_slots)."""
    region, coord = spec.main_region, spec.coordinator_instance_type
    n = REPLICAS[spec.profile]
    out = Estimate(spec.profile)
    out.lines.append(Line(f"coordinators: {n} × {coord} ({region})", n, prices.on_demand(coord, region)))
    warm = 0
    for t in spec.instance_types:
        if t.overprovisioned_ondemand_count:
            r = warm_regions.get(t.name, region)
            warm += t.overprovisioned_ondemand_count
            out.lines.append(Line(f"warm: {t.overprovisioned_ondemand_count} × {t.name} ({r})",
                                  t.overprovisioned_ondemand_count, prices.on_demand(t.name, r)))
    if spec.profile == PERFORMANCE:
        out.lines.append(Line("network load balancer (hour + 1 NLCU estimate)", 1,
                              p.NLB_HOUR + p.NLB_LCU_HOUR * p.NLB_LCU_ESTIMATE))
        out.lines.append(Line("public IPv4: load balancer (3 zones) and instances", 3 + n + warm,
                              p.PUBLIC_IPV4_HOUR))
    else:
        out.lines.append(Line("public IPv4: Elastic IP and warm instances", 1 + warm, p.PUBLIC_IPV4_HOUR))
    return out


def both(spec: ClusterSpec, prices: Any, warm_regions: dict[str, str]) -> list[Estimate]:
    """The spec's own profile first, then the other one."""
    other = COST_SAVINGS if spec.profile == PERFORMANCE else PERFORMANCE
    return [estimate(spec, prices, warm_regions),
            estimate(dataclasses.replace(spec, profile=other), prices, warm_regions)]


def money(x: float | None) -> str:
    return "unknown" if x is None else f"${x:,.2f}" if x >= 1 else f"${x:.4f}"


def rows(estimates: list[Estimate]) -> list[dict[str, Any]]:
    """A table: each line of the chosen profile, then one total per profile."""
    out = [{"profile": estimates[0].profile, "item": ln.what, "per_hour": money(ln.hour),
            "per_day": money(None if ln.hour is None else ln.hour * HOURS_PER_DAY)} for ln in estimates[0].lines]
    for i, e in enumerate(estimates):
        label = "total (this spec)" if i == 0 else "total if switched"
        out.append({"profile": e.profile, "item": label, "per_hour": money(e.hour), "per_day": money(e.day)})
    return out


def raw(estimates: list[Estimate]) -> list[dict[str, Any]]:
    return [{"profile": e.profile, "hour": e.hour, "day": e.day, "unpriced": e.unpriced(),
             "lines": [{"what": ln.what, "count": ln.count, "unit_hour": ln.unit_hour, "hour": ln.hour}
                       for ln in e.lines]} for e in estimates]


__all__ = ["Line", "Estimate", "estimate", "both", "rows", "raw", "money"]
