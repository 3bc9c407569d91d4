"""Helpers shared by the infra tests: small configs and direct looks at moto's account."""

from __future__ import annotations

from typing import Any

import boto3

from infra.config import InfraConfig

# Offered in only three regions of moto's snapshot: us-east-1, us-east-2, us-west-2.
FEW = ("trn1.2xlarge",)
FEW_REGIONS = ("us-east-1", "us-east-2", "us-west-2")


def few_config(name: str, **kw: Any) -> InfraConfig:
    kw.setdefault("instance_types", FEW)
    return InfraConfig(name=name, **kw)


def by_tag(mesh: str) -> list[dict[str, Any]]:
    return [{"Name": "tag:mesh:name", "Values": [mesh]}]


def ec2(url: str, region: str) -> Any:
    return boto3.client("ec2", region_name=region, endpoint_url=url)


def tagged(url: str, region: str, mesh: str) -> list[str]:
    """Ids of every live EC2 resource in `region` tagged for `mesh`.

    Tags are checked on each item as well: moto's tag filter on peerings can
    return other meshes' peerings."""
    c, f = ec2(url, region), by_tag(mesh)

    def mine(items: list[dict[str, Any]], key: str) -> list[str]:
        return [i[key] for i in items if {"Key": "mesh:name", "Value": mesh} in i.get("Tags", [])]

    ids = mine(c.describe_vpcs(Filters=f)["Vpcs"], "VpcId")
    ids += mine(c.describe_subnets(Filters=f)["Subnets"], "SubnetId")
    ids += mine(c.describe_internet_gateways(Filters=f)["InternetGateways"], "InternetGatewayId")
    ids += mine(c.describe_route_tables(Filters=f)["RouteTables"], "RouteTableId")
    ids += mine(c.describe_security_groups(Filters=f)["SecurityGroups"], "GroupId")
    ids += mine([p for p in c.describe_vpc_peering_connections(Filters=f)["VpcPeeringConnections"]
                 if p["Status"]["Code"] not in ("deleted", "rejected", "failed", "expired")], "VpcPeeringConnectionId")
    return ids


def params(url: str, region: str, mesh: str) -> dict[str, dict[str, Any]]:
    ssm = boto3.client("ssm", region_name=region, endpoint_url=url)
    out = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Option": "BeginsWith",
                                                     "Values": [f"/mesh/{mesh}/"]}])["Parameters"]
    return {p["Name"]: p for p in out}
