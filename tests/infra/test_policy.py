"""The IAM policy covers every call the builder makes, and nothing it does not make.

Every boto3 operation is recorded through botocore's `before-call` event
while a scenario runs that reaches every code path: apply, drift repair,
a peering deleted by hand, extra resources left by a crashed run, a
changed and a dropped join parameter, a region removed, quotas, destroy.
Then moto evaluates the generated policy for real (IAM enforcement on):
with it, apply and destroy succeed; without one action, the error names it.
"""

from __future__ import annotations

import json

import boto3
import pytest

from infra import policy, profiles, quotas
from infra.aws import IAM_PREFIX
from infra.config import InfraConfig
from infra.destroy import destroy
from meshcore.errors import PermissionDenied
from testbed.doubles.account import AccountDouble
from tests.infra.helpers import by_tag, ec2, few_config


class Recorder:
    def __init__(self) -> None:
        self.actions: set[str] = set()

    def __call__(self, client) -> None:
        name = client.meta.service_model.service_name
        prefix = IAM_PREFIX.get(name, name)

        def before_call(model, **_: object) -> None:
            self.actions.add(f"{prefix}:{model.name}")

        client.meta.events.register("before-call", before_call)


def test_every_call_is_in_the_policy_and_every_action_is_called(moto, mesh, builder, make_aws, tmp_path,
                                                               quotas_double, request) -> None:
    from tests.infra.tagcheck import TagCheck

    rec, tagcheck = Recorder(), TagCheck(moto)
    clients: dict = {}  # every client of this test is made once, with the recorder on it
    account = AccountDouble({"eu-central-2": "DISABLED"}).start()
    request.addfinalizer(account.stop)
    aws = lambda cfg: make_aws(cfg, on_client=lambda c: (rec(c), tagcheck(c)), clients=clients,  # noqa: E731
                               endpoint_urls={"service-quotas": quotas_double.url, "account": account.url})
    (tmp_path / "token").write_text("a")
    base = few_config(mesh, instance_types=("trn2.48xlarge", "trn1.2xlarge"), meshd_address="10.4.0.4:1",
                      join_token_file=str(tmp_path / "token"), opt_in_regions=("eu-central-2",))
    from infra.regions import select_regions

    select_regions(base, aws(base))  # selection's own calls, recorded
    assert builder.apply(base, aws(base)).ok

    c = ec2(moto, "us-west-2")
    vpc = c.describe_vpcs(Filters=by_tag(mesh))["Vpcs"][0]["VpcId"]
    tags = [{"Key": "mesh:name", "Value": mesh}, {"Key": "managed-by", "Value": "meshctl"}]
    # a crashed run's extras: a subnet outside the plan, a second route table; drift: a rule, a peering
    c.create_subnet(VpcId=vpc, CidrBlock="10.31.224.0/19",
                    TagSpecifications=[{"ResourceType": "subnet", "Tags": tags}])
    c.create_route_table(VpcId=vpc, TagSpecifications=[{"ResourceType": "route-table", "Tags": tags}])
    sg = c.describe_security_groups(Filters=by_tag(mesh))["SecurityGroups"][0]["GroupId"]
    c.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    pcx = c.describe_vpc_peering_connections(Filters=by_tag(mesh))["VpcPeeringConnections"]
    live = [p for p in pcx if p["RequesterVpcInfo"]["VpcId"] == vpc and p["Status"]["Code"] == "active"]
    c.delete_vpc_peering_connection(VpcPeeringConnectionId=live[0]["VpcPeeringConnectionId"])
    (tmp_path / "token").write_text("b")
    assert builder.apply(base, aws(base)).ok
    # drop a parameter and a region
    smaller = few_config(mesh, instance_types=("trn2.48xlarge",), meshd_address="10.4.0.4:1",
                         opt_in_regions=("eu-central-2",))
    result = builder.apply(smaller, aws(smaller))
    assert result.ok, (result.failed, result.leftovers)
    qcfg = InfraConfig(name=mesh, instance_types=("trn2.48xlarge",))
    quotas.request(qcfg, aws(qcfg), builder.selection(qcfg), sleep=lambda s: None, interval_s=0)
    assert destroy(smaller, aws(smaller)).complete

    assert account.statuses["eu-central-2"] == "ENABLING"
    allowed = policy.actions(quotas=True, opt_in=True)
    implied = {a for called in rec.actions for a in policy.IMPLIED.get(called, ())}
    uncovered = rec.actions - allowed
    assert not uncovered, f"calls missing from the policy: {sorted(uncovered)}"
    unused = allowed - rec.actions - implied
    assert not unused, f"policy actions never called: {sorted(unused)}"
    # and every call meets the policy's tag conditions (which moto does not evaluate)
    assert len(tagcheck.calls) > 20
    assert tagcheck.violations(policy.document(mesh, quotas=True, opt_in=True)) == []


