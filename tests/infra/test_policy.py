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

from infra import policy, quotas
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
    rec = Recorder()
    clients: dict = {}  # every client of this test is made once, with the recorder on it
    account = AccountDouble({"eu-central-2": "DISABLED"}).start()
    request.addfinalizer(account.stop)
    aws = lambda cfg: make_aws(cfg, on_client=rec, clients=clients,  # noqa: E731
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
    # moto evaluates actions against resource "*" only (it derives no SSM parameter ARNs),
    # so the parameter statement's resource is widened here; the actions are the policy's own.
    def evaluable() -> dict:
        doc = policy.document(mesh)
        for st in doc["Statement"]:
            st["Resource"] = "*"
        return doc

    full = _user_with(iam, f"{mesh}-full", evaluable())
    doc = evaluable()
    doc["Statement"][1]["Action"].remove("ec2:AuthorizeSecurityGroupIngress")
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
    passing = [s for s in policy.cluster_document()["Statement"] if any(a.startswith("iam:") for a in s["Action"])]
    assert passing == [{"Sid": "MeshPassInstanceRoles", "Effect": "Allow", "Action": ["iam:PassRole"],
                        "Resource": ["arn:aws:iam::*:role/mesh-node", "arn:aws:iam::*:role/mesh-coordinator"],
                        "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}}]
