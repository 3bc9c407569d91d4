"""Destroy: remove everything tagged for the mesh, in dependency order, in every region.

Regions are scanned, not taken from the config: a region dropped from the
config, or a resource left by a run that died (a gateway created but never
attached, a second VPC), is found by its tags all the same. The scan costs
three calls per region with nothing in it (VPCs, gateways, parameters).

Order: peerings first (in every region, since a VPC with a live peering
cannot go), then per region: join parameters, route tables (after their
subnet associations), internet gateways (after detaching), security groups,
subnets, VPCs. A resource AWS refuses to delete (an instance still running
in a subnet, say) does not stop the rest: it is reported as left over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from infra.aws import Aws
from infra.config import InfraConfig
from infra.profiles import delete_profiles
from infra.regions import ENABLED, list_regions
from infra.ssm import prefix
from infra.state import RegionState, has_leftovers, read_region
from meshcore.errors import MeshError, PermissionDenied, Unauthenticated


@dataclass(frozen=True)
class Leftover:
    region: str
    resource: str
    error: str


@dataclass
class DestroyResult:
    deleted: list[tuple[str, str]] = field(default_factory=list)  # (region, resource)
    leftovers: list[Leftover] = field(default_factory=list)
    regions_scanned: int = 0
    calls: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.leftovers


Progress = Callable[[str, str], None]


def scan(aws: Aws, mesh: str, region: str) -> RegionState:
    """Everything of `mesh` in `region`; cheap when there is nothing."""
    if has_leftovers(aws, mesh, region):
        return read_region(aws, mesh, region, zones=False)
    st = RegionState(region=region)
    for prm in aws.paginate("ssm", region, "DescribeParameters", "Parameters",
                            ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [prefix(mesh)]}]):
        st.params[prm["Name"]] = prm.get("Description", "")
    return st


class _Deleter:
    def __init__(self, aws: Aws, region: str, result: DestroyResult, progress: Progress | None) -> None:
        self.aws, self.region, self.result, self.progress = aws, region, result, progress

    def __call__(self, resource: str, service: str, operation: str, **params: object) -> bool:
        try:
            self.aws.call(service, self.region, operation, **params)
        except MeshError as e:
            if getattr(e, "aws_code", "").endswith("NotFound"):
                return True  # already gone: the goal is reached
            self.result.leftovers.append(Leftover(self.region, resource, str(e)))
            return False
        self.result.deleted.append((self.region, resource))
        if self.progress:
            self.progress(self.region, f"deleted {resource}")
        return True


def delete_peerings(aws: Aws, st: RegionState, result: DestroyResult, progress: Progress | None = None,
                    vpc: str | None = None) -> None:
    delete = _Deleter(aws, st.region, result, progress)
    for p in st.peerings:
        if vpc is None or p.requester_vpc == vpc:
            delete(f"peering {p.id}", "ec2", "DeleteVpcPeeringConnection", VpcPeeringConnectionId=p.id)


def delete_region(aws: Aws, st: RegionState, result: DestroyResult, progress: Progress | None = None,
                  vpc: str | None = None, params: bool = True) -> None:
    """Delete what `st` holds (only inside `vpc` if given), peerings excluded, in dependency order."""
    delete = _Deleter(aws, st.region, result, progress)
    mine = (lambda v: True) if vpc is None else (lambda v: v == vpc)
    if params:
        for name in sorted(st.params):
            delete(f"parameter {name}", "ssm", "DeleteParameter", Name=name)
    for t in st.route_tables:
        if not mine(t.vpc_id):
            continue
        for assoc in t.associations.values():
            delete(f"association {assoc}", "ec2", "DisassociateRouteTable", AssociationId=assoc)
        delete(f"route table {t.id}", "ec2", "DeleteRouteTable", RouteTableId=t.id)
    for g in st.gateways:
        attached = [v for v in g.vpc_ids if mine(v)]
        if vpc is not None and not attached:
            continue
        for v in g.vpc_ids:
            delete(f"attachment {g.id} ↔ {v}", "ec2", "DetachInternetGateway", InternetGatewayId=g.id, VpcId=v)
        delete(f"internet gateway {g.id}", "ec2", "DeleteInternetGateway", InternetGatewayId=g.id)
    for g in st.groups:
        if mine(g.vpc_id):
            delete(f"security group {g.id}", "ec2", "DeleteSecurityGroup", GroupId=g.id)
    for s in st.subnets:
        if mine(s.vpc_id):
            delete(f"subnet {s.id}", "ec2", "DeleteSubnet", SubnetId=s.id)
    for v in sorted(st.vpcs):
        if mine(v):
            delete(f"vpc {v}", "ec2", "DeleteVpc", VpcId=v)


def purge(aws: Aws, mesh: str, region: str, result: DestroyResult, vpc: str | None = None,
          progress: Progress | None = None) -> None:
    """Remove one region's resources (or one VPC's), peerings first. Used by apply for removals."""
    st = read_region(aws, mesh, region, zones=False)
    delete_peerings(aws, st, result, progress, vpc)
    delete_region(aws, st, result, progress, vpc, params=vpc is None)


def destroy(cfg: InfraConfig, aws: Aws, progress: Progress | None = None,
            clock: Callable[[], float] = time.monotonic) -> DestroyResult:
    """Remove everything tagged for `cfg.name` in every enabled region of the account."""
    t0, calls0 = clock(), aws.calls
    result = DestroyResult()
    statuses = list_regions(aws)
    regions = sorted(r for r, s in statuses.items() if s in ENABLED)  # nothing can exist in the others
    with ThreadPoolExecutor(max_workers=cfg.max_parallel_regions) as pool:
        states = [st for st in pool.map(lambda r: _scan_or_report(aws, cfg.name, r, result), regions)
                  if st is not None]
        result.regions_scanned = len(regions)
        list(pool.map(lambda st: delete_peerings(aws, st, result, progress), states))
        list(pool.map(lambda st: delete_region(aws, st, result, progress), states))
    if cfg.sky:
        for resource, error in delete_profiles(aws, cfg.name):
            if error is None:
                result.deleted.append(("iam", resource))
            else:
                result.leftovers.append(Leftover("iam", resource, error))
    result.calls = aws.calls - calls0
    result.seconds = clock() - t0
    return result


def _scan_or_report(aws: Aws, mesh: str, region: str, result: DestroyResult) -> RegionState | None:
    try:
        return scan(aws, mesh, region)
    except MeshError as e:
        if isinstance(e, (PermissionDenied, Unauthenticated)):
            raise  # the same for every region: one clear error beats thirty leftovers
        result.leftovers.append(Leftover(region, "(region not scanned)", str(e)))
        return None
