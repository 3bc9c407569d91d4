"""Apply: carry a plan out, region by region, with bounded parallelism.

Each region's changes run in order on one worker; up to
`max_parallel_regions` regions run at once. Phase 2 (peering) starts when
phase 1 is done everywhere, since it needs both ends' VPCs; phase 3
(removals) runs last. A region whose changes fail stops there and is
reported; the other regions go on. The ids a change needs (the VPC a subnet
goes in, the peering a route points at) come from a per-region context
filled from the observed state and from what earlier changes created.

Every create carries the mesh tags in the call itself, so a run killed at
any point leaves only findable resources, and the next plan completes it.

    result = apply(config, session_factory)          # plans, then applies
    result = apply_plan(plan, aws)                   # applies a plan you showed
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from infra.aws import Aws, AwsError, SessionFactory, aws_from_config
from infra.config import InfraConfig
from infra.desired import RegionSpec, main_group_name
from infra.destroy import DestroyResult, Leftover, purge
from infra.plan import Change, Plan, make_plan
from infra.regions import Selection, enable_requested, select_regions
from infra.profiles import converge
from infra.state import NAME_TAG, RegionState, subnet_name, tag_spec, tags, vpc_name
from meshcore.errors import MeshError, PermissionDenied, Unauthenticated

# Cross-region peering requests take a few seconds to reach the accepter.
ACCEPT_ATTEMPTS = 10
ACCEPT_WAIT_S = 2.0


@dataclass
class ApplyResult:
    plan: Plan
    done: list[Change] = field(default_factory=list)
    enabling: dict[str, str] = field(default_factory=dict)  # opt-in region → status asked of AWS
    failed: dict[str, str] = field(default_factory=dict)  # region → error
    leftovers: list[Leftover] = field(default_factory=list)
    calls: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.leftovers


class ApplyProgress:
    """Hooks for a progress display of a long operation; the default does nothing.

    An apply calls start/step/finish per region (steps may come from several
    regions' threads at once) and `waiting` before it sleeps on AWS. Longer
    operations built on it (cluster create, edit, delete) also name their
    stages with `phase`, report work outside a plan with `note`, whose
    signature is infra.destroy's `Progress` callable, and state what stays
    true with `fact`."""

    def start(self, region: str, total: int) -> None: ...

    def step(self, region: str, change: Change) -> None: ...

    def finish(self, region: str, error: str | None) -> None: ...

    def phase(self, what: str) -> None: ...

    def waiting(self, region: str, what: str) -> None: ...

    def note(self, region: str, text: str) -> None: ...

    def fact(self, text: str) -> None:
        """A line worth keeping on screen (what it will cost), unlike a passing note."""


def apply(config: InfraConfig, session_factory: SessionFactory | None = None, progress: ApplyProgress | None = None,
          *, aws: Aws | None = None, endpoint_url: str | None = None,
          sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
          selection: Selection | None = None) -> ApplyResult:
    """Plan against what exists, then apply. Give either a session factory or a ready `aws`.

    `selection` may be passed to skip region selection when the caller made one for this config."""
    if aws is None:
        kw = {} if session_factory is None else {"session_factory": session_factory}
        aws = aws_from_config(config, endpoint_url=endpoint_url, sleep=sleep, **kw)
    t0, calls0 = clock(), aws.calls
    if selection is None:
        selection = select_regions(config, aws)
    enabling = enable_requested(config, aws, selection)
    plan = make_plan(config, aws, selection=selection)
    result = apply_plan(plan, aws, progress, sleep=sleep, clock=clock)
    result.enabling = enabling
    result.calls = aws.calls - calls0
    result.seconds = clock() - t0
    return result


def initial_context(spec: RegionSpec | None, st: RegionState) -> dict[str, Any]:
    """The ids the region's changes refer to, as found (same choices as the plan makes)."""
    ctx: dict[str, Any] = {}
    vpc = st.vpc_id()
    ctx["vpc"] = vpc
    gws = [g for g in st.gateways if vpc in g.vpc_ids]
    ctx["igw"] = gws[0].id if gws else None
    tables = st.tables_in(vpc)
    ctx["rt"] = tables[0].id if tables else None
    for name in (spec.groups if spec is not None else {}):
        groups = st.groups_in(vpc, name)
        ctx[f"sg:{name}"] = groups[0].id if groups else None
    for s in st.subnets:
        if s.vpc_id == vpc and spec is not None and spec.subnets.get(s.zone) == s.cidr:
            ctx[f"subnet:{s.zone}"] = s.id
    return ctx


class _Executor:
    def __init__(self, plan: Plan, aws: Aws, progress: ApplyProgress, result: ApplyResult,
                 sleep: Callable[[float], None]) -> None:
        self.plan, self.aws, self.progress, self.result, self.sleep = plan, aws, progress, result, sleep
        self.mesh = plan.config.name
        self.main = plan.config.main_region
        self.ctx = {r: initial_context(plan.desired.get(r), st) for r, st in plan.states.items()}
        for r in plan.desired:
            self.ctx.setdefault(r, {})
        hub_vpc = self.ctx.get(self.main, {}).get("vpc")
        for r, st in plan.states.items():
            good = [p for p in st.peerings if p.requester_vpc == self.ctx[r].get("vpc")
                    and p.accepter_vpc == hub_vpc and p.accepter_region == self.main]
            self.ctx[r]["pcx"] = good[0].id if good else None

    def run_region(self, region: str, changes: list[Change]) -> None:
        if not changes:
            return
        self.progress.start(region, len(changes))
        error = None
        try:
            pending_rules: list[Any] = []  # (group, rule)
            for c in changes:
                if c.kind == "authorize":
                    pending_rules.append((c.arg("group"), c.arg("rule")))  # one call per group
                else:
                    self._flush(region, pending_rules)
                    getattr(self, "_" + c.kind)(region, c)
                self.result.done.append(c)
                self.progress.step(region, c)
            self._flush(region, pending_rules)
        except (PermissionDenied, Unauthenticated):
            raise  # the same for every region: stop the whole apply with one clear line
        except MeshError as e:
            error = str(e)
            self.result.failed[region] = error
        finally:
            self.progress.finish(region, error)

    def _flush(self, region: str, rules: list[Any]) -> None:
        desc = f"mesh {self.mesh}"
        for group in sorted({g for g, _ in rules}):
            self.call(region, "AuthorizeSecurityGroupIngress", GroupId=self.ctx[region][f"sg:{group}"],
                      IpPermissions=[r.permission(desc) for g, r in rules if g == group])
        rules.clear()

    def call(self, region: str, op: str, service: str = "ec2", **params: Any) -> dict[str, Any]:
        return self.aws.call(service, region, op, **params)

    # phase 1
    def _create_vpc(self, r: str, c: Change) -> None:
        out = self.call(r, "CreateVpc", CidrBlock=c.arg("cidr"),
                        TagSpecifications=tag_spec("vpc", self.mesh, vpc_name(self.mesh)))
        self.ctx[r]["vpc"] = out["Vpc"]["VpcId"]

    def _create_subnet(self, r: str, c: Change) -> None:
        zone = c.arg("zone")
        out = self.call(r, "CreateSubnet", VpcId=self.ctx[r]["vpc"], CidrBlock=c.arg("cidr"), AvailabilityZone=zone,
                        TagSpecifications=tag_spec("subnet", self.mesh, subnet_name(self.mesh, zone), zone=zone))
        self.ctx[r][f"subnet:{zone}"] = out["Subnet"]["SubnetId"]
        if self.plan.desired[r].public_ips:  # not settable in CreateSubnet itself
            self._subnet_public_ips(r, c)

    def _subnet_public_ips(self, r: str, c: Change) -> None:
        self.call(r, "ModifySubnetAttribute", SubnetId=self.ctx[r][f"subnet:{c.arg('zone')}"],
                  MapPublicIpOnLaunch={"Value": self.plan.desired[r].public_ips})

    def _delete_subnet(self, r: str, c: Change) -> None:
        self.call(r, "DeleteSubnet", SubnetId=c.arg("id"))

    def _create_gateway(self, r: str, c: Change) -> None:
        out = self.call(r, "CreateInternetGateway", TagSpecifications=tag_spec("internet-gateway", self.mesh))
        gw = out["InternetGateway"]["InternetGatewayId"]
        self.call(r, "AttachInternetGateway", InternetGatewayId=gw, VpcId=self.ctx[r]["vpc"])
        self.ctx[r]["igw"] = gw

    def _attach_gateway(self, r: str, c: Change) -> None:
        self.call(r, "AttachInternetGateway", InternetGatewayId=c.arg("id"), VpcId=self.ctx[r]["vpc"])
        self.ctx[r]["igw"] = c.arg("id")

    def _delete_gateway(self, r: str, c: Change) -> None:
        for v in c.arg("vpcs"):
            self.call(r, "DetachInternetGateway", InternetGatewayId=c.arg("id"), VpcId=v)
        self.call(r, "DeleteInternetGateway", InternetGatewayId=c.arg("id"))

    def _create_route_table(self, r: str, c: Change) -> None:
        out = self.call(r, "CreateRouteTable", VpcId=self.ctx[r]["vpc"],
                        TagSpecifications=tag_spec("route-table", self.mesh))
        self.ctx[r]["rt"] = out["RouteTable"]["RouteTableId"]

    def _delete_route_table(self, r: str, c: Change) -> None:
        for a in c.arg("associations"):
            self.call(r, "DisassociateRouteTable", AssociationId=a)
        self.call(r, "DeleteRouteTable", RouteTableId=c.arg("id"))

    def _associate(self, r: str, c: Change) -> None:
        self.call(r, "AssociateRouteTable", RouteTableId=self.ctx[r]["rt"],
                  SubnetId=self.ctx[r][f"subnet:{c.arg('zone')}"])

    def _create_route(self, r: str, c: Change) -> None:
        self.call(r, "CreateRoute", RouteTableId=self.ctx[r]["rt"], DestinationCidrBlock=c.arg("dest"),
                  GatewayId=self.ctx[r]["igw"])

    def _replace_route(self, r: str, c: Change) -> None:
        self.call(r, "ReplaceRoute", RouteTableId=self.ctx[r]["rt"], DestinationCidrBlock=c.arg("dest"),
                  GatewayId=self.ctx[r]["igw"])

    def _delete_route(self, r: str, c: Change) -> None:
        self.call(r, "DeleteRoute", RouteTableId=self.ctx[r]["rt"], DestinationCidrBlock=c.arg("dest"))

    def _create_group(self, r: str, c: Change) -> None:
        group = c.arg("group")
        what = "main node: meshd's ports, " if group == main_group_name(self.mesh) else ""
        out = self.call(r, "CreateSecurityGroup", GroupName=group, VpcId=self.ctx[r]["vpc"],
                        Description=f"mesh {self.mesh}: {what}WireGuard, SSH from configured CIDRs, peered VPCs",
                        TagSpecifications=tag_spec("security-group", self.mesh, group))
        self.ctx[r][f"sg:{group}"] = out["GroupId"]

    def _name_tag(self, r: str, c: Change) -> None:
        self.call(r, "CreateTags", Resources=[c.arg("id")], Tags=[{"Key": NAME_TAG, "Value": c.arg("name")}])

    def _put_profile(self, r: str, c: Change) -> None:
        converge(self.aws, self.mesh, c.arg("name"), self.plan.profiles[c.arg("name")])

    def _delete_group(self, r: str, c: Change) -> None:
        self.call(r, "DeleteSecurityGroup", GroupId=c.arg("id"))

    def _revoke(self, r: str, c: Change) -> None:
        rule = c.arg("rule")
        perm = rule.permission("")
        perm["IpRanges"] = [{"CidrIp": rule.cidr}]
        self.call(r, "RevokeSecurityGroupIngress", GroupId=self.ctx[r][f"sg:{c.arg('group')}"], IpPermissions=[perm])

    def _put_param(self, r: str, c: Change) -> None:
        p = self.plan.desired[r].params[c.arg("name")]
        kw: dict[str, Any] = {"Name": p.name, "Value": p.value, "Type": p.type, "Description": p.description}
        if c.op == "create":
            kw["Tags"] = tags(self.mesh)
        else:
            kw["Overwrite"] = True  # AWS refuses Tags together with Overwrite
        self.call(r, "PutParameter", service="ssm", **kw)

    def _delete_param(self, r: str, c: Change) -> None:
        self.call(r, "DeleteParameter", service="ssm", Name=c.arg("name"))

    # phase 2
    def _create_peering(self, r: str, c: Change) -> None:
        out = self.call(r, "CreateVpcPeeringConnection", VpcId=self.ctx[r]["vpc"], PeerVpcId=self.ctx[self.main]["vpc"],
                        PeerRegion=self.main, TagSpecifications=tag_spec("vpc-peering-connection", self.mesh))
        pcx = out["VpcPeeringConnection"]["VpcPeeringConnectionId"]
        self.ctx[r]["pcx"] = pcx
        self._accept(pcx)

    def _accept_peering(self, r: str, c: Change) -> None:
        self.ctx[r]["pcx"] = c.arg("id")
        self._accept(c.arg("id"))

    def _accept(self, pcx: str) -> None:
        for attempt in range(ACCEPT_ATTEMPTS):
            try:
                self.call(self.main, "AcceptVpcPeeringConnection", VpcPeeringConnectionId=pcx)
                break
            except AwsError as e:
                # The request has not reached the accepter's region yet.
                if e.aws_code not in ("InvalidVpcPeeringConnectionID.NotFound", "InvalidStateTransition",
                                      "OperationNotPermitted") or attempt == ACCEPT_ATTEMPTS - 1:
                    raise
                self.progress.waiting(self.main, f"peering {pcx} to reach {self.main}")
                self.sleep(ACCEPT_WAIT_S)
        # Tags do not cross regions: tag the accepter's side so it is findable there too.
        self.call(self.main, "CreateTags", Resources=[pcx], Tags=tags(self.mesh))

    def _delete_peering(self, r: str, c: Change) -> None:
        self.call(r, "DeleteVpcPeeringConnection", VpcPeeringConnectionId=c.arg("id"))

    def _peer_route(self, r: str, c: Change) -> None:
        where = c.arg("hub") or r
        op = "CreateRoute" if c.op == "create" else "ReplaceRoute"
        self.call(where, op, RouteTableId=self.ctx[where]["rt"], DestinationCidrBlock=c.arg("dest"),
                  VpcPeeringConnectionId=self.ctx[r]["pcx"])

    # phase 3
    def _purge(self, r: str, c: Change) -> None:
        res = DestroyResult()
        purge(self.aws, self.mesh, r, res, vpc=c.arg("vpc"))
        self.result.leftovers.extend(res.leftovers)


def apply_plan(plan: Plan, aws: Aws, progress: ApplyProgress | None = None,
               sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic) -> ApplyResult:
    """Apply `plan` as it stands (callers that showed it first apply exactly what was shown)."""
    t0, calls0 = clock(), aws.calls
    result = ApplyResult(plan=plan)
    ex = _Executor(plan, aws, progress or ApplyProgress(), result, sleep)
    parallel = plan.config.max_parallel_regions
    regions = sorted({c.region for c in plan.changes})
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for phase in (1, 2, 3):
            todo = [(r, plan.for_region(r, phase)) for r in regions if r not in result.failed]
            if phase == 2 and plan.config.main_region in result.failed:
                for r, ch in todo:
                    if ch:
                        result.failed[r] = f"not peered: the main region {plan.config.main_region} failed"
                continue
            list(pool.map(lambda rc: ex.run_region(*rc), [t for t in todo if t[1]]))
    result.calls = aws.calls - calls0
    result.seconds = clock() - t0
    return result
