"""The policies' tag conditions, evaluated against the calls the builder really makes, on moto.

moto's IAM enforcement evaluates actions only: no condition of an identity
policy, and no EC2 or SSM resource ARN. This check fills that gap for the
conditions our policies use: it records every mutating EC2, load balancer and
IAM call (a botocore `before-parameter-build` hook on the clients under test) and, at
that moment, reads from moto the tags of each resource the call names. Then
each call must satisfy what the policy asks:

- a create carries the policy's request tags for every resource type it makes
  (`aws:RequestTag/...` in the create statement);
- every existing resource a call changes or uses carries the policy's
  resource tags (`aws:ResourceTag/...`), except where `policy.UNTAGGED` says
  why not (a cross-region peering's accepter side before it is accepted);
- an instance role is created with, and changed only while it has, the
  boundary `iam:PermissionsBoundary` names, and is passed to EC2 (by
  RunInstances and AddRoleToInstanceProfile) only with the tags the
  PassRole statement asks for.

The required values come from the policy document itself, so a policy and
code that drift apart fail here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3

from infra.aws import IAM_PREFIX

# what each create makes (the TagSpecifications resource types AWS authorizes with request tags)
CREATES = {
    "ec2:CreateVpc": ("vpc",), "ec2:CreateSubnet": ("subnet",), "ec2:CreateInternetGateway": ("internet-gateway",),
    "ec2:CreateRouteTable": ("route-table",), "ec2:CreateSecurityGroup": ("security-group",),
    "ec2:CreateVpcPeeringConnection": ("vpc-peering-connection",),
    "ec2:RunInstances": ("instance", "volume", "network-interface"), "ec2:AllocateAddress": ("elastic-ip",),
}
# parameters naming existing EC2 resources a call is authorized on
EC2_REFS = ("VpcId", "SubnetId", "GroupId", "RouteTableId", "InternetGatewayId", "VpcPeeringConnectionId",
            "AllocationId", "InstanceId")
EC2_REF_LISTS = ("InstanceIds", "SecurityGroupIds", "Resources")
ELB_REFS = ("LoadBalancerArn", "TargetGroupArn")
READ_VERBS = ("Describe", "Get", "List")


def _tags(items: Any) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or []}


@dataclass
class Call:
    action: str
    region: str
    request: dict[str, dict[str, str]]  # created resource type (or "*") → its request tags
    resources: dict[str, dict[str, str]]  # resource id → its tags when called
    params: dict[str, Any] = field(default_factory=dict)


class TagCheck:
    """Attach with `on_client=check` (as tests.infra.test_policy.Recorder); then `violations(doc)`."""

    def __init__(self, moto: str) -> None:
        self.moto = moto
        self.calls: list[Call] = []
        self.errors: list[str] = []
        self._admin: dict[tuple[str, str], Any] = {}

    def admin(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._admin:
            self._admin[key] = boto3.client(service, region_name=region, endpoint_url=self.moto)
        return self._admin[key]

    def __call__(self, client: Any) -> None:
        service = client.meta.service_model.service_name
        prefix = IAM_PREFIX.get(service, service)
        region = client.meta.region_name

        def before_call(model: Any, params: dict, **_: Any) -> None:
            action = f"{prefix}:{model.name}"
            if (prefix not in ("ec2", "elasticloadbalancing", "iam") and action != "ssm:SendCommand") \
                    or model.name.startswith(READ_VERBS):
                return
            try:
                self.calls.append(self._observe(action, region, params))
            except Exception as e:  # the call under test must go on; the check reports it
                self.errors.append(f"{action}: cannot read its resources' tags: {e}")

        client.meta.events.register("before-parameter-build", before_call)

    def _observe(self, action: str, region: str, params: dict) -> Call:
        request: dict[str, dict[str, str]] = {}
        for spec in params.get("TagSpecifications", []):
            request[spec["ResourceType"]] = _tags(spec["Tags"])
        if "Tags" in params:
            request["*"] = _tags(params["Tags"])
        resources: dict[str, dict[str, str]] = {}
        if action.startswith("ec2:") or action == "ssm:SendCommand":  # Run Command: on the instances named
            ids = [params[k] for k in EC2_REFS if k in params] + [i for k in EC2_REF_LISTS for i in params.get(k, [])]
            for rid in ids:
                out = self.admin("ec2", region).describe_tags(Filters=[{"Name": "resource-id", "Values": [rid]}])
                resources[rid] = _tags(out.get("Tags"))
            profile = params.get("IamInstanceProfile", {}).get("Name")
            if profile:  # the role RunInstances passes to EC2 (iam:PassRole)
                iam = self.admin("iam", "us-east-1")
                roles = iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Roles"]
                for r in roles:
                    got = iam.get_role(RoleName=r["RoleName"])["Role"]
                    resources["passed-role/" + r["RoleName"]] = _tags(got.get("Tags"))
        elif action.startswith("elasticloadbalancing:"):
            arns = [params[k] for k in ELB_REFS if k in params]
            if arns:
                out = self.admin("elbv2", region).describe_tags(ResourceArns=arns)["TagDescriptions"]
                resources.update({d["ResourceArn"]: _tags(d.get("Tags")) for d in out})
        elif action.startswith("iam:"):
            iam = self.admin("iam", "us-east-1")
            if "RoleName" in params and action != "iam:CreateRole":
                try:
                    role = iam.get_role(RoleName=params["RoleName"])["Role"]
                    tags = _tags(role.get("Tags"))
                    if role.get("PermissionsBoundary"):
                        tags["(boundary)"] = role["PermissionsBoundary"]["PermissionsBoundaryArn"]
                    resources["role/" + params["RoleName"]] = tags
                except iam.exceptions.NoSuchEntityException:
                    pass
            if "InstanceProfileName" in params and action != "iam:CreateInstanceProfile":
                try:
                    out = iam.get_instance_profile(InstanceProfileName=params["InstanceProfileName"])["InstanceProfile"]
                    resources["instance-profile/" + params["InstanceProfileName"]] = _tags(out.get("Tags"))
                except iam.exceptions.NoSuchEntityException:
                    pass
        return Call(action, region, request, resources, {k: params[k] for k in ("PermissionsBoundary",) if k in params})

    def violations(self, doc: dict, untagged_peering_accept: bool = True) -> list[str]:
        """What the recorded calls do that `doc`'s conditions would refuse on AWS."""
        def wanted(prefix: str) -> dict[str, str]:
            return {k.split("/", 1)[1]: v for st in doc["Statement"] if st["Sid"] in (
                "MeshCreateTagged", "MeshChangeOwn", "MeshLoadBalancerCreateTagged", "MeshLoadBalancerChangeOwn",
                "MeshInstanceRolesCreateTagged", "MeshInstanceRolesChangeOwn")
                for k, v in st.get("Condition", {}).get("StringEquals", {}).items() if k.startswith(prefix)}
        req, res = wanted("aws:RequestTag/"), wanted("aws:ResourceTag/")
        iam_by_tag = any(st["Sid"] == "MeshInstanceRolesChangeOwn" for st in doc["Statement"])
        passing = [st.get("Condition", {}) for st in doc["Statement"] if "iam:PassRole" in st["Action"]]
        pass_needs = {k.split("/", 1)[1] for cond in passing for op in ("StringEquals", "Null")
                      for k in cond.get(op, {}) if k.startswith("aws:ResourceTag/")}
        assert req and res, "the policy has no tag conditions to check"
        boundary = next((st["Condition"]["StringLike"]["iam:PermissionsBoundary"] for st in doc["Statement"]
                         if "iam:PermissionsBoundary" in st.get("Condition", {}).get("StringLike", {})), None)
        assert boundary or not iam_by_tag, "the instance roles are not bound by a boundary"
        out: list[str] = list(self.errors)
        for c in self.calls:
            if c.action.startswith("iam:") and not iam_by_tag:
                continue  # roles the policy binds by name (infra.profiles), not by tag
            for kind in CREATES.get(c.action, ()):
                if not req.items() <= c.request.get(kind, {}).items():
                    out.append(f"{c.action} creates a {kind} without the tags {req}")
            if c.action in ("elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup",
                            "iam:CreateRole", "iam:CreateInstanceProfile") \
                    and not req.items() <= c.request.get("*", {}).items():
                out.append(f"{c.action} without the tags {req}")
            if c.action == "iam:CreateRole" and boundary and c.params.get("PermissionsBoundary") != boundary.replace(
                    "*", "123456789012"):
                out.append(f"{c.action} without the boundary {boundary}")
            for rid, tags in c.resources.items():
                passed = rid.startswith("passed-role/") or (c.action == "iam:AddRoleToInstanceProfile"
                                                            and rid.startswith("role/"))
                if passed and pass_needs and not all(k in tags for k in pass_needs):
                    out.append(f"{c.action} passes {rid} without the tags {sorted(pass_needs)}")
                if rid.startswith("passed-role/"):
                    continue
                if untagged_peering_accept and rid.startswith("pcx-") and c.action in (
                        "ec2:AcceptVpcPeeringConnection", "ec2:CreateTags"):
                    continue  # policy.UNTAGGED: the accepter's side, tagged right after it is accepted
                if c.action == "ec2:CreateTags" and not res.items() <= tags.items():
                    out.append(f"{c.action} on {rid} that is not ours ({tags})")
                elif c.action != "ec2:CreateTags" and not res.items() <= tags.items():
                    out.append(f"{c.action} on {rid} in {c.region} without the tags {res} (has {tags})")
                if c.action in ("iam:PutRolePolicy", "iam:DeleteRolePolicy") and boundary \
                        and tags.get("(boundary)") != boundary.replace("*", "123456789012"):
                    out.append(f"{c.action} on {rid} without the boundary")
        return out
