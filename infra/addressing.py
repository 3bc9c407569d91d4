"""The address plan: one /16 per region in 10.0.0.0/8, one /19 per availability zone.

The plan is an append-only table that starts from LMRun's allocation, so an
existing LMRun network can be adopted without renumbering:

- `REGION_TABLE` rows never move and are never reused; a region AWS launches
  later is appended at the bottom (rows after LMRun's 30 were appended so);
- the main region always gets 10.4.0.0/16, whatever region it is (its own row
  stays reserved, unused), so the main node is 10.4.0.4;
- 10.0.0.0/16 is skipped (AWS restricts adding that block), 10.42/16 and
  10.43/16 stay free for K3s' pod and service ranges;
- a region in no row gets the lowest /16 that no row, reservation or
  existing VPC holds;
- what is deployed wins: a region whose VPC exists keeps that VPC's /16, so
  nothing existing ever moves even if the table or the main region changes.

Each /16 is cut into eight /19s; the zone with letter suffix `a` gets the
first, `b` the second, and so on, so a zone added later never shifts another.

Nothing here overlaps the mesh overlay pool (`OVERLAY_POOL`, addresses for
nodes outside AWS) or Docker's default bridge: both lie outside 10.0.0.0/8.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshcore.errors import ConfigError, FailedPrecondition

Net = ipaddress.IPv4Network

PLAN_SPACE = ipaddress.ip_network("10.0.0.0/8")
MAIN_CIDR = ipaddress.ip_network("10.4.0.0/16")
# Overlay addresses for nodes outside the peered AWS network (other clouds,
# NAT'd machines). Shared with the coordinator's address allocator.
OVERLAY_POOL = ipaddress.ip_network("100.96.0.0/12")
K3S_CLUSTER_CIDR = ipaddress.ip_network("10.42.0.0/16")
K3S_SERVICE_CIDR = ipaddress.ip_network("10.43.0.0/16")
DOCKER_BRIDGE = ipaddress.ip_network("172.17.0.0/16")
# Never handed to a region.
RESERVED = (ipaddress.ip_network("10.0.0.0/16"), MAIN_CIDR, K3S_CLUSTER_CIDR, K3S_SERVICE_CIDR)
# Nothing in the plan may overlap these.
AVOID = (K3S_CLUSTER_CIDR, K3S_SERVICE_CIDR, DOCKER_BRIDGE, OVERLAY_POOL)

SUBNET_PREFIX = 19
MAX_ZONES = 2 ** (SUBNET_PREFIX - 16)

# Append-only. LMRun's cidr_blocks.py (2025-02), then regions launched since.
REGION_TABLE: tuple[tuple[str, str], ...] = (
    ("af-south-1", "10.1.0.0/16"),
    ("ap-east-1", "10.2.0.0/16"),
    ("ap-northeast-1", "10.3.0.0/16"),
    ("ap-northeast-2", "10.5.0.0/16"),
    ("ap-northeast-3", "10.6.0.0/16"),
    ("ap-south-1", "10.7.0.0/16"),
    ("ap-south-2", "10.8.0.0/16"),
    ("ap-southeast-1", "10.9.0.0/16"),
    ("ap-southeast-2", "10.10.0.0/16"),
    ("ap-southeast-3", "10.11.0.0/16"),
    ("ap-southeast-4", "10.12.0.0/16"),
    ("ap-southeast-5", "10.13.0.0/16"),
    ("ca-central-1", "10.14.0.0/16"),
    ("ca-west-1", "10.15.0.0/16"),
    ("eu-central-1", "10.16.0.0/16"),
    ("eu-central-2", "10.17.0.0/16"),
    ("eu-north-1", "10.18.0.0/16"),
    ("eu-south-1", "10.19.0.0/16"),
    ("eu-south-2", "10.20.0.0/16"),
    ("eu-west-1", "10.21.0.0/16"),
    ("eu-west-2", "10.22.0.0/16"),
    ("eu-west-3", "10.23.0.0/16"),
    ("il-central-1", "10.24.0.0/16"),
    ("me-central-1", "10.25.0.0/16"),
    ("me-south-1", "10.26.0.0/16"),
    ("sa-east-1", "10.27.0.0/16"),
    ("us-east-1", "10.28.0.0/16"),
    ("us-east-2", "10.29.0.0/16"),
    ("us-west-1", "10.30.0.0/16"),
    ("us-west-2", "10.31.0.0/16"),
    # appended after LMRun's table
    ("ap-east-2", "10.32.0.0/16"),
    ("ap-southeast-6", "10.33.0.0/16"),
    ("ap-southeast-7", "10.34.0.0/16"),
    ("mx-central-1", "10.35.0.0/16"),
)


def _table() -> dict[str, Net]:
    return {r: ipaddress.ip_network(c) for r, c in REGION_TABLE}


@dataclass(frozen=True)
class AddressPlan:
    """Region → /16 for one main region and a set of regions."""

    main_region: str
    cidrs: Mapping[str, Net]

    def cidr(self, region: str) -> Net:
        return self.cidrs[region]

    def subnet(self, region: str, zone: str) -> Net:
        return subnet_for_zone(self.cidrs[region], zone)


def allocate(main_region: str, regions: Iterable[str],
             existing: Mapping[str, str | Net] | None = None,
             table: Mapping[str, Net] | None = None) -> AddressPlan:
    """Give every region in `regions` (and the main region) its /16.

    `existing` maps regions to the CIDR of their deployed VPC: those win.
    Raises FailedPrecondition if deployed VPCs overlap each other or a reserved range.
    """
    table = dict(_table() if table is None else table)
    wanted = sorted(set(regions) | {main_region})
    out: dict[str, Net] = {}
    used: dict[Net, str] = {}
    for region, cidr in sorted((existing or {}).items()):
        net = ipaddress.ip_network(cidr)
        for other_net, other in used.items():
            if net.overlaps(other_net):
                raise FailedPrecondition(
                    f"deployed VPCs of {other} ({other_net}) and {region} ({net}) overlap: "
                    "each region needs its own /16")
        if region != main_region and net.overlaps(MAIN_CIDR):
            raise FailedPrecondition(
                f"deployed VPC of {region} uses {net}, which is kept for the main region ({MAIN_CIDR})")
        for avoid in AVOID:
            if net.overlaps(avoid):
                raise FailedPrecondition(f"deployed VPC of {region} uses {net}, which overlaps {avoid} (kept free)")
        used[net] = region
        if region in wanted:
            out[region] = net
    if main_region not in out:
        if MAIN_CIDR in used:
            raise FailedPrecondition(f"{MAIN_CIDR} is kept for the main region {main_region} "
                                     f"but {used[MAIN_CIDR]}'s deployed VPC holds it")
        out[main_region] = MAIN_CIDR
        used[MAIN_CIDR] = main_region
    taken = set(used) | set(RESERVED) | set(table.values())
    for region in wanted:
        if region in out:
            continue
        net = table.get(region)
        if net is not None and used.get(net, region) == region:
            out[region] = net
        else:
            net = _lowest_free(taken)
            taken.add(net)
            out[region] = net
        used[net] = region
    return AddressPlan(main_region=main_region, cidrs={r: out[r] for r in wanted})


def _lowest_free(taken: set[Net]) -> Net:
    for second in range(1, 256):
        net = ipaddress.ip_network(f"10.{second}.0.0/16")
        if net not in taken and not any(net.overlaps(a) for a in AVOID):
            return net
    raise FailedPrecondition("10.0.0.0/8 has no free /16 left for another region")


def zone_index(zone: str) -> int:
    """Index of an availability zone by its letter suffix: us-east-1a → 0."""
    letter = zone[-1:]
    if not ("a" <= letter <= "z") or not zone[-2:-1].isdigit():
        raise ConfigError(f"zone {zone!r} has no letter suffix: subnets are placed by the zone's letter")
    i = ord(letter) - ord("a")
    if i >= MAX_ZONES:
        raise FailedPrecondition(f"zone {zone!r} is beyond the {MAX_ZONES} /19 subnets a region's /16 holds")
    return i


def subnet_for_zone(region_cidr: Net, zone: str) -> Net:
    return list(region_cidr.subnets(new_prefix=SUBNET_PREFIX))[zone_index(zone)]


def main_node_address(plan: AddressPlan) -> str:
    """The first usable address in the main region's first subnet (AWS keeps .0-.3)."""
    return str(plan.cidr(plan.main_region).network_address + 4)
