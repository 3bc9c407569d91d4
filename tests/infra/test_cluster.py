"""Clusters in the user's own account, on a moto server with an STS that enforces the external id.

The lifecycle (create, re-run, status, edit, delete and sweep) runs through
the assumed cluster role; faults are injected per AWS operation through
botocore's before-call event (a refused RunInstances, throttled calls, a
delete that dies halfway) and re-running the same command must converge.
"""

from __future__ import annotations

import dataclasses
import io
import re
import datetime as dt
import json
import urllib.parse
import subprocess
from typing import Any

import boto3
import pytest

from infra.cluster import access, instances
from infra.cluster.lifecycle import create, delete, edit
from infra.cluster.registry import Registry
from infra.cluster.spec import ClusterSpec, InstanceTypeSpec, from_yaml
from infra.cluster.status import status
from meshctl.progress import Printer
from meshcore.errors import (AlreadyExists, ConfigError, FailedPrecondition, InvalidArgument, PermissionDenied,
                             Unavailable)
from tests.infra.conftest import TEST_IMAGE
from tests.infra.helpers import FEW, FEW_REGIONS, tagged

LATER = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)  # past every boot window


def spec(**kw: Any) -> ClusterSpec:
    kw.setdefault("instance_types", (InstanceTypeSpec(FEW[0], 1),))
    return ClusterSpec(**TEST_IMAGE, **kw)


class _Http:
    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: dict = {}
        self.content = b""


class Faults:
    """Errors for chosen operations, consumed in order (a botocore before-call hook)."""

    def __init__(self) -> None:
        self.plan: dict[str, list[tuple[str, int]]] = {}
        self.seen: list[str] = []

    def fail(self, operation: str, code: str, times: int = 1, status: int = 400) -> None:
        self.plan.setdefault(operation, []).extend([(code, status)] * times)

    def __call__(self, client: Any) -> None:
        def before_call(model: Any, **_: Any) -> Any:
            self.seen.append(model.name)
            queue = self.plan.get(model.name)
            if queue:
                code, st = queue.pop(0)
                return _Http(st), {"Error": {"Code": code, "Message": "injected"},
                                   "ResponseMetadata": {"HTTPStatusCode": st}}
            return None
        client.meta.events.register("before-call", before_call)


def ec2(moto: str, region: str = "us-east-1") -> Any:
    return boto3.client("ec2", region_name=region, endpoint_url=moto)


