"""Access to the user's account: the cross-account role, its external id, and assuming it.

`create_role` runs once with the user's own admin credentials (`meshctl infra
role create`) and makes:

- the cluster role (default `meshctl-clusters`): trusted by one principal
  (by default the IAM user or role running `role create`, never the whole
  account unless asked with `--trusted ACCOUNT`) only with the external id, carrying
  `policy.cluster_document()` inline; this is all `meshctl cluster …` ever
  uses, so no user with IAM rights is needed afterwards;
- the managed policy `mesh-instance-boundary`, the permissions boundary of
  every instance role the cluster role makes (infra.cluster.roles: one pair
  per cluster, `mesh-<cluster>-node` and `mesh-<cluster>-coordinator`, made
  by `cluster create` and removed by `cluster delete`): the cluster role may
  only create roles that carry it, so it can never hand a VM more than
  reading mesh parameters and publishing a join token.

The shared `mesh-node`/`mesh-coordinator` roles of earlier versions (which
read every cluster's parameters) are no longer made or used; VMs launched
with them keep them until replaced, and they may then be deleted by hand.

Re-running it converges (policies re-put, trust re-written) and keeps the
external id unless a new one is asked for.

`assume` always sends the external id. AWS answers AccessDenied without
saying why, whether the role is missing, trusts someone else, or wants
another external id; where the caller may read the role (GetRole), the
error says which it is.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Any

from infra import policy
from infra.aws import Aws, AwsError, SessionFactory
from infra.state import MANAGED_BY, TAG_MANAGED
from meshcore.errors import InvalidArgument, MeshError, PermissionDenied

ROLE_ARN = re.compile(r"^arn:aws(?:-[a-z]+)*:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$")
ROLE_ARN_RULE = "a role ARN looks like arn:aws:iam::123456789012:role/meshctl-clusters"
EXTERNAL_ID = re.compile(r"^[\w+=,.@:/-]{2,1224}$")
EXTERNAL_ID_RULE = "an external id is 2-1224 letters, digits or + = , . @ : / - _"
DEFAULT_ROLE = "meshctl-clusters"
IAM_REGION = "us-east-1"  # IAM is global; its endpoint answers in us-east-1
SESSION_S = 3600


def check_role_arn(arn: str) -> tuple[str, str]:
    """(account, role name) of a role ARN; InvalidArgument naming the rule."""
    m = ROLE_ARN.match(arn or "")
    if not m:
        raise InvalidArgument(f"invalid role ARN {arn!r}: {ROLE_ARN_RULE}")
    return m.group(1), m.group(2)


def check_external_id(external_id: str) -> str:
    if not EXTERNAL_ID.match(external_id or ""):
        raise InvalidArgument(f"invalid external id: {EXTERNAL_ID_RULE}")
    return external_id


def new_external_id() -> str:
    return secrets.token_hex(16)


def _trust_doc(raw: Any) -> dict:
    if isinstance(raw, str):
        raw = json.loads(urllib.parse.unquote(raw))
    return raw if isinstance(raw, dict) else {}


def trusted_external_ids(trust: Any) -> set[str]:
    ids: set[str] = set()
    for st in _trust_doc(trust).get("Statement", []):
        cond = st.get("Condition", {}).get("StringEquals", {}).get("sts:ExternalId")
        ids |= {cond} if isinstance(cond, str) else set(cond or [])
    return ids


def assume(base: Aws, role_arn: str, external_id: str, region: str, session_name: str = "meshctl") -> SessionFactory:
    """A session factory for the role, after checking both values locally and asking STS."""
    account, role = check_role_arn(role_arn)
    check_external_id(external_id)
    try:
        out = base.call("sts", region, "AssumeRole", RoleArn=role_arn, RoleSessionName=session_name,
                        ExternalId=external_id, DurationSeconds=SESSION_S)
    except PermissionDenied:
        raise PermissionDenied(_why_denied(base, role_arn, account, role, external_id, region)) from None
    creds = out["Credentials"]

    def session() -> Any:
        import boto3

        return boto3.session.Session(aws_access_key_id=creds["AccessKeyId"],
                                     aws_secret_access_key=creds["SecretAccessKey"],
                                     aws_session_token=creds["SessionToken"])
    return session


def _why_denied(base: Aws, arn: str, account: str, role: str, external_id: str, region: str) -> str:
    head = f"cannot assume role {arn}"
    generic = (f"{head}: AWS refused without saying why: the role ARN is wrong, the role does not trust "
               "you, or the external id is wrong (compare both with what `meshctl infra role create` printed)")
    try:
        me = base.call("sts", region, "GetCallerIdentity")
        if me.get("Account") != account:
            return generic
        found = base.call("iam", IAM_REGION, "GetRole", RoleName=role)["Role"]
    except AwsError as e:
        if e.aws_code == "NoSuchEntity":
            return f"{head}: wrong role ARN: account {account} has no role named {role!r}"
        return generic
    except MeshError:
        return generic  # not allowed to look: say what AWS said
    if found.get("Arn") and found["Arn"] != arn:
        return f"{head}: wrong role ARN: the role named {role!r} is {found['Arn']}"
    ids = trusted_external_ids(found.get("AssumeRolePolicyDocument"))
    if external_id not in ids:
        return f"{head}: wrong external id: role {role!r} trusts another external id"
    return (f"{head}: the external id is right, but the role does not trust your principal "
            f"({me.get('Arn', '?')}) or your principal may not call sts:AssumeRole")


@dataclass(frozen=True)
class RoleResult:
    role_arn: str
    external_id: str
    created: bool
    boundary: str  # the ARN of the instance roles' permissions boundary


def create_role(aws: Aws, name: str = DEFAULT_ROLE, trusted: str | None = None, external_id: str | None = None,
                quotas: bool = True) -> RoleResult:
    """Create or converge the cluster role and the instance roles' boundary (see the module docstring)."""
    if not re.match(r"^[\w+=,.@-]{1,64}$", name):
        raise InvalidArgument(f"invalid role name {name!r}: 1-64 letters, digits or + = , . @ - _")
    if external_id is not None:
        check_external_id(external_id)
    me = aws.call("sts", IAM_REGION, "GetCallerIdentity")
    principal = _principal(trusted) if trusted else caller_principal(me["Arn"])
    existing = _get_role(aws, name)
    created = existing is None
    if external_id is None:
        kept = sorted(trusted_external_ids(existing.get("AssumeRolePolicyDocument"))) if existing else []
        external_id = kept[0] if kept else new_external_id()
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": principal}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": external_id}}}]}
    tag = [{"Key": TAG_MANAGED, "Value": MANAGED_BY}]
    if existing is None:
        arn = aws.call("iam", IAM_REGION, "CreateRole", RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                       Description="meshctl cluster: builds mesh clusters in this account", Tags=tag)["Role"]["Arn"]
    else:
        arn = existing["Arn"]
        aws.call("iam", IAM_REGION, "UpdateAssumeRolePolicy", RoleName=name, PolicyDocument=json.dumps(trust))
    boundary = ensure_boundary(aws, me["Account"], tag)
    aws.call("iam", IAM_REGION, "PutRolePolicy", RoleName=name, PolicyName="mesh-clusters",
             PolicyDocument=json.dumps(policy.cluster_document(quotas, me["Account"])))
    return RoleResult(arn, external_id, created, boundary)


