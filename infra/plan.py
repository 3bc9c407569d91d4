"""The plan: what apply would change, and why, as ordered `Change`s.

`make_plan` selects regions, reads what exists (by tags), allocates
addresses (deployed VPCs keep theirs) and diffs desired against observed.
Changes run in three phases:

1. per region, independent of other regions: VPC, subnets, gateway, route
   table and its associations, default route, security group rules, join
   parameters;
2. peering: each regional VPC requests a peering with the main VPC, the
   main region accepts, routes are added both ways;
3. removals: regions no longer selected, and VPCs left twice by an
   interrupted run, are purged with everything tagged inside them.

A change in a region that already has its VPC is drift (something was
deleted or edited outside meshctl) and its reason says so. An empty plan
means a second apply would do nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from infra.addressing import AddressPlan, allocate
from infra.aws import Aws
from infra.config import InfraConfig
from infra.desired import RegionSpec, build_desired
from infra.regions import Selection, select_regions
from infra.ssm import desired_params
from meshcore.jointoken import PUBLISHED_BY_MESHD
from infra.profiles import ProfileState, check_names, documents, read_profiles
from infra.state import RegionState, has_leftovers, read_region, subnet_name, vpc_name

PHASES = {1: "network", 2: "peering", 3: "removal"}


@dataclass(frozen=True)
class Change:
    region: str
    phase: int
    kind: str  # what the executor does, e.g. "create_vpc"
    op: str  # create | update | delete
    resource: str  # for people: "subnet us-east-1a 10.4.0.0/19"
    reason: str
    args: tuple[tuple[str, Any], ...] = ()

    def arg(self, key: str) -> Any:
        return dict(self.args)[key]


def change(region: str, phase: int, kind: str, op: str, resource: str, reason: str, **args: Any) -> Change:
    return Change(region, phase, kind, op, resource, reason, tuple(sorted(args.items())))


@dataclass
class Plan:
    config: InfraConfig
    selection: Selection
    addresses: AddressPlan
    desired: dict[str, RegionSpec]
    states: dict[str, RegionState]
    changes: list[Change] = field(default_factory=list)
    profiles: dict[str, ProfileState] = field(default_factory=dict)  # instance profile name → what exists

    @property
    def empty(self) -> bool:
        return not self.changes

    def for_region(self, region: str, phase: int | None = None) -> list[Change]:
        return [c for c in self.changes if c.region == region and (phase is None or c.phase == phase)]

    def rows(self) -> list[dict[str, str]]:
        return [{"region": c.region, "op": c.op, "resource": c.resource, "reason": c.reason,
                 "phase": PHASES[c.phase]} for c in self.changes]


Progress = Callable[[str, str], None]


def read_states(cfg: InfraConfig, aws: Aws, selection: Selection,
                progress: Progress | None = None) -> dict[str, RegionState]:
    """Full state of selected regions; other enabled regions only if the probe finds leftovers."""
    selected = set(selection.selected)

    def one(region: str) -> tuple[str, RegionState | None]:
        if region in selected:
            st = read_region(aws, cfg.name, region)
        elif has_leftovers(aws, cfg.name, region):
            st = read_region(aws, cfg.name, region, zones=False)
            if st.empty:  # the tags outlived their resources (DescribeTags lags deletions)
                st = None
        else:
            st = None
        if progress:
            progress(region, "read")
        return region, st

    regions = sorted(set(selection.enabled) | selected)
    with ThreadPoolExecutor(max_workers=cfg.max_parallel_regions) as pool:
        return {r: st for r, st in pool.map(one, regions) if st is not None}


def make_plan(cfg: InfraConfig, aws: Aws, progress: Progress | None = None,
              selection: Selection | None = None) -> Plan:
    """Select regions (unless a selection made for this config is given), read, allocate, diff."""
    if selection is None:
        selection = select_regions(cfg, aws)
    states = read_states(cfg, aws, selection, progress)
    existing = {r: st.vpcs[st.vpc_id()] for r, st in states.items()
                if st.vpc_id() is not None and r in selection.selected}
    addresses = allocate(cfg.main_region, selection.selected, existing)
    zones = {r: states[r].zones for r in selection.selected}
    desired = build_desired(cfg, addresses, zones, desired_params(cfg))
    plan = Plan(cfg, selection, addresses, desired, states)
    for region in selection.selected:
        plan.changes += diff_region(desired[region], states[region], cfg.name)
    if cfg.sky:
        check_names(cfg.name)
        plan.profiles = read_profiles(aws, cfg.name)
        plan.changes += diff_profiles(cfg, plan.profiles)
    for region in selection.selected:
        if region != cfg.main_region:
            plan.changes += diff_peering(desired[region], states[region], states[cfg.main_region])
    for region, st in sorted(states.items()):
        if region not in desired:
            plan.changes.append(change(region, 3, "purge", "delete", "everything tagged in the region",
                                       "region no longer selected: " + _why_gone(selection, region),
                                       vpc=None))
        else:
            for vpc in sorted(st.vpcs):
                if vpc != st.vpc_id():
                    plan.changes.append(change(region, 3, "purge", "delete", f"vpc {vpc} and its contents",
                                               "duplicate VPC left by an interrupted run", vpc=vpc))
    return plan


def _why_gone(selection: Selection, region: str) -> str:
    try:
        return selection.info(region).reason
    except StopIteration:
        return "unknown region"


def diff_region(spec: RegionSpec, st: RegionState, mesh: str) -> list[Change]:
    """Phase-1 changes for one region."""
    r, out = spec.region, []
    vpc = st.vpc_id()
    drift = "missing (deleted outside meshctl?)"
    new = vpc is None
    why = "new region" if new else drift

    def add(kind: str, op: str, resource: str, reason: str, **args: Any) -> None:
        out.append(change(r, 1, kind, op, resource, reason, **args))

    if new:
        add("create_vpc", "create", f"vpc {spec.cidr}", "new region", cidr=spec.cidr)
    subnets = [s for s in st.subnets if s.vpc_id == vpc]
    have = {(s.zone, s.cidr): s for s in subnets}
    for s in subnets:  # deletes first: a stray subnet may hold a CIDR the plan needs
        if spec.subnets.get(s.zone) != s.cidr:
            add("delete_subnet", "delete", f"subnet {s.zone} {s.cidr}", "not in the address plan", id=s.id)
    for zone, cidr in spec.subnets.items():
        if (zone, cidr) not in have:
            add("create_subnet", "create", f"subnet {zone} {cidr}", why, zone=zone, cidr=cidr)
        elif have[(zone, cidr)].public_ips != spec.public_ips:
            add("subnet_public_ips", "update", f"subnet {zone} public IPs on launch",
                f"{'off' if spec.public_ips else 'on'} (drift)", zone=zone)
    attached = [g for g in st.gateways if vpc in g.vpc_ids]
    loose = [g for g in st.gateways if not g.vpc_ids]
    if not attached:
        if loose:
            add("attach_gateway", "update", f"internet gateway {loose[0].id}", "detached (drift)", id=loose[0].id)
            loose = loose[1:]
        else:
            add("create_gateway", "create", "internet gateway", why)
    for g in attached[1:] + loose:
        add("delete_gateway", "delete", f"internet gateway {g.id}", "extra gateway (interrupted run?)",
            id=g.id, vpcs=tuple(g.vpc_ids))
    tables = st.tables_in(vpc)
    table = tables[0] if tables else None
    if table is None:
        add("create_route_table", "create", "route table", why)
    for t in tables[1:]:
        add("delete_route_table", "delete", f"route table {t.id}", "extra route table (interrupted run?)",
            id=t.id, associations=tuple(t.associations.values()))
    wanted_subnets = {(z, c) for z, c in spec.subnets.items()}
    for s in subnets:
        if (s.zone, s.cidr) in wanted_subnets and (table is None or s.id not in table.associations):
            add("associate", "update", f"route table ↔ subnet {s.zone}",
                why if table is None else "not associated (drift)", zone=s.zone)
    for zone, cidr in spec.subnets.items():
        if (zone, cidr) not in have:
            add("associate", "create", f"route table ↔ subnet {zone}", why, zone=zone)
    routes = table.routes if table else {}
    gw_id = attached[0].id if attached else None
    if "0.0.0.0/0" not in routes:
        add("create_route", "create", "route 0.0.0.0/0 → internet gateway", why, dest="0.0.0.0/0", target="igw")
    elif gw_id is None or routes["0.0.0.0/0"] != gw_id:
        add("replace_route", "update", "route 0.0.0.0/0 → internet gateway",
            f"points at {routes['0.0.0.0/0']} (drift)", dest="0.0.0.0/0", target="igw")
    peered = set(spec.spoke_cidrs.values()) | ({spec.hub_cidr} if spec.hub_cidr else set())
    for dest, target in sorted(routes.items()):
        if dest == spec.cidr or dest == "0.0.0.0/0" or dest in peered:
            continue
        add("delete_route", "delete", f"route {dest} → {target}", "not in the plan (added by hand?)", dest=dest)
    for gname, want in sorted(spec.groups.items()):
        on = "" if gname == f"mesh-{mesh}" else f"{gname}: "  # the mesh group's rules read as before
        groups = st.groups_in(vpc, gname)
        group = groups[0] if groups else None
        if group is None:
            add("create_group", "create", f"security group {gname}", why, group=gname)
        for g in groups[1:]:
            add("delete_group", "delete", f"security group {g.id}", "extra group (interrupted run?)", id=g.id)
        have_rules = group.rules if group else set()
        for rule in sorted(want - have_rules):
            add("authorize", "create", f"{on}allow {rule.label()}",
                why if group is None else "missing rule (drift)", rule=rule, group=gname)
        for rule in sorted(have_rules - want):
            add("revoke", "delete", f"{on}allow {rule.label()}", "not in config (added by hand?)",
                rule=rule, group=gname)
    for g in st.groups_in(vpc):
        if g.name not in spec.groups:
            add("delete_group", "delete", f"security group {g.name or g.id}", "not in config", id=g.id)
    if vpc is not None and st.vpc_names.get(vpc) != vpc_name(mesh):
        add("name_tag", "update", f"vpc Name tag {vpc_name(mesh)!r}", "SkyPilot finds the VPC by it",
            id=vpc, name=vpc_name(mesh))
    for s in subnets:
        if spec.subnets.get(s.zone) == s.cidr and s.name != subnet_name(mesh, s.zone):
            add("name_tag", "update", f"subnet {s.zone} Name tag", "SkyPilot finds subnets by it",
                id=s.id, name=subnet_name(mesh, s.zone))
    for name, param in sorted(spec.params.items()):
        current = st.params.get(name)
        if current is None:
            add("put_param", "create", f"parameter {name}", "new" if new else "missing", name=name)
        elif current != param.description and not current.startswith(PUBLISHED_BY_MESHD):
            # a join token meshd publishes (and rotates) is meshd's from then on
            add("put_param", "update", f"parameter {name}", "value changed", name=name)
    for name in sorted(set(st.params) - set(spec.params)):
        add("delete_param", "delete", f"parameter {name}", "no longer configured", name=name)
    return out


def diff_profiles(cfg: InfraConfig, have: dict[str, ProfileState]) -> list[Change]:
    """Instance profiles SkyPilot launches VMs with (IAM is global: planned in the main region)."""
    out = []
    for name, doc in sorted(documents(cfg.name).items()):
        st = have[name]
        if st.complete(doc):
            continue
        op, reason = ("create", "SkyPilot's remote_identity names it") if not st.role else (
            "update", "policy or profile changed outside meshctl (drift)")
        out.append(change(cfg.main_region, 1, "put_profile", op, f"instance profile {name}", reason, name=name))
    return out


def diff_peering(spec: RegionSpec, st: RegionState, hub: RegionState) -> list[Change]:
    """Phase-2 changes for one regional VPC: its peering with the hub and the routes both ways."""
    r, out = spec.region, []
    vpc, hub_vpc = st.vpc_id(), hub.vpc_id()
    main_region = hub.region

    def add(kind: str, op: str, resource: str, reason: str, **args: Any) -> None:
        out.append(change(r, 2, kind, op, resource, reason, **args))

    mine = [p for p in st.peerings if vpc is not None and p.requester_vpc == vpc]
    good = [p for p in mine if hub_vpc is not None and p.accepter_vpc == hub_vpc and p.accepter_region == main_region]
    for p in mine:
        if p not in good:
            add("delete_peering", "delete", f"peering {p.id}", "peers with a VPC that is not the hub", id=p.id)
    for p in good[1:]:
        add("delete_peering", "delete", f"peering {p.id}", "extra peering (interrupted run?)", id=p.id)
    peering = good[0] if good else None
    new = vpc is None or hub_vpc is None
    if peering is None:
        add("create_peering", "create", f"peering → {main_region}", "new region" if new else "missing (drift)")
    elif peering.status != "active":
        add("accept_peering", "update", f"peering {peering.id}", f"{peering.status}: accept from {main_region}",
            id=peering.id)
    pcx = peering.id if peering else None
    table = next(iter(st.tables_in(vpc)), None)
    _route(add, table, spec.hub_cidr or "", pcx, f"route {spec.hub_cidr} → peering", main_region=None)
    hub_table = next(iter(hub.tables_in(hub_vpc)), None)
    _route(add, hub_table, spec.cidr, pcx, f"{main_region}: route {spec.cidr} → peering", main_region=main_region)
    return out


def _route(add: Callable[..., None], table: Any, dest: str, pcx: str | None, label: str,
           main_region: str | None) -> None:
    current = table.routes.get(dest) if table else None
    if current is None:
        add("peer_route", "create", label, "new" if table is None else "missing", dest=dest, hub=main_region)
    elif pcx is None or current != pcx:
        add("peer_route", "update", label, f"points at {current} (drift)", dest=dest, hub=main_region)