def live(moto: str, name: str, region: str = "us-east-1") -> dict[str, dict]:
    out = ec2(moto, region).describe_instances(Filters=[
        {"Name": "tag:mesh:cluster", "Values": [name]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
    return {instances.tag_of(i, "mesh:slot"): i for r in out["Reservations"] for i in r["Instances"]}


# -- the role and the external id ---------------------------------------------------

def test_role_create_converges_and_keeps_its_external_id(base_aws, cluster_role, moto) -> None:
    again = access.create_role(base_aws)
    assert not again.created and again.role_arn == cluster_role.role_arn
    assert again.external_id == cluster_role.external_id
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto)
    role = iam.get_role(RoleName="meshctl-clusters")["Role"]
    assert access.trusted_external_ids(role["AssumeRolePolicyDocument"]) == {cluster_role.external_id}
    trust = role["AssumeRolePolicyDocument"]
    trust = trust if isinstance(trust, dict) else json.loads(urllib.parse.unquote(trust))
    me = boto3.client("sts", region_name="us-east-1", endpoint_url=moto).get_caller_identity()["Arn"]
    assert [st["Principal"]["AWS"] for st in trust["Statement"]] == [access.caller_principal(me)]  # not :root
    doc = iam.get_role_policy(RoleName="meshctl-clusters", PolicyName="mesh-clusters")["PolicyDocument"]
    from infra.policy import boundary_document, cluster_document
    assert (doc if isinstance(doc, dict) else json.loads(doc)) == cluster_document(quotas=True, account="123456789012")
    # no shared instance roles: each cluster makes its own, bounded by the boundary made here
    assert cluster_role.boundary == "arn:aws:iam::123456789012:policy/mesh-instance-boundary"
    found = iam.get_policy(PolicyArn=cluster_role.boundary)["Policy"]
    version = iam.get_policy_version(PolicyArn=cluster_role.boundary, VersionId=found["DefaultVersionId"])
    raw = version["PolicyVersion"]["Document"]
    assert (raw if isinstance(raw, dict) else json.loads(urllib.parse.unquote(raw))) == boundary_document()
    assert found["DefaultVersionId"] == "v1", "an unchanged boundary is not versioned again"
    # a second role with a fresh external id, removed again
    other = access.create_role(base_aws, "meshctl-other", external_id="fresh-id-123")
    assert other.external_id == "fresh-id-123" and other.created
    assert access.delete_role(base_aws, "meshctl-other") and not access.delete_role(base_aws, "meshctl-other")


def test_wrong_external_id_or_role_arn_is_named_and_the_external_id_is_always_sent(base_aws, cluster_role,
                                                                                   sts) -> None:
    before = len(sts.requests)
    with pytest.raises(PermissionDenied, match="wrong external id"):
        access.assume(base_aws, cluster_role.role_arn, "not-the-id", "us-east-1")
    with pytest.raises(PermissionDenied, match="wrong role ARN: account 123456789012 has no role named 'nobody'"):
        access.assume(base_aws, "arn:aws:iam::123456789012:role/nobody", cluster_role.external_id, "us-east-1")
    with pytest.raises(PermissionDenied, match="AWS refused without saying why"):
        access.assume(base_aws, "arn:aws:iam::210987654321:role/meshctl-clusters", cluster_role.external_id,
                      "us-east-1")
    sent = [r for r in sts.requests[before:] if r.get("Action") == "AssumeRole"]
    assert len(sent) == 3 and all(r.get("ExternalId") for r in sent)
    n = len(sts.requests)
    with pytest.raises(InvalidArgument, match="role ARN looks like"):
        access.assume(base_aws, "arn:aws:iam::123:user/x", cluster_role.external_id, "us-east-1")
    with pytest.raises(InvalidArgument, match="external id is 2-1224"):
        access.assume(base_aws, cluster_role.role_arn, "has space", "us-east-1")
    assert len(sts.requests) == n, "malformed values must be refused before any call"
    factory = access.assume(base_aws, cluster_role.role_arn, cluster_role.external_id, "us-east-1")
    assert factory().get_credentials().access_key.startswith("ASIA")


# -- lifecycle ------------------------------------------------------------------------

def test_create_rerun_status_and_delete_leave_nothing(cluster_ops, moto, mesh) -> None:
    ops = cluster_ops()
    name = f"{mesh}.perf"
    res = create(ops, name, spec())
    # the cluster's Elastic IP, as in cost-savings: held by the load balancer, so a switch keeps it
    eips = ec2(moto).describe_addresses(Filters=[{"Name": "tag:mesh:cluster", "Values": [name]}])["Addresses"]
    assert len(eips) == 1 and res.address == f"{eips[0]['PublicIp']}:7443"
    slots = live(moto, name)
    assert sorted(slots) == ["replica-0", "replica-1", "replica-2", f"warm-{FEW[0].replace('.', '-')}-0"]
    ips = sorted(slots[f"replica-{i}"]["PrivateIpAddress"] for i in range(3))
    assert len(set(ips)) == 3 and all(ip.startswith("10.4.") and ip.endswith((".245", ".244", ".243")) for ip in ips)
    # the cluster's own instance roles: nodes read only its join parameters, coordinators also its CA key
    # and may publish its join token; both bounded by the boundary `infra role create` made
    assert slots["replica-0"]["IamInstanceProfile"]["Arn"].endswith(f"/mesh-{name}-coordinator")
    assert slots[f"warm-{FEW[0].replace('.', '-')}-0"]["IamInstanceProfile"]["Arn"].endswith(f"/mesh-{name}-node")
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto)
    for role, coordinator in ((f"mesh-{name}-node", False), (f"mesh-{name}-coordinator", True)):
        got = iam.get_role(RoleName=role)["Role"]
        assert got["PermissionsBoundary"]["PermissionsBoundaryArn"].endswith(":policy/mesh-instance-boundary")
        assert {"Key": "mesh:cluster", "Value": name} in got["Tags"]
        raw = iam.get_role_policy(RoleName=role, PolicyName="mesh-parameters")["PolicyDocument"]
        pol = json.dumps(raw if isinstance(raw, dict) else json.loads(urllib.parse.unquote(raw)))
        assert f"parameter/mesh/{name}/*" in pol and "parameter/mesh/*" not in pol
        assert ("coordinator/" in pol) == coordinator and ("ssm:PutParameter" in pol) == coordinator
    data = ec2(moto).describe_instance_attribute(InstanceId=slots["replica-1"]["InstanceId"], Attribute="userData")
    import base64
    script = base64.b64decode(data["UserData"]["Value"]).decode()
    assert "ROLE='replica'" in script and f"COORDINATOR='{res.address}'" in script and "r2=https://" in script
    # join parameters for VMs in every selected region, the CA key only beside the coordinators
    for region in FEW_REGIONS:
        names = {p["Name"] for p in boto3.client("ssm", region_name=region, endpoint_url=moto).describe_parameters(
            ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [f"/mesh/{name}/"]}])["Parameters"]}
        assert names == {f"/mesh/{name}/{k}" for k in ("meshd-address", "ca-cert", "join-token")}
    # a re-run changes nothing
    again = create(ops, name, spec(), known_id=res.doc.id)
    assert not again.launched and not again.terminated
    # status: from what is there
    doc = Registry(ops.aws).get(name)
    assert status(ops.aws, doc, lambda t: True).status == "running"
    assert status(ops.aws, doc, lambda t: False).status == "provisioning"  # just launched: booting
    one_down = lambda t: t.split(":")[0] != (slots["replica-1"].get("PublicIpAddress")  # noqa: E731
                                               or slots["replica-1"]["PrivateIpAddress"])
    st = status(ops.aws, doc, one_down, now=LATER)
    assert st.status == "degraded" and "replica-1: meshd not answering" in st.reasons
    assert status(ops.aws, doc, lambda t: False, now=LATER).status == "failed"
    ec2(moto).terminate_instances(InstanceIds=[slots[f"warm-{FEW[0].replace('.', '-')}-0"]["InstanceId"]])
    st = status(ops.aws, doc, lambda t: True, now=LATER)
    assert st.status == "degraded" and st.reasons == [f"warm {FEW[0]}: 0/1 running"]
    # delete: everything goes, the sweep finds nothing, the document goes last
    gone = delete(ops, name)
    assert gone.leftovers == [] and len(gone.terminated) == 3
    assert not live(moto, name) and Registry(ops.aws).get(name) is None
    for region in FEW_REGIONS:
        assert tagged(moto, region, name) == []
    lbs = boto3.client("elbv2", region_name="us-east-1", endpoint_url=moto).describe_load_balancers()["LoadBalancers"]
    assert not [lb for lb in lbs if res.doc.id in lb["LoadBalancerName"]]


