"""The one stable address agents, nodes outside AWS and meshctl use for a cluster's meshd.

It is the cluster's Elastic IP in both profiles, so a profile switch
(`meshctl cluster edit`, infra.cluster.switch) keeps every agent's
`--coordinator` valid and no node is touched:

- cost-savings: the Elastic IP on `coordinator-0`'s network interface;
- performance: an internet-facing Network Load Balancer in the main region's
  subnets, TCP passthrough on meshd's mTLS API and join ports, IP targets at
  the replicas' fixed private addresses, health-checked, cross-zone on (so
  the Elastic IP's zone reaches replicas in every zone). The Elastic IP is the
  load balancer's address in the first subnet (CreateLoadBalancer
  SubnetMappings with AllocationId; AWS documents one Elastic IP per subnet
  for an internet-facing NLB, given only at creation); the other subnets get
  addresses from AWS, reachable through the load balancer's DNS name too.

Moving the address is the switch's last reversible step: an Elastic IP
serves one thing at a time, so it is taken off `coordinator-0` before the
load balancer is created with it (and the load balancer is deleted before
the Elastic IP goes back to `coordinator-0`). Agents see meshd away while the
load balancer provisions (minutes on AWS) and reconnect on their own; the
data plane, names and gossip keep working meanwhile.

Clusters made before the Elastic IP served both profiles keep their load
balancer's DNS name as address (a load balancer without a cluster Elastic
IP); switching such a cluster's profile would change its address, and is
refused until it is recreated.

TLS ends at meshd (the mesh CA signs its certificate, SAN `meshd.mesh`), so
neither needs a certificate of its own. Both carry the cluster tags and are
found by them; names are derived from the cluster id (a load balancer name
has at most 32 characters).
"""

from __future__ import annotations

from typing import Any

from infra.aws import Aws, AwsError
from infra.cluster.instances import cluster_filters, cluster_tags, tag_of, TAG_CLUSTER
from infra.cluster.spec import COST_SAVINGS, ClusterDoc
from infra.state import RegionState
from meshcore.defaults import JOIN_PORT, MESHD_PORT

PORTS = (MESHD_PORT, JOIN_PORT)


def lb_name(doc: ClusterDoc) -> str:
    return f"mesh-{doc.id}"[:32]


def ensure(aws: Aws, doc: ClusterDoc, main: RegionState) -> str:
    """Create the address if missing; returns host (the Elastic IP, or a legacy load balancer's DNS name)."""
    region = doc.spec.main_region
    eip = find_eip(aws, doc.name, region)
    if eip is None:
        legacy = find_lb(aws, doc)
        if legacy is not None:
            return legacy["DNSName"]
        eip = aws.call("ec2", region, "AllocateAddress", Domain="vpc", TagSpecifications=[
            {"ResourceType": "elastic-ip", "Tags": cluster_tags(doc.name, role="coordinator")}])
    return eip["PublicIp"]


def legacy(aws: Aws, doc: ClusterDoc) -> bool:
    """A load balancer without the cluster's Elastic IP: its DNS name is the address (see the docstring)."""
    return find_eip(aws, doc.name, doc.spec.main_region) is None and find_lb(aws, doc) is not None


def attach(aws: Aws, doc: ClusterDoc, main: RegionState, coordinators: dict[str, dict[str, Any]]) -> None:
    """Point the address at the coordinators (slot name → instance), moving it from the other profile's
    holder first (see the module docstring)."""
    region = doc.spec.main_region
    eip = find_eip(aws, doc.name, region)
    if doc.spec.profile == COST_SAVINGS:
        inst = coordinators.get("coordinator-0")
        if eip is None or inst is None:
            return
        if find_lb(aws, doc) is not None:  # the performance profile's: it holds the Elastic IP
            _delete_lb(aws, doc)
        if eip.get("InstanceId") != inst["InstanceId"]:
            aws.call("ec2", region, "AssociateAddress", AllocationId=eip["AllocationId"], InstanceId=inst["InstanceId"],
                     AllowReassociation=True)
        return
    lb = find_lb(aws, doc)
    if lb is None:
        if eip is None:
            return
        if eip.get("AssociationId"):  # on coordinator-0 (a switch from cost-savings)
            aws.call("ec2", region, "DisassociateAddress", AssociationId=eip["AssociationId"])
        subnets = sorted(main.subnets, key=lambda s: s.zone)
        mappings = [{"SubnetId": s.id, **({"AllocationId": eip["AllocationId"]} if i == 0 else {})}
                    for i, s in enumerate(subnets)]
        lb = aws.call("elbv2", region, "CreateLoadBalancer", Name=lb_name(doc), SubnetMappings=mappings,
                      Scheme="internet-facing", Type="network", IpAddressType="ipv4",
                      Tags=_elb_tags(doc))["LoadBalancers"][0]
        aws.call("elbv2", region, "ModifyLoadBalancerAttributes", LoadBalancerArn=lb["LoadBalancerArn"],
                 Attributes=[{"Key": "load_balancing.cross_zone.enabled", "Value": "true"}])
    vpc = main.vpc_id()
    groups = {g["TargetGroupName"]: g for g in _groups(aws, region, lb["LoadBalancerArn"])}
    for port in PORTS:
        name = f"{lb_name(doc)[:27]}-{port}"
        tg = groups.get(name) or _target_group(aws, doc, name, port, vpc)
        if not groups.get(name):
            aws.call("elbv2", region, "CreateListener", LoadBalancerArn=lb["LoadBalancerArn"], Protocol="TCP",
                     Port=port, DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}])
        health = aws.call("elbv2", region, "DescribeTargetHealth", TargetGroupArn=tg["TargetGroupArn"])
        have = {d["Target"]["Id"] for d in health.get("TargetHealthDescriptions", [])}
        want = {i["PrivateIpAddress"] for i in coordinators.values()}
        if want - have:
            aws.call("elbv2", region, "RegisterTargets", TargetGroupArn=tg["TargetGroupArn"],
                     Targets=[{"Id": ip, "Port": port} for ip in sorted(want - have)])


