"""A cluster's instances as desired state: slots, found by tags, launched or terminated to match.

A slot is one instance the spec asks for, with a stable name that is also
its mesh node name:

- cost-savings: `coordinator-0` (meshd on SQLite, the mesh's hub);
- performance: `replica-0..2` (meshd on an etcd cluster of the three);
- warm capacity: `warm-<type>-<i>` for each `overprovisioned_ondemand_count`.

Coordinators sit in the main region's subnets, one zone each, at fixed
private addresses near the top of the subnet, away from where EC2 hands out
addresses (a replacement gets the same one, so etcd's member list and the
load balancer's targets never change). Instances are tagged
`mesh:cluster`, `managed-by`, `mesh:slot` and `mesh:role` in RunInstances
itself (instance, volume and network interface: the cluster role may change
nothing without those tags), found by them, run with their cluster's own
instance profile (infra.cluster.roles), and launched with a ClientToken derived from
cluster, spec version, slot and type, so a create re-run after a crash never
launches a slot twice. An instance whose type no longer matches its slot is replaced.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from importlib import resources
from typing import Any

from infra.aws import Aws
from infra.cluster.spec import COST_SAVINGS, ClusterDoc, ClusterSpec
from infra.state import MANAGED_BY, TAG_MANAGED, RegionState
from meshcore.defaults import MESHD_PORT
from meshcore.errors import FailedPrecondition

TAG_CLUSTER = "mesh:cluster"
LIVE = ("pending", "running", "stopping", "stopped")
COORDINATOR_ROLES = ("coordinator", "replica")


def cluster_tags(name: str, **extra: str) -> list[dict[str, str]]:
    t = [{"Key": TAG_CLUSTER, "Value": name}, {"Key": TAG_MANAGED, "Value": MANAGED_BY}]
    return t + [{"Key": f"mesh:{k}", "Value": v} for k, v in sorted(extra.items())]


def cluster_filters(name: str) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{TAG_CLUSTER}", "Values": [name]}, {"Name": f"tag:{TAG_MANAGED}", "Values": [MANAGED_BY]}]


def tag_of(item: dict[str, Any], key: str) -> str:
    return next((t["Value"] for t in item.get("Tags", []) if t["Key"] == key), "")


@dataclass(frozen=True)
class Slot:
    name: str
    role: str  # coordinator | replica | agent
    region: str
    instance_type: str
    zone: str = ""
    private_ip: str = ""


def coordinator_names(spec: ClusterSpec) -> list[str]:
    """The coordinator slots a profile has (also their mesh node names)."""
    return ["coordinator-0"] if spec.profile == COST_SAVINGS else [f"replica-{i}" for i in range(spec.replicas)]


def warm_name(instance_type: str, i: int) -> str:
    return f"warm-{instance_type.replace('.', '-')}-{i}"


def coordinator_slots(doc: ClusterDoc, main: RegionState) -> list[Slot]:
    subnets = sorted(main.subnets, key=lambda s: s.zone)
    if not subnets:
        raise FailedPrecondition(f"the main region {doc.spec.main_region} has no mesh subnets yet: "
                                 "the network must be applied first")
    spec = doc.spec
    if spec.profile == COST_SAVINGS:
        # not a replica's address: switching profiles must not wait for one to be released
        return [Slot(coordinator_names(spec)[0], "coordinator", spec.main_region, spec.coordinator_instance_type,
                     subnets[0].zone, fixed_address(subnets[0].cidr, 10))]
    out = []
    for i, name in enumerate(coordinator_names(spec)):
        sub = subnets[i % len(subnets)]
        out.append(Slot(name, "replica", spec.main_region, spec.coordinator_instance_type, sub.zone,
                        fixed_address(sub.cidr, i)))
    return out


def fixed_address(cidr: str, i: int) -> str:
    """The i-th coordinator address of a subnet: counted down from the top (AWS keeps the last one)."""
    return str(ipaddress.ip_network(cidr).broadcast_address - 10 - i)


def warm_slots(doc: ClusterDoc, offered: dict[str, tuple[str, ...]]) -> list[Slot]:
    """Warm instances go to the main region when it offers the type, else the first region that does."""
    out = []
    for t in doc.spec.instance_types:
        if not t.overprovisioned_ondemand_count:
            continue
        where = [r for r, types in sorted(offered.items()) if t.name in types]
        if not where:
            raise FailedPrecondition(f"instance type {t.name} is offered in none of the cluster's regions")
        region = doc.spec.main_region if doc.spec.main_region in where else where[0]
        out += [Slot(warm_name(t.name, i), "agent", region, t.name) for i in range(t.overprovisioned_ondemand_count)]
    return out


def hub(doc: ClusterDoc) -> str:
    return coordinator_names(doc.spec)[0]


def find(aws: Aws, name: str, region: str) -> list[dict[str, Any]]:
    """The cluster's instances in `region` that are not terminated."""
    pages = aws.paginate("ec2", region, "DescribeInstances", "Reservations",
                         Filters=[*cluster_filters(name), {"Name": "instance-state-name", "Values": list(LIVE)}])
    return [i for r in pages for i in r.get("Instances", []) if tag_of(i, TAG_CLUSTER) == name]