def test_cost_savings_has_one_coordinator_behind_an_elastic_ip(cluster_ops, moto, mesh) -> None:
    ops = cluster_ops()
    res = create(ops, mesh, spec(profile="cost-savings", instance_types=(InstanceTypeSpec(FEW[0]),)))
    slots = live(moto, mesh)
    assert list(slots) == ["coordinator-0"] and slots["coordinator-0"]["PrivateIpAddress"] == "10.4.31.235"
    eips = ec2(moto).describe_addresses(Filters=[{"Name": "tag:mesh:cluster", "Values": [mesh]}])["Addresses"]
    assert len(eips) == 1 and eips[0]["InstanceId"] == slots["coordinator-0"]["InstanceId"]
    assert res.address == f"{eips[0]['PublicIp']}:7443"

    # The delete's progress, as meshctl prints it to a log (not a terminal): one line per step.
    out, ticks = io.StringIO(), iter(range(10**6))
    ops.progress = Printer(out, tty=False, clock=lambda: next(ticks) / 10)
    assert delete(ops, mesh).leftovers == []
    lines = out.getvalue().splitlines()
    assert all(re.match(r"^\[ *\d+\.\ds\] \S", line) for line in lines), lines
    texts = [line.split("] ", 1)[1] for line in lines]
    phases = [t for t in texts if t.endswith(" ...")]
    assert phases == ["terminating instances ...", "address and coordinator security group ...",
                      "instance roles ...", "network ...",
                      "secrets, then a sweep for anything left ..."]
    assert f"us-east-1: terminating {slots['coordinator-0']['InstanceId']}" in texts
    assert any(t.startswith("us-east-1: deleted vpc") for t in texts), texts
    assert not ec2(moto).describe_addresses(Filters=[{"Name": "tag:mesh:cluster", "Values": [mesh]}])["Addresses"]