def ensure_boundary(aws: Aws, account: str, tag: list[dict]) -> str:
    """The managed policy `mesh-instance-boundary` with today's document (a new default version if it differs)."""
    arn, want = policy.boundary_arn(account), policy.boundary_document()
    try:
        found = aws.call("iam", IAM_REGION, "GetPolicy", PolicyArn=arn)["Policy"]
    except AwsError as e:
        if e.aws_code != "NoSuchEntity":
            raise
        aws.call("iam", IAM_REGION, "CreatePolicy", PolicyName=policy.INSTANCE_BOUNDARY,
                 PolicyDocument=json.dumps(want), Tags=tag,
                 Description="mesh instance roles: the most they may ever do (read mesh parameters, publish a "
                             "join token)")
        return arn
    current = aws.call("iam", IAM_REGION, "GetPolicyVersion", PolicyArn=arn,
                       VersionId=found["DefaultVersionId"])["PolicyVersion"]
    if _trust_doc(current.get("Document")) == want:
        return arn
    versions = aws.call("iam", IAM_REGION, "ListPolicyVersions", PolicyArn=arn).get("Versions", [])
    old = sorted((v for v in versions if not v.get("IsDefaultVersion")), key=lambda v: str(v.get("CreateDate")))
    if len(versions) >= 5 and old:  # IAM keeps at most five versions
        aws.call("iam", IAM_REGION, "DeletePolicyVersion", PolicyArn=arn, VersionId=old[0]["VersionId"])
    aws.call("iam", IAM_REGION, "CreatePolicyVersion", PolicyArn=arn, PolicyDocument=json.dumps(want),
             SetAsDefault=True)
    return arn


def caller_principal(arn: str) -> str:
    """The IAM principal a trust policy names for the caller: an assumed-role session is its role."""
    m = re.match(r"^arn:(aws(?:-[a-z]+)*):sts::(\d{12}):assumed-role/([\w+=,.@-]+)/", arn)
    if m:
        return f"arn:{m.group(1)}:iam::{m.group(2)}:role/{m.group(3)}"
    m = re.match(r"^arn:(aws(?:-[a-z]+)*):(?:iam|sts)::(\d{12}):(user|role)/(.+)$", arn)
    if m:
        return f"arn:{m.group(1)}:iam::{m.group(2)}:{m.group(3)}/{m.group(4)}"
    if arn.endswith(":root"):
        return arn
    raise InvalidArgument(f"cannot name {arn} in a trust policy: pass --trusted with an account id or an IAM ARN")


def _principal(trusted: str) -> str:
    if re.match(r"^\d{12}$", trusted):
        return f"arn:aws:iam::{trusted}:root"
    if re.match(r"^arn:aws(?:-[a-z]+)*:(iam|sts)::\d{12}:", trusted):
        return trusted
    raise InvalidArgument(f"invalid trusted principal {trusted!r}: an account id (12 digits) or an IAM ARN")


def _get_role(aws: Aws, name: str) -> dict | None:
    try:
        return aws.call("iam", IAM_REGION, "GetRole", RoleName=name)["Role"]
    except AwsError as e:
        if e.aws_code == "NoSuchEntity":
            return None
        raise


def delete_role(aws: Aws, name: str = DEFAULT_ROLE) -> bool:
    """Remove the cluster role (the boundary stays: clusters' instance roles carry it). False if absent."""
    if _get_role(aws, name) is None:
        return False
    for pol in aws.call("iam", IAM_REGION, "ListRolePolicies", RoleName=name).get("PolicyNames", []):
        aws.call("iam", IAM_REGION, "DeleteRolePolicy", RoleName=name, PolicyName=pol)
    aws.call("iam", IAM_REGION, "DeleteRole", RoleName=name)
    return True