def _user_with(iam, name: str, doc: dict) -> dict:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="mesh", PolicyDocument=json.dumps(doc))
    return iam.create_access_key(UserName=name)["AccessKey"]


def test_moto_iam_accepts_the_policy_and_names_a_missing_action(moto, mesh, builder, make_aws, iam_enforced,
                                                               tmp_path) -> None:
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto)
    (tmp_path / "token").write_text("t")
    cfg = few_config(mesh, meshd_address="10.4.0.4:1", join_token_file=str(tmp_path / "token"))
    builder.selection(cfg)  # made before enforcement, with the test's own credentials
    # moto evaluates actions against resource "*" only (it derives no EC2 or SSM ARNs) and evaluates
    # no condition of an identity policy (test_every_mutating_statement_is_bound_to_what_is_ours reads
    # them), so resources are widened here; the actions are the policy's own.
    def evaluable() -> dict:
        doc = policy.document(mesh)
        for st in doc["Statement"]:
            st["Resource"] = "*"
        return doc

    full = _user_with(iam, f"{mesh}-full", evaluable())
    doc = evaluable()
    for st in doc["Statement"]:
        if "ec2:AuthorizeSecurityGroupIngress" in st["Action"]:
            st["Action"].remove("ec2:AuthorizeSecurityGroupIngress")
    partial = _user_with(iam, f"{mesh}-partial", doc)

    per_user: dict[str, dict] = {}

    def as_user(key: dict):
        s = boto3.session.Session(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        return make_aws(cfg, session_factory=lambda: s, clients=per_user.setdefault(key["AccessKeyId"], {}))

    iam_enforced()
    with pytest.raises(PermissionDenied) as e:
        builder.apply(cfg, as_user(partial))
    assert "ec2:AuthorizeSecurityGroupIngress" in str(e.value) and "meshctl infra policy" in str(e.value)
    result = builder.apply(cfg, as_user(full))
    assert result.ok, result.failed
    assert builder.plan(cfg, as_user(full)).empty
    assert destroy(cfg, as_user(full)).complete


def test_join_parameters_are_scoped_to_the_mesh_path() -> None:
    doc = policy.document("lmrun")
    ssm = [s for s in doc["Statement"] if s["Sid"] == "MeshJoinParameters"][0]
    assert ssm["Resource"] == "arn:aws:ssm:*:*:parameter/mesh/lmrun/*"
    assert not any(a.startswith("servicequotas:") for s in doc["Statement"] for a in s["Action"])
    assert json.loads(policy.render("lmrun", quotas=True))["Statement"][-1]["Sid"] == "MeshQuotas"
    # the builder's IAM: only the instance profiles named for this mesh (SkyPilot launches VMs with them)
    iam = [s for s in doc["Statement"] if any(a.startswith("iam:") for a in s["Action"])]
    assert [s["Sid"] for s in iam] == ["MeshInstanceProfiles"]
    assert iam[0]["Resource"] == ["arn:aws:iam::*:role/mesh-lmrun-*", "arn:aws:iam::*:instance-profile/mesh-lmrun-*"]
    assert "iam:PassRole" not in iam[0]["Action"]
    assert not any(a.startswith("iam:") for s in policy.document("lmrun", sky=False)["Statement"] for a in s["Action"])
    passing = [s for s in policy.cluster_document()["Statement"] if "iam:PassRole" in s["Action"]]
    assert passing == [{"Sid": "MeshPassInstanceRoles", "Effect": "Allow", "Action": ["iam:PassRole"],
                        "Resource": ["arn:aws:iam::*:role/mesh-*-node", "arn:aws:iam::*:role/mesh-*-coordinator"],
                        "Condition": {"StringEqualsIfExists": {"iam:PassedToService": "ec2.amazonaws.com"},
                                      "StringEquals": {"aws:ResourceTag/managed-by": "meshctl"},
                                      "Null": {"aws:ResourceTag/mesh:cluster": "false"}}}]
    # the boundary is matched as a pattern: `meshctl infra policy --clusters` does not know the account
    bounded = [s for s in policy.cluster_document()["Statement"] if "iam:CreateRole" in s["Action"]]
    assert bounded[0]["Condition"]["StringLike"] == {
        "iam:PermissionsBoundary": "arn:aws:iam::*:policy/mesh-instance-boundary"}


# -- every change is bound to what is ours ---------------------------------------------

READ_VERBS = ("Describe", "Get", "List")
TAG_KEYS = {"mesh:name", "mesh:cluster", "managed-by", "mesh"}  # "mesh": SkyPilot's label (infra.profiles)


def _mutating(action: str) -> bool:
    service, op = action.split(":")
    return service in ("ec2", "elasticloadbalancing", "iam", "ssm") and not op.startswith(READ_VERBS)


def _tag_bound(cond: dict) -> bool:
    """A condition that holds only for our tags (on the resource, in the request) or our boundary."""
    keys = {k for op in cond.values() for k in op}
    tags = {k.split("/", 1)[1] for k in keys
            if k.startswith(("aws:ResourceTag/", "aws:RequestTag/", "ssm:resourceTag/"))}
    return bool(tags & TAG_KEYS) or "iam:PermissionsBoundary" in keys or "iam:PassedToService" in keys


def _arn_bound(resource, mesh: str | None) -> bool:
    """Every resource names a mesh path or mesh role: /mesh/<mesh>/ (or any cluster's /mesh/, /mesh-clusters/
    for the cross-account role), roles and profiles named mesh-<mesh>-… (or mesh-*-node/-coordinator)."""
    items = resource if isinstance(resource, list) else [resource]
    if mesh is None:
        ok = ("arn:aws:ssm:*:*:parameter/mesh/", "arn:aws:ssm:*:*:parameter/mesh-clusters/",
              "arn:aws:iam::*:role/mesh-*-", "arn:aws:iam::*:instance-profile/mesh-*-")
    else:
        ok = (f"arn:aws:ssm:*:*:parameter/mesh/{mesh}/", f"arn:aws:iam::*:role/mesh-{mesh}-",
              f"arn:aws:iam::*:instance-profile/mesh-{mesh}-")
    return all(r.startswith(ok) for r in items)


@pytest.mark.parametrize("which", ["builder", "builder-all", "cluster", "instance-node", "instance-coordinator",
                                   "boundary", "jobs-controller"])
def test_every_mutating_statement_is_bound_to_what_is_ours(which: str) -> None:
    """Walk every Allow statement with an action that changes something (EC2, load balancers, IAM, SSM):
    it has a tag condition on our keys (or the instance roles' boundary, or passes only to EC2), or
    each of its resources names the mesh's own path or roles. moto cannot check this: it evaluates no
    condition of an identity policy and derives no EC2 or SSM resource ARNs (see the tests above)."""
    mesh = "lmrun"
    doc, bound_to = {
        "builder": (policy.document(mesh), mesh), "builder-all": (policy.document(mesh, True, True), mesh),
        "cluster": (policy.cluster_document(True, "123456789012"), None),
        "instance-node": (policy.instance_document(mesh, False), mesh),
        "instance-coordinator": (policy.instance_document(mesh, True), mesh),
        "boundary": (policy.boundary_document(), None),
        "jobs-controller": (profiles.jobs_controller_document(mesh), mesh)}[which]
    checked = 0
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow" and "NotAction" not in st and "NotResource" not in st
        changes = [a for a in st["Action"] if _mutating(a) or ("*" in a and not a.split(":")[1].startswith(
            READ_VERBS))]
        if not changes:
            continue
        assert not any("*" in a for a in changes), f"{st['Sid']}: wildcard action"
        checked += 1
        if st["Sid"] in policy.UNTAGGED:
            # one resource type each; only the SSM agent's channel names none (AWS defines no resource for it)
            assert (st["Resource"] != "*" and not isinstance(st["Resource"], list)) or st["Sid"] == "MeshProfileSwitch"
            continue
        assert _tag_bound(st.get("Condition", {})) or _arn_bound(st["Resource"], bound_to), \
            f"{which}: statement {st['Sid']} lets {changes} change what is not ours"
    assert checked or which == "instance-node", "the walk saw no change at all"
    if which == "instance-node":
        assert checked == 0, "a plain node changes nothing in AWS"


def test_the_tag_conditions_name_the_tags_the_builder_sets() -> None:
    """The keys the policies bind to are the ones every create carries (infra.state, infra.cluster.instances)."""
    from infra.cluster.instances import TAG_CLUSTER, cluster_tags
    from infra.state import MANAGED_BY, TAG_MANAGED, TAG_NAME, tags
    assert (policy.TAG_MESH, policy.TAG_MANAGED, policy.MANAGED_BY, policy.TAG_CLUSTER) == (
        TAG_NAME, TAG_MANAGED, MANAGED_BY, TAG_CLUSTER)
    builder = {k.split("/", 1)[1]: v for st in policy.document("m")["Statement"]
               for op in st.get("Condition", {}).values() for k, v in op.items() if k.startswith("aws:")}
    assert builder == {t["Key"]: t["Value"] for t in tags("m")}
    cluster = {k.split("/", 1)[1]: v for st in policy.cluster_document()["Statement"]
               for k, v in st.get("Condition", {}).get("StringEquals", {}).items() if k.startswith("aws:")}
    assert cluster.items() <= {t["Key"]: t["Value"] for t in cluster_tags("c")}.items()
    # a node's role reads its own cluster's parameters and nothing of the coordinators'
    node = json.dumps(policy.instance_document("c1", coordinator=False))
    assert "parameter/mesh/c1/*" in node and "mesh-clusters" not in node and "PutParameter" not in node
    coord = json.dumps(policy.instance_document("c1", coordinator=True))
    assert "parameter/mesh-clusters/c1/coordinator/*" in coord and "parameter/mesh/c1/join-token" in coord