def test_create_shows_the_cost_of_both_profiles(cluster_ops, mesh) -> None:
    ops = cluster_ops()
    res = create(ops, mesh, spec(profile="cost-savings"))
    mine, other = res.estimates
    assert (mine.profile, other.profile) == ("cost-savings", "performance")
    coord, warm = 0.096, 1.34375  # the double's list prices: m6i.large, trn1.2xlarge in us-east-1
    assert mine.hour == pytest.approx(coord + warm + 2 * 0.005)
    assert other.hour == pytest.approx(3 * coord + warm + 0.0225 + 0.006 + (3 + 3 + 1) * 0.005)
    assert mine.day == pytest.approx(mine.hour * 24) and other.day > mine.day
    assert [ln.what for ln in mine.lines][:2] == ["coordinators: 1 × m6i.large (us-east-1)",
                                                  f"warm: 1 × {FEW[0]} (us-east-1)"]
    assert ops.aws.operations["pricing:GetProducts"] == 2, "one lookup per (type, region), then cached"
    from infra.cluster.costs import rows
    table = rows(res.estimates)
    assert table[-2]["item"] == "total (this spec)" and table[-1]["profile"] == "performance"
    assert delete(ops, mesh).leftovers == []


def test_a_quota_shortfall_stops_create_before_any_launch_and_names_the_request(cluster_ops, moto, mesh) -> None:
    from testbed.doubles.servicequotas import ServiceQuotasDouble

    low = ServiceQuotasDouble(default=10000.0).start()
    try:
        low.set("us-east-1", "L-2C3B7624", 4.0)  # Trn on-demand: 4 vCPUs, a trn1.2xlarge has 8
        faults = Faults()
        ops = cluster_ops(on_client=faults, endpoint_urls={"pricing": "http://127.0.0.1:9",
                                                           "service-quotas": low.url})
        with pytest.raises(FailedPrecondition) as e:
            create(ops, mesh, spec())
        msg = str(e.value)
        assert re.search(r"us-east-1 L-2C3B7624 \(Running On-Demand Trn instances\): 4 vCPUs, \d+ in use, "
                         r"needs 16 more", msg), msg
        assert f"meshctl quotas request --cluster {mesh}" in msg and "nothing was launched" in msg
        assert "RunInstances" not in faults.seen and "CreateVpc" not in faults.seen
        assert "GetProducts" not in faults.seen, "quotas are checked before anything is priced"
        assert "quota" in Registry(ops.aws).get(mesh).last_error
        assert tagged(moto, "us-east-1", mesh) == []
    finally:
        low.stop()
    assert delete(cluster_ops(), mesh).leftovers == []


