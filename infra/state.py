"""What exists: the mesh's resources in a region, found by their tags.

Everything the builder creates carries two tags, `mesh:name=<name>` and
`managed-by=meshctl`, set in the create call itself (TagSpecifications), so
a resource that exists is a resource we can find, even when the run that
created it died a moment later. Nothing without both tags is ever read as
ours, changed or deleted.

`read_region` takes one call per resource type (eight per region).
`has_leftovers` is the cheap probe (two calls) for regions no longer selected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infra.aws import Aws
from infra.desired import Rule
from infra.ssm import prefix

TAG_NAME = "mesh:name"
# The console's and SkyPilot's name of a resource: `aws.vpc_name` in a
# SkyPilot config is looked up as `tag:Name` (subnet names too).
NAME_TAG = "Name"
TAG_MANAGED = "managed-by"
MANAGED_BY = "meshctl"
GONE = frozenset({"deleted", "deleting", "rejected", "failed", "expired"})


def tags(mesh: str, name: str | None = None, **extra: str) -> list[dict[str, str]]:
    t = [{"Key": TAG_NAME, "Value": mesh}, {"Key": TAG_MANAGED, "Value": MANAGED_BY}]
    t += [{"Key": f"mesh:{k}", "Value": v} for k, v in sorted(extra.items())]
    if name is not None:
        t.append({"Key": NAME_TAG, "Value": name})
    return t


def tag_spec(resource_type: str, mesh: str, name: str | None = None, **extra: str) -> list[dict[str, Any]]:
    return [{"ResourceType": resource_type, "Tags": tags(mesh, name, **extra)}]


def vpc_name(mesh: str) -> str:
    """The VPC's Name tag in every region: the mesh name (sky/config.yaml's `aws.vpc_name`)."""
    return mesh


def subnet_name(mesh: str, zone: str) -> str:
    return f"{mesh}-{zone}"


def name_of(item: dict[str, Any]) -> str:
    return next((t.get("Value", "") for t in item.get("Tags", []) if t.get("Key") == NAME_TAG), "")


def tag_filters(mesh: str) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{TAG_NAME}", "Values": [mesh]}, {"Name": f"tag:{TAG_MANAGED}", "Values": [MANAGED_BY]}]


@dataclass
class Subnet:
    id: str
    vpc_id: str
    zone: str
    cidr: str
    public_ips: bool = False
    name: str = ""  # its Name tag


@dataclass
class Gateway:
    id: str
    vpc_ids: list[str]


@dataclass
class RouteTable:
    id: str
    vpc_id: str
    routes: dict[str, str]  # destination → target id (igw-…, pcx-…, local)
    associations: dict[str, str]  # subnet id → association id


@dataclass
class SecurityGroup:
    id: str
    vpc_id: str
    rules: set[Rule]
    name: str = ""  # GroupName


@dataclass
class Peering:
    id: str
    status: str
    requester_vpc: str
    requester_region: str
    accepter_vpc: str
    accepter_region: str


@dataclass
class RegionState:
    region: str
    zones: list[str] = field(default_factory=list)
    vpcs: dict[str, str] = field(default_factory=dict)  # vpc id → cidr
    vpc_names: dict[str, str] = field(default_factory=dict)  # vpc id → its Name tag
    subnets: list[Subnet] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)
    route_tables: list[RouteTable] = field(default_factory=list)
    groups: list[SecurityGroup] = field(default_factory=list)
    peerings: list[Peering] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)  # name → description

    @property
    def empty(self) -> bool:
        return not (self.vpcs or self.subnets or self.gateways or self.route_tables or self.groups
                    or self.peerings or self.params)

    def vpc_id(self) -> str | None:
        """The region's VPC: the oldest by id when an interrupted run left two."""
        return min(self.vpcs) if self.vpcs else None

    # When a crashed run (or a hand) left two of a kind, the one doing the work
    # is kept: the most associated table, the group with the most rules.
    def tables_in(self, vpc: str | None) -> list[RouteTable]:
        return sorted((t for t in self.route_tables if t.vpc_id == vpc),
                      key=lambda t: (-len(t.associations), -len(t.routes), t.id))

    def groups_in(self, vpc: str | None, name: str | None = None) -> list[SecurityGroup]:
        return sorted((g for g in self.groups if g.vpc_id == vpc and (name is None or g.name == name)),
                      key=lambda g: (-len(g.rules), g.id))


def read_zones(aws: Aws, region: str) -> list[str]:
    out = aws.call("ec2", region, "DescribeAvailabilityZones",
                   Filters=[{"Name": "zone-type", "Values": ["availability-zone"]},
                            {"Name": "state", "Values": ["available"]}])
    return sorted(z["ZoneName"] for z in out.get("AvailabilityZones", []))


