"""Apply, re-apply, crash and re-run, add and remove regions, drift, destroy: on a moto server."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.apply import ApplyProgress, apply, apply_plan
from infra.destroy import destroy
from tests.infra.helpers import FEW_REGIONS, by_tag, ec2, few_config, params, tagged

MUTATING = ("Create", "Delete", "Attach", "Detach", "Associate", "Disassociate", "Authorize", "Revoke",
            "Replace", "Accept", "Put")


def mutating_calls(aws) -> int:
    return sum(n for op, n in aws.operations.items() if op.split(":")[1].startswith(MUTATING))


def join_config(mesh: str, tmp_path: Path, **kw):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (tmp_path / "token").write_text("jt-123\n")
    return few_config(mesh, meshd_address="10.4.0.4:7443", ca_cert_file=str(tmp_path / "ca.pem"),
                      join_token_file=str(tmp_path / "token"), **kw)


def test_apply_builds_hub_and_spoke_then_reapply_does_nothing(moto, mesh, make_aws, tmp_path) -> None:
    cfg = join_config(mesh, tmp_path, ssh_cidrs=("203.0.113.0/24",))
    aws = make_aws(cfg)
    result = apply(cfg, aws=aws)
    assert result.ok, result.failed
    assert result.plan.selection.selected == FEW_REGIONS

    vpcs = {r: ec2(moto, r).describe_vpcs(Filters=by_tag(mesh))["Vpcs"]
            for r in FEW_REGIONS}
    cidrs = {r: v[0]["CidrBlock"] for r, v in vpcs.items()}
    assert cidrs == {"us-east-1": "10.4.0.0/16", "us-east-2": "10.29.0.0/16", "us-west-2": "10.31.0.0/16"}
    hub_vpc = vpcs["us-east-1"][0]["VpcId"]

    # every spoke peers with the hub, accepted, with routes both ways
    hub = ec2(moto, "us-east-1")
    hub_rt = hub.describe_route_tables(Filters=by_tag(mesh))["RouteTables"][0]
    hub_routes = {r["DestinationCidrBlock"]: r for r in hub_rt["Routes"]}
    for region in ("us-east-2", "us-west-2"):
        c = ec2(moto, region)
        pcx = c.describe_vpc_peering_connections(Filters=by_tag(mesh))
        # AWS lists deleted peerings for a while after; only live ones count
        mine = [p for p in pcx["VpcPeeringConnections"] if p["RequesterVpcInfo"]["Region"] == region
                and p["Status"]["Code"] != "deleted" and {"Key": "mesh:name", "Value": mesh} in p["Tags"]]
        assert len(mine) == 1 and mine[0]["Status"]["Code"] == "active"
        assert mine[0]["AccepterVpcInfo"]["VpcId"] == hub_vpc
        rt = c.describe_route_tables(Filters=by_tag(mesh))["RouteTables"][0]
        routes = {r["DestinationCidrBlock"]: r for r in rt["Routes"]}
        assert routes["10.4.0.0/16"]["VpcPeeringConnectionId"] == mine[0]["VpcPeeringConnectionId"]
        assert routes["0.0.0.0/0"]["GatewayId"].startswith("igw-")
        assert hub_routes[cidrs[region]]["VpcPeeringConnectionId"] == mine[0]["VpcPeeringConnectionId"]
        # one /19 per zone, all associated with the mesh route table
        subnets = c.describe_subnets(Filters=by_tag(mesh))["Subnets"]
        assert subnets and all(s["CidrBlock"].endswith("/19") and s["MapPublicIpOnLaunch"] for s in subnets)
        assert {a["SubnetId"] for a in rt["Associations"] if a.get("SubnetId")} == {s["SubnetId"] for s in subnets}
        # security group: WireGuard from the world, SSH only from the configured CIDR, all from the hub
        sg = c.describe_security_groups(Filters=by_tag(mesh))["SecurityGroups"][0]
        rules = {(p["IpProtocol"], p.get("FromPort"), r["CidrIp"]) for p in sg["IpPermissions"] for r in p["IpRanges"]}
        assert ("udp", 51820, "0.0.0.0/0") in rules
        assert ("tcp", 22, "203.0.113.0/24") in rules
        assert not any(proto == "tcp" and cidr == "0.0.0.0/0" for proto, _, cidr in rules)
        assert ("-1", None, "10.4.0.0/16") in rules or ("-1", -1, "10.4.0.0/16") in rules
    # join parameters, the token as a SecureString
    for region in FEW_REGIONS:
        ps = params(moto, region, mesh)
        assert set(ps) == {f"/mesh/{mesh}/meshd-address", f"/mesh/{mesh}/ca-cert", f"/mesh/{mesh}/join-token"}
        assert ps[f"/mesh/{mesh}/join-token"]["Type"] == "SecureString"

    # a second apply changes nothing and makes no mutating call
    aws2 = make_aws(cfg)
    again = apply(cfg, aws=aws2)
    assert again.plan.empty and again.done == []
    assert mutating_calls(aws2) == 0


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so nothing in apply catches it."""