def test_the_quota_check_counts_what_already_runs_and_a_rerun_asks_none(cluster_ops, moto, mesh) -> None:
    """EC2 refuses a launch when quota minus the on-demand vCPUs already running is too small, so
    the check subtracts them (an instance outside the cluster too); a re-run with every slot
    running launches nothing and asks no quota."""
    from infra.quotas import running_vcpus
    from testbed.doubles.servicequotas import ServiceQuotasDouble

    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto)
    image = ec2.describe_images(Owners=[TEST_IMAGE["image_owner"]],
                                Filters=[{"Name": "name", "Values": [TEST_IMAGE["image_name"]]}])["Images"][0]["ImageId"]
    other = ec2.run_instances(ImageId=image, InstanceType=FEW[0], MinCount=1, MaxCount=1)["Instances"][0]
    low = ServiceQuotasDouble(default=10000.0).start()
    try:
        ops = cluster_ops(endpoint_urls={"service-quotas": low.url})
        used = running_vcpus(ops.aws, "us-east-1")["L-2C3B7624"]
        assert used >= 8, "the instance outside the cluster counts (a trn1.2xlarge has 8 vCPUs)"
        low.set("us-east-1", "L-2C3B7624", float(used + 16 - 1))  # enough by its value, one vCPU short when free
        with pytest.raises(FailedPrecondition) as e:
            create(ops, mesh, spec(profile="cost-savings"))
        assert f"{used + 15:g} vCPUs, {used} in use, needs 16 more" in str(e.value)
    finally:
        low.stop()
        ec2.terminate_instances(InstanceIds=[other["InstanceId"]])
    ops = cluster_ops()
    first = create(ops, mesh, spec(profile="cost-savings"), known_id=Registry(ops.aws).get(mesh).id)  # run again
    asked = ops.aws.operations.get("servicequotas:GetServiceQuota", 0)
    assert asked > 0
    again = create(ops, mesh, spec(profile="cost-savings"), known_id=first.doc.id)
    assert again.launched == [] and ops.aws.operations.get("servicequotas:GetServiceQuota", 0) == asked
    assert delete(ops, mesh).leftovers == []


def test_a_taken_name_is_refused(cluster_ops, builder, mesh) -> None:
    ops = cluster_ops()
    first = create(ops, mesh, spec(profile="cost-savings", instance_types=(InstanceTypeSpec(FEW[0]),)))
    with pytest.raises(AlreadyExists, match=f"taken by cluster {first.doc.id}"):
        create(ops, mesh, spec())
    with pytest.raises(AlreadyExists, match=f"taken by cluster {first.doc.id}"):
        Registry(ops.aws).create(dataclasses.replace(first.doc, id="cother"))
    assert delete(ops, mesh).leftovers == []
    # a network built with `meshctl infra apply` holds the name too
    from tests.infra.helpers import few_config
    from infra.destroy import destroy
    cfg = few_config(f"{mesh}-net")
    builder.apply(cfg)
    with pytest.raises(AlreadyExists, match="meshctl infra apply"):
        create(ops, f"{mesh}-net", spec())
    assert Registry(ops.aws).get(f"{mesh}-net") is None
    assert destroy(cfg, ops.aws).complete


