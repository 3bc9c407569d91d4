"""Instance profiles for the mesh's VMs, made by `meshctl infra apply`.

SkyPilot launches VMs with the instance profile `sky/config.yaml` names
(`aws.remote_identity`, by cluster-name pattern), so the profiles must
exist before the first `sky launch`. Three per mesh, all trusted by EC2:

- `mesh-<name>-main`: the main node; reads and writes the join parameters
  under `/mesh/<name>/` (its setup stores meshd's addresses and the fleet's
  join token);
- `mesh-<name>-node`: every other VM; reads them;
- `mesh-<name>-jobs-controller`: SkyPilot's managed-jobs controller, which
  launches, stops and terminates the jobs' VMs: what SkyPilot's minimal AWS
  permissions list, bound to this mesh (instances created with the mesh's
  `mesh` label as a tag and changed only while they carry it, launched only
  into the mesh's own subnets and groups, with `mesh-<name>-node` and no
  other role), instead of the user's own credentials.

IAM is global, so these are planned as changes of the main region. A role of
that name that is not tagged for this mesh is never touched: the plan stops
with the name and what to do. A role whose inline policy differs from ours
(edited by hand) is put back.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from infra.aws import Aws, AwsError
from infra.state import MANAGED_BY, TAG_MANAGED, TAG_NAME, tags
from meshcore.errors import ConfigError

IAM_REGION = "us-east-1"  # IAM is global; its endpoint answers in us-east-1
POLICY_NAME = "mesh-parameters"
EC2_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
READ = ("ssm:GetParameter", "ssm:GetParameters")
WRITE = ("ssm:PutParameter",)


def main_profile(mesh: str) -> str:
    return f"mesh-{mesh}-main"


def node_profile(mesh: str) -> str:
    return f"mesh-{mesh}-node"


def jobs_controller_profile(mesh: str) -> str:
    return f"mesh-{mesh}-jobs-controller"


#: the tag SkyPilot puts on every instance it launches, from sky/config.yaml's `aws.labels`
SKY_LABEL = "mesh"


def jobs_controller_document(mesh: str) -> dict:
    """SkyPilot's minimal AWS permissions for a jobs controller, bound to this mesh's tags and node role."""
    label = {f"aws:RequestTag/{SKY_LABEL}": mesh}
    ours = {f"aws:ResourceTag/{SKY_LABEL}": mesh}
    network = {f"aws:ResourceTag/{TAG_NAME}": mesh, f"aws:ResourceTag/{TAG_MANAGED}": MANAGED_BY}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "SkyDescribe", "Effect": "Allow", "Action": ["ec2:Describe*"], "Resource": "*"},
        {"Sid": "SkyLaunchTagged", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*"],
         "Condition": {"StringEquals": label}},
        {"Sid": "SkyLaunchIntoMeshNetwork", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": ["arn:aws:ec2:*:*:subnet/*", "arn:aws:ec2:*:*:security-group/*"],
         "Condition": {"StringEquals": network}},
        {"Sid": "SkyLaunchFromImages", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": "arn:aws:ec2:*::image/*"},
        {"Sid": "SkyLaunchInterfaces", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": "arn:aws:ec2:*:*:network-interface/*"},
        {"Sid": "SkyTagOnLaunch", "Effect": "Allow", "Action": ["ec2:CreateTags"], "Resource": "*",
         "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances", **label}}},
        {"Sid": "SkyChangeOwnInstances", "Effect": "Allow",
         "Action": ["ec2:CreateTags", "ec2:DeleteTags", "ec2:StartInstances", "ec2:StopInstances",
                    "ec2:TerminateInstances"],
         "Resource": "arn:aws:ec2:*:*:instance/*", "Condition": {"StringEquals": ours}},
        {"Sid": "SkyPassNodeRole", "Effect": "Allow", "Action": ["iam:PassRole"],
         "Resource": f"arn:aws:iam::*:role/{node_profile(mesh)}",
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
        {"Sid": "SkyReadNodeRole", "Effect": "Allow", "Action": ["iam:GetRole", "iam:GetInstanceProfile"],
         "Resource": [f"arn:aws:iam::*:role/{node_profile(mesh)}",
                      f"arn:aws:iam::*:instance-profile/{node_profile(mesh)}"]},
        {"Sid": "SkySpotServiceRole", "Effect": "Allow", "Action": ["iam:CreateServiceLinkedRole"],
         "Resource": "arn:aws:iam::*:role/aws-service-role/spot.amazonaws.com/*",
         "Condition": {"StringEquals": {"iam:AWSServiceName": "spot.amazonaws.com"}}},
    ]}


def documents(mesh: str) -> dict[str, dict]:
    """Profile name → its inline policy (the first two: this mesh's SSM path only)."""
    path = f"arn:aws:ssm:*:*:parameter/mesh/{mesh}/*"

    def doc(actions: tuple[str, ...]) -> dict:
        return {"Version": "2012-10-17", "Statement": [
            {"Sid": "MeshJoinParameters", "Effect": "Allow", "Action": sorted(actions), "Resource": path}]}

    return {main_profile(mesh): doc(READ + WRITE), node_profile(mesh): doc(READ),
            jobs_controller_profile(mesh): jobs_controller_document(mesh)}


def check_names(mesh: str) -> None:
    for name in documents(mesh):
        if len(name) > 64:
            raise ConfigError(f"mesh name {mesh!r} is too long for its instance profile {name!r} "
                              "(IAM allows 64 characters): use a mesh name of at most 55 characters")


@dataclass(frozen=True)
class ProfileState:
    name: str
    role: bool  # the role exists (and is ours)
    policy: dict | None  # its inline policy, as stored
    profile: bool  # the instance profile exists
    attached: bool  # the profile holds the role

    def complete(self, want: dict) -> bool:
        return self.role and self.profile and self.attached and self.policy == want


def _doc(raw: Any) -> dict | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = json.loads(urllib.parse.unquote(raw))
    return raw


def _missing(e: AwsError) -> bool:
    return e.aws_code == "NoSuchEntity"


def read_profiles(aws: Aws, mesh: str) -> dict[str, ProfileState]:
    out: dict[str, ProfileState] = {}
    for name in documents(mesh):
        try:
            role = aws.call("iam", IAM_REGION, "GetRole", RoleName=name)["Role"]
        except AwsError as e:
            if not _missing(e):
                raise
            role = None
        policy = None
        if role is not None:
            t = {x["Key"]: x["Value"] for x in role.get("Tags", [])}
            if t.get(TAG_NAME) != mesh or t.get(TAG_MANAGED) != MANAGED_BY:
                raise ConfigError(f"IAM role {name} exists but is not mesh {mesh!r}'s (no {TAG_NAME}={mesh} tag): "
                                  "delete or rename it, or choose another mesh name")
            try:
                policy = _doc(aws.call("iam", IAM_REGION, "GetRolePolicy", RoleName=name,
                                       PolicyName=POLICY_NAME)["PolicyDocument"])
            except AwsError as e:
                if not _missing(e):
                    raise
        try:
            prof = aws.call("iam", IAM_REGION, "GetInstanceProfile", InstanceProfileName=name)["InstanceProfile"]
        except AwsError as e:
            if not _missing(e):
                raise
            prof = None
        out[name] = ProfileState(name, role is not None, policy, prof is not None,
                                 prof is not None and any(r.get("RoleName") == name for r in prof.get("Roles", [])))
    return out


def converge(aws: Aws, mesh: str, name: str, st: ProfileState) -> None:
    """Create what is missing of one profile and put its policy back."""
    doc = documents(mesh)[name]
    what = {main_profile(mesh): f"main node: read and write /mesh/{mesh}/ in SSM",
            node_profile(mesh): f"mesh VMs: read /mesh/{mesh}/ in SSM"}.get(
        name, "SkyPilot jobs controller: launch and end the mesh's job VMs")
    if not st.role:
        aws.call("iam", IAM_REGION, "CreateRole", RoleName=name, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                 Description=f"mesh {mesh} {what}", Tags=tags(mesh))
    if st.policy != doc:
        aws.call("iam", IAM_REGION, "PutRolePolicy", RoleName=name, PolicyName=POLICY_NAME,
                 PolicyDocument=json.dumps(doc))
    if not st.profile:
        aws.call("iam", IAM_REGION, "CreateInstanceProfile", InstanceProfileName=name)
    if not st.attached:
        aws.call("iam", IAM_REGION, "AddRoleToInstanceProfile", InstanceProfileName=name, RoleName=name)


def delete_profiles(aws: Aws, mesh: str) -> list[tuple[str, str | None]]:
    """Remove both profiles and roles (only ours). (resource, error or None) per step taken."""
    done: list[tuple[str, str | None]] = []

    def step(resource: str, op: str, **kw: Any) -> None:
        try:
            aws.call("iam", IAM_REGION, op, **kw)
            done.append((resource, None))
        except AwsError as e:
            if not _missing(e):
                done.append((resource, str(e)))

    try:
        states = read_profiles(aws, mesh)
    except ConfigError:
        return done  # a role of that name that is not ours: nothing of ours to delete
    for name, st in states.items():
        if st.attached:
            step(f"instance profile {name} ↔ role", "RemoveRoleFromInstanceProfile",
                 InstanceProfileName=name, RoleName=name)
        if st.profile:
            step(f"instance profile {name}", "DeleteInstanceProfile", InstanceProfileName=name)
        if st.role:
            if st.policy is not None:
                step(f"role policy {name}", "DeleteRolePolicy", RoleName=name, PolicyName=POLICY_NAME)
            step(f"role {name}", "DeleteRole", RoleName=name)
    return done