class KillAfter(ApplyProgress):
    def __init__(self, n: int) -> None:
        self.n = n

    def step(self, region, change) -> None:
        self.n -= 1
        if self.n <= 0:
            raise Killed()


def test_an_apply_killed_halfway_is_completed_by_the_next(moto, mesh, builder, make_aws) -> None:
    cfg = few_config(mesh, max_parallel_regions=1)
    aws = make_aws(cfg)
    plan = builder.plan(cfg, aws)
    total = len(plan.changes)
    with pytest.raises(Killed):
        apply_plan(plan, aws, KillAfter(total // 2))
    # the next plan sees only what is left
    rest = builder.plan(cfg)
    assert 0 < len(rest.changes) < total
    assert all(c.region in FEW_REGIONS for c in rest.changes)
    assert builder.apply(cfg).ok
    assert builder.plan(cfg).empty
    # no duplicates were made: one VPC per region
    for r in FEW_REGIONS:
        assert len(ec2(moto, r).describe_vpcs(Filters=by_tag(mesh))["Vpcs"]) == 1


def test_killed_between_peering_request_and_accept(moto, mesh, builder, make_aws) -> None:
    cfg = few_config(mesh)
    aws = make_aws(cfg)
    plan = builder.plan(cfg, aws)
    network_only = [c for c in plan.changes if c.phase == 1]
    plan.changes = network_only
    assert apply_plan(plan, aws).ok
    # a peering requested but never accepted, as a run dying at that point leaves it
    c = ec2(moto, "us-east-2")
    vpc = c.describe_vpcs(Filters=by_tag(mesh))["Vpcs"][0]["VpcId"]
    hub = ec2(moto, "us-east-1").describe_vpcs(Filters=by_tag(mesh))["Vpcs"][0]["VpcId"]
    pcx = c.create_vpc_peering_connection(VpcId=vpc, PeerVpcId=hub, PeerRegion="us-east-1", TagSpecifications=[
        {"ResourceType": "vpc-peering-connection", "Tags": [{"Key": "mesh:name", "Value": mesh},
                                                            {"Key": "managed-by", "Value": "meshctl"}]}])
    pid = pcx["VpcPeeringConnection"]["VpcPeeringConnectionId"]
    plan = builder.plan(cfg)
    accepts = [ch for ch in plan.changes if ch.kind == "accept_peering"]
    assert [a.arg("id") for a in accepts] == [pid]
    assert not [ch for ch in plan.changes if ch.kind == "create_peering" and ch.region == "us-east-2"]
    assert apply_plan(plan, make_aws(cfg)).ok
    assert builder.plan(cfg).empty


def test_adding_and_removing_regions(moto, mesh, builder, make_aws) -> None:
    cfg = few_config(mesh, instance_types=("trn2.48xlarge",))  # us-east-2 (and ap-south-2, not opted in)
    assert builder.apply(cfg).ok
    before = {r: ec2(moto, r).describe_vpcs(Filters=by_tag(mesh))["Vpcs"]
              for r in ("us-east-1", "us-east-2")}
    # add a region: trn1.2xlarge also brings us-west-2; nothing existing moves
    bigger = few_config(mesh, instance_types=("trn2.48xlarge", "trn1.2xlarge"))
    plan = builder.plan(bigger)
    assert {c.region for c in plan.changes if c.op != "create"} <= {"us-east-1"}
    assert {c.region for c in plan.changes} == {"us-east-1", "us-west-2"}
    assert apply_plan(plan, make_aws(bigger)).ok
    for r, vpcs in before.items():
        now = ec2(moto, r).describe_vpcs(Filters=by_tag(mesh))["Vpcs"]
        assert [(v["VpcId"], v["CidrBlock"]) for v in now] == [(v["VpcId"], v["CidrBlock"]) for v in vpcs]
    assert tagged(moto, "us-west-2", mesh)

    # remove it again: us-west-2 is purged, the hub's route and rule for it go
    plan = builder.plan(cfg)
    purge = [c for c in plan.changes if c.kind == "purge"]
    assert [c.region for c in purge] == ["us-west-2"]
    assert "no longer selected" in purge[0].reason
    assert any(c.region == "us-east-1" and c.kind == "delete_route" and c.arg("dest") == "10.31.0.0/16"
               for c in plan.changes)
    result = apply_plan(plan, make_aws(cfg))
    assert result.ok, (result.failed, result.leftovers)
    assert tagged(moto, "us-west-2", mesh) == []
    assert builder.plan(cfg).empty


def test_drift_made_by_hand_is_shown_and_repaired(moto, mesh, builder, make_aws) -> None:
    cfg = few_config(mesh)
    assert builder.apply(cfg).ok
    c = ec2(moto, "us-east-2")
    f = by_tag(mesh)
    sg = c.describe_security_groups(Filters=f)["SecurityGroups"][0]["GroupId"]
    c.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    rt = c.describe_route_tables(Filters=f)["RouteTables"][0]["RouteTableId"]
    c.delete_route(RouteTableId=rt, DestinationCidrBlock="10.4.0.0/16")
    igw = c.describe_internet_gateways(Filters=f)["InternetGateways"][0]
    c.detach_internet_gateway(InternetGatewayId=igw["InternetGatewayId"], VpcId=igw["Attachments"][0]["VpcId"])
    subnet = c.describe_subnets(Filters=f)["Subnets"][0]["SubnetId"]
    c.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": False})

    plan = builder.plan(cfg)
    got = {(ch.kind, ch.op) for ch in plan.changes}
    assert ("revoke", "delete") in got and ("attach_gateway", "update") in got and ("peer_route", "create") in got
    assert ("subnet_public_ips", "update") in got
    assert {ch.region for ch in plan.changes} == {"us-east-2"}
    reasons = " ".join(ch.reason for ch in plan.changes)
    assert "added by hand" in reasons and "drift" in reasons
    assert apply_plan(plan, make_aws(cfg)).ok
    assert builder.plan(cfg).empty


def test_changed_join_parameter_is_updated(moto, mesh, builder, make_aws, tmp_path) -> None:
    cfg = join_config(mesh, tmp_path)
    assert builder.apply(cfg).ok
    (tmp_path / "token").write_text("jt-456\n")
    plan = builder.plan(cfg)
    assert {(c.kind, c.op, c.arg("name")) for c in plan.changes} == \
        {("put_param", "update", f"/mesh/{mesh}/join-token")}
    assert apply_plan(plan, make_aws(cfg)).ok
    import boto3

    ssm = boto3.client("ssm", region_name="us-west-2", endpoint_url=moto)
    assert ssm.get_parameter(Name=f"/mesh/{mesh}/join-token", WithDecryption=True)["Parameter"]["Value"] == "jt-456"


def test_a_join_token_meshd_publishes_is_left_to_meshd(moto, mesh, builder, make_aws, tmp_path) -> None:
    """A cluster's coordinator rotates /mesh/<cluster>/join-token (meshd --publish-join-token): re-applying
    the network (every `cluster edit`) must not put the expired bootstrap token back."""
    import boto3

    from meshcore.jointoken import PUBLISHED_BY_MESHD
    cfg = join_config(mesh, tmp_path)
    assert builder.apply(cfg).ok
    ssm = boto3.client("ssm", region_name="us-west-2", endpoint_url=moto)
    name = f"/mesh/{mesh}/join-token"
    ssm.put_parameter(Name=name, Value="rotated", Type="SecureString", Overwrite=True,
                      Description=f"{PUBLISHED_BY_MESHD}; token t0, expires later")
    assert builder.plan(cfg).empty
    assert ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"] == "rotated"
    assert destroy(cfg, make_aws(cfg)).complete  # and it still goes with the mesh


def test_destroy_removes_everything_including_dangling_leftovers(moto, mesh, builder, make_aws, tmp_path) -> None:
    cfg = join_config(mesh, tmp_path)
    assert builder.apply(cfg).ok
    # leftovers of failed runs: a gateway never attached, in a region no longer in the config
    c = ec2(moto, "eu-west-1")
    c.create_internet_gateway(TagSpecifications=[{"ResourceType": "internet-gateway", "Tags": [
        {"Key": "mesh:name", "Value": mesh}, {"Key": "managed-by", "Value": "meshctl"}]}])
    # and something not ours, which must survive
    other = c.create_vpc(CidrBlock="10.200.0.0/16")["Vpc"]["VpcId"]

    result = destroy(cfg, make_aws(cfg))
    assert result.complete, result.leftovers
    assert any(r == "eu-west-1" and res.startswith("internet gateway") for r, res in result.deleted)
    for r in (*FEW_REGIONS, "eu-west-1"):
        assert tagged(moto, r, mesh) == []
        assert params(moto, r, mesh) == {}
    assert other in {v["VpcId"] for v in c.describe_vpcs()["Vpcs"]}
    # destroying again finds nothing
    again = destroy(cfg, make_aws(cfg))
    assert again.complete and again.deleted == []


def test_destroy_reports_what_it_could_not_delete(moto, mesh, builder, make_aws) -> None:
    cfg = few_config(mesh)
    assert builder.apply(cfg).ok
    # a subnet added by hand to the mesh's VPC is not ours to delete, and it holds the VPC
    c = ec2(moto, "us-east-2")
    vpc = c.describe_vpcs(Filters=by_tag(mesh))["Vpcs"][0]["VpcId"]
    theirs = c.create_subnet(VpcId=vpc, CidrBlock="10.29.224.0/19")["Subnet"]["SubnetId"]
    result = destroy(cfg, make_aws(cfg))
    assert not result.complete
    assert [(lo.region, lo.resource) for lo in result.leftovers] == [("us-east-2", f"vpc {vpc}")]
    assert "DependencyViolation" in result.leftovers[0].error
    assert theirs in {s["SubnetId"] for s in c.describe_subnets()["Subnets"]}
    assert tagged(moto, "us-east-2", mesh) == [vpc]
    assert all(tagged(moto, r, mesh) == [] for r in ("us-east-1", "us-west-2"))