def test_edit_shows_a_new_version_refuses_invalid_specs_and_replaces_what_changed(cluster_ops, moto, mesh) -> None:
    ops = cluster_ops()
    res = create(ops, mesh, spec())
    v1 = Registry(ops.aws).get(mesh)
    # invalid edits: refused, nothing stored
    with pytest.raises(ConfigError, match="invalid profile 'fast'"):
        edit(ops, mesh, from_yaml(v1.spec.to_yaml().replace("performance", "fast")))
    with pytest.raises(ConfigError, match="unknown key 'warm'"):
        from_yaml(v1.spec.to_yaml() + "warm: 3\n")
    with pytest.raises(ConfigError, match="main_region cannot change"):
        edit(ops, mesh, dataclasses.replace(v1.spec, main_region="us-west-2"))
    assert Registry(ops.aws).get(mesh).version == v1.version
    # a stale edit (someone else wrote meanwhile) is refused
    with pytest.raises(FailedPrecondition, match="changed while it was being edited"):
        edit(ops, mesh, v1.spec, base_version=v1.version - 1)
    # valid: to cost-savings, no warm capacity
    new = dataclasses.replace(v1.spec, profile="cost-savings", instance_types=(InstanceTypeSpec(FEW[0], 0),))
    out = edit(ops, mesh, new, base_version=v1.version)
    assert out.doc.version == v1.version + 1
    assert sorted(live(moto, mesh)) == ["coordinator-0"] and len(out.terminated) == 4
    history = Registry(ops.aws).history(mesh)
    assert [h.spec.profile for h in history] == ["performance", "cost-savings"]
    assert res.doc.id == out.doc.id
    assert delete(ops, mesh).leftovers == []


def test_a_refused_launch_is_reported_and_a_rerun_converges_without_duplicates(cluster_ops, moto, mesh) -> None:
    faults = Faults()
    ops = cluster_ops(on_client=faults)
    faults.fail("RunInstances", "InsufficientInstanceCapacity", times=1)
    faults.fail("AllocateAddress", "Throttling", times=2)
    with pytest.raises(FailedPrecondition, match="InsufficientInstanceCapacity"):
        create(ops, mesh, spec())
    assert len(ops.sleep.calls) >= 2, "throttled calls are retried with backoff"
    doc = Registry(ops.aws).get(mesh)
    assert "InsufficientInstanceCapacity" in doc.last_error
    st = status(ops.aws, doc, lambda t: True)
    assert st.status == "failed" and "InsufficientInstanceCapacity" in st.reasons[0]
    res = create(ops, mesh, spec(), known_id=doc.id)
    assert len(res.launched) == 4 and sorted(live(moto, mesh))[:3] == ["replica-0", "replica-1", "replica-2"]
    assert res.doc.last_error == "" and status(ops.aws, res.doc, lambda t: True).status == "running"
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto)
    before = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert {f"mesh-{mesh}-node", f"mesh-{mesh}-coordinator"} <= before
    # a delete that dies halfway is reported as deleting, and finished by running it again
    faults.fail("DeleteLoadBalancer", "InternalFailure", times=8)
    with pytest.raises(Unavailable):
        delete(ops, mesh)
    doc = Registry(ops.aws).get(mesh)
    assert doc.phase == "deleting" and status(ops.aws, doc, lambda t: True).status == "deleting"
    with pytest.raises(FailedPrecondition, match="being deleted"):
        create(ops, mesh, spec(), known_id=doc.id)
    assert delete(ops, mesh).leftovers == [] and Registry(ops.aws).get(mesh) is None
    after = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert not after & {f"mesh-{mesh}-node", f"mesh-{mesh}-coordinator"}, "delete removes the cluster's roles"
    profiles = {p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]}
    assert not profiles & {f"mesh-{mesh}-node", f"mesh-{mesh}-coordinator"}