def image(aws: Aws, doc: ClusterDoc, region: str) -> str:
    out = aws.call("ec2", region, "DescribeImages", Owners=[doc.spec.image_owner],
                   Filters=[{"Name": "name", "Values": [doc.spec.image_name]},
                            {"Name": "architecture", "Values": ["x86_64"]}, {"Name": "state", "Values": ["available"]}])
    images = sorted(out.get("Images", []), key=lambda i: i.get("CreationDate", ""))
    if not images:
        raise FailedPrecondition(f"no image named {doc.spec.image_name!r} from owner {doc.spec.image_owner} in "
                                 f"{region}: change image_owner/image_name with `meshctl cluster edit`")
    return images[-1]["ImageId"]


def user_data(doc: ClusterDoc, slot: Slot, coordinator: str, etcd_cluster: str, await_import: bool = False) -> str:
    """The first-boot script; `await_import`: a coordinator of a profile switch, whose meshd serves only
    once the old coordinators' store is copied in (infra.cluster.switch)."""
    text = resources.files("infra.cluster").joinpath("userdata.sh").read_text()
    values = {"CLUSTER": doc.name, "ROLE": slot.role, "REGION": slot.region, "MAIN_REGION": doc.spec.main_region,
              "NODE_NAME": slot.name, "COORDINATOR": coordinator, "HUB": hub(doc),
              "ETCD_CLUSTER": etcd_cluster if slot.role == "replica" else "",
              "ETCD_NAME": slot.name.replace("replica-", "r") if slot.role == "replica" else "",
              "PRIVATE_IP": slot.private_ip, "PACKAGE": doc.spec.package, "MESHD_PORT": str(MESHD_PORT),
              "AWAIT_IMPORT": "1" if await_import and slot.role in COORDINATOR_ROLES else ""}
    for k, v in values.items():
        if "'" in v:
            raise FailedPrecondition(f"{k} must not contain a quote: {v!r}")
        text = text.replace(f"@@{k}@@", v)
    if "@@" in text:
        raise AssertionError("userdata.sh has a placeholder that is not filled")
    return text


def etcd_members(slots: list[Slot]) -> str:
    return ",".join(f"{s.name.replace('replica-', 'r')}=https://{s.private_ip}:2380" for s in slots if s.role == "replica")


def client_token(doc: ClusterDoc, slot: Slot) -> str:
    # With the spec version: EC2 answers a token it saw (for a day after termination) with that
    # instance, so switching a profile back must not reuse the token of the slot's terminated instance.
    return hashlib.sha256(f"{doc.id}/{doc.version}/{slot.name}/{slot.instance_type}".encode()).hexdigest()[:64]


def profile_name(doc: ClusterDoc, role: str) -> str:
    """The instance profile (and its role, of the same name) of a slot role: the cluster's own (infra.cluster.roles)."""
    from infra.policy import coordinator_role, node_role

    return coordinator_role(doc.name) if role in COORDINATOR_ROLES else node_role(doc.name)


def launch(aws: Aws, doc: ClusterDoc, slot: Slot, subnet: str, groups: list[str], image_id: str,
           data: str) -> str:
    profile = profile_name(doc, slot.role)
    params: dict[str, Any] = dict(
        ImageId=image_id, InstanceType=slot.instance_type, MinCount=1, MaxCount=1, SubnetId=subnet,
        SecurityGroupIds=groups, IamInstanceProfile={"Name": profile}, UserData=data,
        ClientToken=client_token(doc, slot), MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
        TagSpecifications=[{"ResourceType": kind, "Tags": cluster_tags(doc.name, slot=slot.name, role=slot.role)
                            + [{"Key": "Name", "Value": f"{doc.name}/{slot.name}"}]}
                           for kind in ("instance", "volume", "network-interface")])
    if slot.private_ip:
        params["PrivateIpAddress"] = slot.private_ip
    return aws.call("ec2", slot.region, "RunInstances", **params)["Instances"][0]["InstanceId"]


def terminate(aws: Aws, region: str, ids: list[str]) -> None:
    if ids:
        aws.call("ec2", region, "TerminateInstances", InstanceIds=sorted(ids))


def matches(instance: dict[str, Any], slot: Slot) -> bool:
    return (instance.get("InstanceType") == slot.instance_type
            and (not slot.private_ip or instance.get("PrivateIpAddress") == slot.private_ip))