def _groups(aws: Aws, region: str, lb_arn: str) -> list[dict[str, Any]]:
    try:
        return aws.call("elbv2", region, "DescribeTargetGroups", LoadBalancerArn=lb_arn).get("TargetGroups", [])
    except AwsError as e:
        if e.aws_code == "TargetGroupNotFound":  # none yet
            return []
        raise


def _target_group(aws: Aws, doc: ClusterDoc, name: str, port: int, vpc: str | None) -> dict[str, Any]:
    return aws.call("elbv2", doc.spec.main_region, "CreateTargetGroup", Name=name, Protocol="TCP", Port=port,
                    VpcId=vpc, TargetType="ip", HealthCheckProtocol="TCP", HealthCheckIntervalSeconds=10,
                    HealthyThresholdCount=2, UnhealthyThresholdCount=2, Tags=_elb_tags(doc))["TargetGroups"][0]


def _elb_tags(doc: ClusterDoc) -> list[dict[str, str]]:
    return cluster_tags(doc.name, role="coordinator")


def eips(aws: Aws, name: str, region: str) -> list[dict[str, Any]]:
    out = aws.call("ec2", region, "DescribeAddresses", Filters=cluster_filters(name)).get("Addresses", [])
    return [a for a in out if tag_of(a, TAG_CLUSTER) == name]


def find_eip(aws: Aws, name: str, region: str) -> dict[str, Any] | None:
    return next(iter(eips(aws, name, region)), None)


def find_lb(aws: Aws, doc: ClusterDoc) -> dict[str, Any] | None:
    try:
        lbs = aws.call("elbv2", doc.spec.main_region, "DescribeLoadBalancers", Names=[lb_name(doc)])["LoadBalancers"]
    except AwsError as e:
        if e.aws_code == "LoadBalancerNotFound":
            return None
        raise
    return lbs[0] if lbs else None


def _delete_lb(aws: Aws, doc: ClusterDoc) -> None:
    region = doc.spec.main_region
    lb = find_lb(aws, doc)
    if lb is not None:
        groups = _groups(aws, region, lb["LoadBalancerArn"])
        aws.call("elbv2", region, "DeleteLoadBalancer", LoadBalancerArn=lb["LoadBalancerArn"])
        for g in groups:
            aws.call("elbv2", region, "DeleteTargetGroup", TargetGroupArn=g["TargetGroupArn"])


def remove(aws: Aws, doc: ClusterDoc) -> None:
    """Delete the load balancer and its target groups, then release the Elastic IP it or coordinator-0 held."""
    region = doc.spec.main_region
    _delete_lb(aws, doc)
    eip = find_eip(aws, doc.name, region)
    if eip is not None:
        aws.call("ec2", region, "ReleaseAddress", AllocationId=eip["AllocationId"])
    for g in _named_groups(aws, doc):  # whose load balancer is already gone (a crashed delete)
        if not g.get("LoadBalancerArns"):
            aws.call("elbv2", region, "DeleteTargetGroup", TargetGroupArn=g["TargetGroupArn"])


def _named_groups(aws: Aws, doc: ClusterDoc) -> list[dict[str, Any]]:
    """Every target group named for the cluster, attached or not."""
    prefix = lb_name(doc)[:27] + "-"
    return [g for g in aws.paginate("elbv2", doc.spec.main_region, "DescribeTargetGroups", "TargetGroups",
                                    token_in="Marker", token_out="NextMarker")
            if g["TargetGroupName"].startswith(prefix)]


def leftovers(aws: Aws, doc: ClusterDoc) -> list[str]:
    """The load balancer and target groups still there (Elastic IPs are swept with the EC2 resources)."""
    region = doc.spec.main_region
    out = [f"{region}: load balancer {lb_name(doc)}"] if find_lb(aws, doc) is not None else []
    return out + [f"{region}: target group {g['TargetGroupName']}" for g in _named_groups(aws, doc)]