def test_a_role_without_a_permission_names_the_action(cluster_ops, moto, mesh, iam_enforced, pricing_double,
                                                      cluster_quotas) -> None:
    """moto evaluates the role's own policy for credentials from its STS (the double's are unknown to it)."""
    from infra.aws import Aws
    from infra.policy import cluster_document
    from tests.infra.conftest import moto_post

    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"AWS": "arn:aws:iam::123456789012:root"}}]}
    arn = iam.create_role(RoleName=f"{mesh}-partial", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    doc = cluster_document(quotas=True)
    for st in doc["Statement"]:
        st["Resource"] = "*"  # moto derives no resource ARNs for SSM; the actions are the policy's own
        st.pop("Condition", None)
        if "ec2:RunInstances" in st["Action"]:
            st["Action"].remove("ec2:RunInstances")
    doc["Statement"] = [st for st in doc["Statement"] if st["Action"]]
    iam.put_role_policy(RoleName=f"{mesh}-partial", PolicyName="p", PolicyDocument=json.dumps(doc))
    creds = boto3.client("sts", region_name="us-east-1", endpoint_url=moto).assume_role(
        RoleArn=arn, RoleSessionName="partial", ExternalId="x1")["Credentials"]
    session = boto3.session.Session(aws_access_key_id=creds["AccessKeyId"],
                                    aws_secret_access_key=creds["SecretAccessKey"],
                                    aws_session_token=creds["SessionToken"])
    full = cluster_ops()
    aws = Aws(lambda: session, endpoint_url=moto, sleep=lambda s: None,
              endpoint_urls={"pricing": pricing_double.url, "service-quotas": cluster_quotas.url})
    partial = dataclasses.replace(full, aws=aws, registry=Registry(aws))
    iam_enforced()
    try:
        with pytest.raises(PermissionDenied, match="grant the IAM action ec2:RunInstances"):
            create(partial, mesh, spec(profile="cost-savings"))
    finally:
        moto_post(moto, "/moto-api/reset-auth", b"inf")
    assert delete(full, mesh).leftovers == []


# -- user data ------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["performance", "cost-savings"])
def test_user_data_is_valid_bash_and_uses_only_real_options(profile: str, tmp_path) -> None:
    from infra.cluster.lifecycle import new_doc
    from infra.cluster.instances import Slot, etcd_members, user_data
    from meshctl.main import app
    from typer.testing import CliRunner

    doc = new_doc("c1.example", spec(profile=profile))
    slots = ([Slot(f"replica-{i}", "replica", "us-east-1", "m6i.large", "us-east-1a", f"10.4.0.{10 + i}")
              for i in range(3)] if profile == "performance"
             else [Slot("coordinator-0", "coordinator", "us-east-1", "m6i.large", "us-east-1a", "10.4.0.4")])
    slots.append(Slot("warm-g6-xlarge-0", "agent", "us-west-2", "g6.xlarge"))
    runner = CliRunner()
    for slot in slots:
        # a profile switch's coordinators (here: the performance ones) serve only once the store is copied in
        switching = profile == "performance"
        script = user_data(doc, slot, "mesh-c.elb.amazonaws.com:7443", etcd_members(slots), await_import=switching)
        assert (f"AWAIT_IMPORT='1'" in script) == (switching and slot.role != "agent")
        path = tmp_path / f"{slot.name}.sh"
        path.write_text(script)
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
        assert "@@" not in script
        # every meshctl install line runs against the real CLI (files only, into a scratch root)
        replica = slot.role == "replica"
        env = {"ROLE": slot.role, "NODE_NAME": slot.name, "COORDINATOR": "mesh-c.elb.amazonaws.com:7443",
               "CLUSTER": "c1.example", "HUB": "replica-0", "PRIVATE_IP": slot.private_ip or "10.9.0.1",
               "store": "etcds://10.4.0.10:2379,10.4.0.11:2379" if replica else "sqlite", "MESH_JOIN_TOKEN": "x",
               "ETCD_NAME": "r0", "etcd_tls": "--daemon-arg=--etcd-ca=/var/lib/meshd/etcd/ca.crt" if replica else "",
               "AWAIT_IMPORT": "1" if switching and slot.role != "agent" else "", "MAIN_REGION": "us-east-1"}
        for cmd in _meshctl_lines(script):
            import shlex
            words = [w for w in shlex.split(_expand(cmd, env)) if w != "\\"]
            assert words[0] == "meshctl"
            root = tmp_path / "root" / slot.name
            token = {"MESH_JOIN_TOKEN": "t1a2b3c4d." + "0" * 32} if words[1:3] == ["install", "agent"] else {}
            if words[1:3] == ["install", "store-certs"]:  # files only, from a store CA where SSM's copy goes
                from meshcore import pki
                ca = pki.CertificateAuthority.new("store CA")
                (root / "run").mkdir(parents=True, exist_ok=True)
                (root / "run/store-ca.key").write_bytes(pki.key_pem(ca.key))
                (root / "run/store-ca.crt").write_bytes(ca.pem)
                r = runner.invoke(app, words[1:] + ["--root", str(root)])
                assert r.exit_code == 0, (cmd, r.output)
                continue
            r = runner.invoke(app, words[1:] + ["--root", str(root), "--no-start"], env=token)
            assert r.exit_code == 0, (cmd, r.output)
        if slot.role != "agent":
            meshd_env = (tmp_path / "root" / slot.name / "etc/mesh/meshd.env").read_text()
            assert ("--await-import" in meshd_env) == switching
        if slot.role == "agent":
            env_file = (tmp_path / "root" / slot.name / "etc/mesh/meshagent.env").read_text()
            assert "--wireguard=mesh0" in env_file and "--hub=" in env_file


def _meshctl_lines(script: str) -> list[str]:
    out, cur = [], ""
    for line in script.splitlines():
        s = line.strip()
        if cur:
            cur += " " + s.rstrip("\\")
            if not s.endswith("\\"):
                out.append(cur)
                cur = ""
        elif "meshctl install" in s and not s.startswith("#"):
            s = s[s.index("meshctl install"):]
            if s.endswith("\\"):
                cur = s.rstrip("\\")
            else:
                out.append(s)
    return out


def _expand(cmd: str, env: dict[str, str]) -> str:
    import re
    cmd = re.sub(r"\$\{COORDINATOR%:\*\}", env["COORDINATOR"].rsplit(":", 1)[0], cmd)
    cmd = cmd.replace('"${await[@]}"', "--daemon-arg=--await-import" if env.get("AWAIT_IMPORT") == "1" else "")
    return re.sub(r"\$([A-Za-z_]+)", lambda m: env.get(m.group(1), "x"), cmd)


def test_the_cluster_policy_covers_every_call_and_each_of_its_actions_is_called(cluster_ops, mesh, moto) -> None:
    """Both profiles, a profile switch, and delete: every operation is recorded."""
    from infra.policy import CLUSTER, CLUSTER_PARAMETERS, IMPLIED, INSTANCE_ROLES, cluster_actions, cluster_document
    from tests.infra.test_policy import Recorder

    from tests.infra.tagcheck import TagCheck

    rec, tagcheck = Recorder(), TagCheck(moto)
    ops = cluster_ops(on_client=lambda c: (rec(c), tagcheck(c)))
    ops.selections.clear()  # region selection's calls count too
    res = create(ops, mesh, spec(profile="cost-savings"))
    ops.prices.spot(FEW[0], "us-east-1")  # `meshctl costs` prices spot nodes through the same role
    edit(ops, mesh, dataclasses.replace(res.doc.spec, profile="performance"))  # a switch moves the Elastic IP
    assert [d.name for d in ops.registry.list() if d.name == mesh] == [mesh]  # `meshctl clusters`
    assert len(ops.registry.history(mesh)) == 2
    assert delete(ops, mesh).leftovers == []
    uncovered = rec.actions - cluster_actions(quotas=True)
    assert not uncovered, f"calls missing from the cluster policy: {sorted(uncovered)}"
    implied = {a for called in rec.actions for a in IMPLIED.get(called, ())}
    unused = (set(CLUSTER) | set(CLUSTER_PARAMETERS) | set(INSTANCE_ROLES)) - rec.actions - implied
    assert not unused, f"cluster policy actions never called: {sorted(unused)}"
    # and every call meets the policy's tag and boundary conditions (which moto does not evaluate)
    assert len(tagcheck.calls) > 20
    assert tagcheck.violations(cluster_document(quotas=True, account="123456789012")) == []
