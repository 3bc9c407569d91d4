"""The network we want, as plain data: one `RegionSpec` per selected region.

Per region: a VPC with the region's /16, a /19 subnet per availability zone,
an internet gateway, one route table (default route to the gateway), one
security group, and the join parameters. Hub and spoke: every regional VPC
peers with the main region's VPC, with routes both ways.

Security group rules, all inbound:
- WireGuard (UDP `wireguard_port`) from `wireguard_cidrs`;
- SSH (TCP 22) from `ssh_cidrs` only (none by default);
- all traffic from the region's own /16 (nodes in one VPC talk directly);
- regional groups: all traffic from the main region's /16; the main region's
  group: all traffic from every regional /16 (peering is hub and spoke).

With `sky` on, the main region has a second group, `mesh-<name>-main`, for
the main node alone (SkyPilot gives a cluster one group, by name): the same
rules plus meshd's ports (TCP 7443-7444) from `coordinator_cidrs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from infra.addressing import AddressPlan
from infra.config import InfraConfig
from infra.ssm import Param
from meshcore.defaults import JOIN_PORT, MESHD_PORT


def group_name(mesh: str) -> str:
    return f"mesh-{mesh}"


def main_group_name(mesh: str) -> str:
    return f"mesh-{mesh}-main"


@dataclass(frozen=True, order=True)
class Rule:
    """One inbound rule: protocol '-1' (all), 'tcp' or 'udp'; ports None for all."""

    protocol: str
    from_port: int | None
    to_port: int | None
    cidr: str

    def label(self) -> str:
        what = "all" if self.protocol == "-1" else f"{self.protocol} {self.from_port}" + (
            "" if self.from_port == self.to_port else f"-{self.to_port}")
        return f"{what} from {self.cidr}"

    def permission(self, description: str) -> dict:
        p: dict = {"IpProtocol": self.protocol,
                   "IpRanges": [{"CidrIp": self.cidr, "Description": description}]}
        if self.protocol != "-1":
            p["FromPort"] = self.from_port
            p["ToPort"] = self.to_port
        return p


@dataclass(frozen=True)
class RegionSpec:
    region: str
    is_main: bool
    cidr: str
    subnets: dict[str, str]  # zone → /19
    rules: frozenset[Rule]
    # main region's /16 (regional) or nothing (main)
    hub_cidr: str | None
    # regional /16s reached through peering (main region only)
    spoke_cidrs: dict[str, str] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    public_ips: bool = True
    # every group of the region: GroupName → its rules (`rules` is the mesh group's)
    groups: dict[str, frozenset[Rule]] = field(default_factory=dict)


def build_desired(cfg: InfraConfig, plan: AddressPlan, zones: dict[str, list[str]],
                  params: dict[str, Param]) -> dict[str, RegionSpec]:
    """RegionSpecs for every region in `plan`, given each region's availability zones."""
    main = plan.main_region
    main_cidr = str(plan.cidr(main))
    spokes = {r: str(c) for r, c in plan.cidrs.items() if r != main}
    out: dict[str, RegionSpec] = {}
    for region, net in plan.cidrs.items():
        cidr = str(net)
        rules = {Rule("udp", cfg.wireguard_port, cfg.wireguard_port, c) for c in cfg.wireguard_cidrs}
        rules |= {Rule("tcp", 22, 22, c) for c in cfg.ssh_cidrs}
        rules.add(Rule("-1", None, None, cidr))
        if region == main:
            rules |= {Rule("-1", None, None, c) for c in spokes.values()}
        else:
            rules.add(Rule("-1", None, None, main_cidr))
        groups = {group_name(cfg.name): frozenset(rules)}
        if region == main and cfg.sky:
            lo, hi = sorted((MESHD_PORT, JOIN_PORT))
            groups[main_group_name(cfg.name)] = frozenset(rules | {Rule("tcp", lo, hi, c)
                                                                   for c in cfg.coordinator_cidrs})
        out[region] = RegionSpec(
            region=region, is_main=region == main, cidr=cidr,
            subnets={z: str(plan.subnet(region, z)) for z in sorted(zones.get(region, []))},
            rules=frozenset(rules),
            hub_cidr=None if region == main else main_cidr,
            spoke_cidrs=spokes if region == main else {},
            params=dict(params), public_ips=cfg.public_ips, groups=groups)
    return out