def parse_rules(permissions: list[dict[str, Any]]) -> set[Rule]:
    rules: set[Rule] = set()
    for p in permissions:
        proto = str(p.get("IpProtocol", "-1"))
        lo, hi = (None, None) if proto == "-1" else (p.get("FromPort"), p.get("ToPort"))
        for r in p.get("IpRanges", []):
            rules.add(Rule(proto, lo, hi, r["CidrIp"]))
    return rules


def _target(route: dict[str, Any]) -> str:
    for key in ("VpcPeeringConnectionId", "GatewayId", "NatGatewayId", "TransitGatewayId",
                "NetworkInterfaceId", "InstanceId"):
        if route.get(key):
            return route[key]
    return "blackhole"


def is_ours(item: dict[str, Any], mesh: str) -> bool:
    """Both tags present with our values. The filters ask for this already; checking
    again means a filter that matches too much can never make us touch another mesh."""
    t = {x.get("Key"): x.get("Value") for x in item.get("Tags", [])}
    return t.get(TAG_NAME) == mesh and t.get(TAG_MANAGED) == MANAGED_BY


def _ours(aws: Aws, mesh: str, region: str, operation: str, key: str) -> list[dict[str, Any]]:
    return [i for i in aws.paginate("ec2", region, operation, key, Filters=tag_filters(mesh)) if is_ours(i, mesh)]


def read_region(aws: Aws, mesh: str, region: str, zones: bool = True) -> RegionState:
    """Everything tagged for `mesh` in `region`."""
    st = RegionState(region=region)
    if zones:
        st.zones = read_zones(aws, region)
    for v in _ours(aws, mesh, region, "DescribeVpcs", "Vpcs"):
        st.vpcs[v["VpcId"]] = v["CidrBlock"]
        st.vpc_names[v["VpcId"]] = name_of(v)
    for s in _ours(aws, mesh, region, "DescribeSubnets", "Subnets"):
        st.subnets.append(Subnet(s["SubnetId"], s["VpcId"], s["AvailabilityZone"], s["CidrBlock"],
                                 bool(s.get("MapPublicIpOnLaunch")), name_of(s)))
    for g in _ours(aws, mesh, region, "DescribeInternetGateways", "InternetGateways"):
        st.gateways.append(Gateway(g["InternetGatewayId"], [a["VpcId"] for a in g.get("Attachments", [])]))
    for t in _ours(aws, mesh, region, "DescribeRouteTables", "RouteTables"):
        routes = {r["DestinationCidrBlock"]: _target(r) for r in t.get("Routes", []) if "DestinationCidrBlock" in r}
        assoc = {a["SubnetId"]: a["RouteTableAssociationId"] for a in t.get("Associations", [])
                 if a.get("SubnetId") and a.get("AssociationState", {}).get("State", "associated") == "associated"}
        st.route_tables.append(RouteTable(t["RouteTableId"], t["VpcId"], routes, assoc))
    for g in _ours(aws, mesh, region, "DescribeSecurityGroups", "SecurityGroups"):
        st.groups.append(SecurityGroup(g["GroupId"], g.get("VpcId", ""), parse_rules(g.get("IpPermissions", [])),
                                       g.get("GroupName", "")))
    for p in _ours(aws, mesh, region, "DescribeVpcPeeringConnections", "VpcPeeringConnections"):
        status = p.get("Status", {}).get("Code", "")
        req, acc = p.get("RequesterVpcInfo", {}), p.get("AccepterVpcInfo", {})
        # A cross-region peering is visible from both ends; each region owns the
        # ones it requested.
        if status in GONE or req.get("Region", region) != region:
            continue
        st.peerings.append(Peering(p["VpcPeeringConnectionId"], status, req.get("VpcId", ""),
                                   req.get("Region", region), acc.get("VpcId", ""), acc.get("Region", "")))
    for prm in aws.paginate("ssm", region, "DescribeParameters", "Parameters",
                            ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [prefix(mesh)]}]):
        st.params[prm["Name"]] = prm.get("Description", "")
    return st


def has_leftovers(aws: Aws, mesh: str, region: str) -> bool:
    """Whether the mesh has anything in `region`: every resource we make lives in a VPC,
    except internet gateways (one may be left unattached) and parameters (read separately)."""
    f = tag_filters(mesh)
    if any(is_ours(v, mesh) for v in aws.call("ec2", region, "DescribeVpcs", Filters=f).get("Vpcs", [])):
        return True
    gws = aws.call("ec2", region, "DescribeInternetGateways", Filters=f).get("InternetGateways", [])
    return any(is_ours(g, mesh) for g in gws)
