"""Each cluster's own instance roles: `mesh-<cluster>-node` and `mesh-<cluster>-coordinator`.

Made by `cluster create` (each converge puts their policies back), removed by
`cluster delete`. Both are trusted by EC2, have an instance profile of the
same name, carry the cluster's tags and the permissions boundary
`mesh-instance-boundary` (made by `meshctl infra role create`; the cluster
role may make no role without it). Their policies (infra.policy.instance_document)
name only this cluster's parameters:

- node: read `/mesh/<cluster>/*` (the join parameters);
- coordinator: that, `/mesh-clusters/<cluster>/coordinator/*` (the CA key),
  and write `/mesh/<cluster>/join-token` (meshd publishes the rotated token).

A role of that name without this cluster's tags is never touched: the
create stops with the name and what to do.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from infra import policy
from infra.aws import Aws, AwsError
from infra.cluster.instances import TAG_CLUSTER, cluster_tags
from meshcore.errors import ConfigError, FailedPrecondition

IAM_REGION = "us-east-1"
EC2_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


def names(cluster: str) -> dict[str, bool]:
    """Role (and profile) name → whether it is the coordinators'."""
    return {policy.node_role(cluster): False, policy.coordinator_role(cluster): True}


def check_name(cluster: str) -> None:
    if len(cluster) > policy.MAX_CLUSTER_NAME:
        raise ConfigError(f"cluster name {cluster[:20]!r}… is too long for its instance role "
                          f"{policy.coordinator_role(cluster)[:30]!r}… (IAM allows 64 characters): use a cluster name "
                          f"of at most {policy.MAX_CLUSTER_NAME} characters")


def _missing(e: AwsError) -> bool:
    return e.aws_code == "NoSuchEntity"


def _get(aws: Aws, op: str, key: str, **kw: Any) -> dict | None:
    try:
        return aws.call("iam", IAM_REGION, op, **kw)[key]
    except AwsError as e:
        if _missing(e):
            return None
        raise


def _ours(item: dict, cluster: str) -> bool:
    t = {x["Key"]: x["Value"] for x in item.get("Tags", [])}
    return t.get(TAG_CLUSTER) == cluster and t.get(policy.TAG_MANAGED) == policy.MANAGED_BY


def _boundary(aws: Aws) -> str:
    account = aws.call("sts", IAM_REGION, "GetCallerIdentity")["Account"]
    return policy.boundary_arn(account)


def ensure(aws: Aws, cluster: str) -> tuple[str, ...]:
    """Create what is missing of both roles and profiles, and put their policies back."""
    check_name(cluster)
    boundary = None
    for name, coordinator in names(cluster).items():
        tags = cluster_tags(cluster, role="coordinator" if coordinator else "node")
        role = _get(aws, "GetRole", "Role", RoleName=name)
        if role is not None and not _ours(role, cluster):
            raise FailedPrecondition(f"IAM role {name} exists but is not cluster {cluster!r}'s (no {TAG_CLUSTER}="
                                     f"{cluster} tag): delete or rename it, or choose another cluster name")
        if role is None:
            boundary = boundary or _boundary(aws)
            aws.call("iam", IAM_REGION, "CreateRole", RoleName=name, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                     PermissionsBoundary=boundary, Tags=tags,
                     Description=f"mesh cluster {cluster}: {'coordinators' if coordinator else 'nodes'}")
        want = policy.instance_document(cluster, coordinator)
        have = _get(aws, "GetRolePolicy", "PolicyDocument", RoleName=name, PolicyName=policy.INSTANCE_POLICY) \
            if role is not None else None
        if (json.loads(urllib.parse.unquote(have)) if isinstance(have, str) else have) != want:
            aws.call("iam", IAM_REGION, "PutRolePolicy", RoleName=name, PolicyName=policy.INSTANCE_POLICY,
                     PolicyDocument=json.dumps(want))
        profile = _get(aws, "GetInstanceProfile", "InstanceProfile", InstanceProfileName=name)
        if profile is None:
            profile = aws.call("iam", IAM_REGION, "CreateInstanceProfile", InstanceProfileName=name,
                               Tags=tags)["InstanceProfile"]
        if not any(r.get("RoleName") == name for r in profile.get("Roles", [])):
            aws.call("iam", IAM_REGION, "AddRoleToInstanceProfile", InstanceProfileName=name, RoleName=name)
    return tuple(names(cluster))


def remove(aws: Aws, cluster: str) -> None:
    """Delete both profiles and roles (only this cluster's; `leftovers` says what is still there)."""
    for name in names(cluster):
        role = _get(aws, "GetRole", "Role", RoleName=name)
        if role is not None and not _ours(role, cluster):
            continue  # not ours: never touched, never reported as ours
        profile = _get(aws, "GetInstanceProfile", "InstanceProfile", InstanceProfileName=name)
        if profile is not None:
            for r in profile.get("Roles", []):
                aws.call("iam", IAM_REGION, "RemoveRoleFromInstanceProfile", InstanceProfileName=name,
                         RoleName=r["RoleName"])
            aws.call("iam", IAM_REGION, "DeleteInstanceProfile", InstanceProfileName=name)
        if role is not None:
            try:
                aws.call("iam", IAM_REGION, "DeleteRolePolicy", RoleName=name, PolicyName=policy.INSTANCE_POLICY)
            except AwsError as e:
                if not _missing(e):
                    raise
            aws.call("iam", IAM_REGION, "DeleteRole", RoleName=name)


def leftovers(aws: Aws, cluster: str) -> list[str]:
    out = []
    for name in names(cluster):
        role = _get(aws, "GetRole", "Role", RoleName=name)
        if role is not None and _ours(role, cluster):
            out.append(f"IAM role {name}")
        if _get(aws, "GetInstanceProfile", "InstanceProfile", InstanceProfileName=name) is not None \
                and (role is None or _ours(role, cluster)):
            out.append(f"instance profile {name}")
    return out
