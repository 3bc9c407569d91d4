"""SkyPilot's own AWS provisioner launches into the network `meshctl infra apply` built.

A moto server stands in for AWS. The infra library applies the mesh named
`mesh` (the name sky/config.yaml uses); then, in .venv-sky, SkyPilot 0.14's
`bootstrap_instances` and `run_instances` run with our sky/config.yaml for
each template (tests/integration/sky_provision_probe.py). Whatever SkyPilot
raises fails the test. It must find the VPC by its Name tag, a public subnet
of it, the mesh's groups (and add no rule to them: SSH stays closed to the
world), and launch with the mesh's instance profiles.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import boto3
import pytest
import yaml

from infra.apply import apply
from infra.aws import aws_from_config
from infra.config import InfraConfig
from infra.skycheck import check
from testbed.doubles.motoserver import moto_server

ROOT = Path(__file__).resolve().parents[2]
SKY_PYTHON = ROOT / ".venv-sky/bin/python"
PROBE = ROOT / "tests/integration/sky_provision_probe.py"
REGION = "us-east-1"
CFG = InfraConfig(name="mesh", main_region=REGION, only_regions=(REGION,), instance_types=("g6.xlarge",),
                  ssh_cidrs=("203.0.113.0/24",), max_attempts=2, backoff_base_s=0.01)


@pytest.fixture(scope="module")
def network():
    assert SKY_PYTHON.exists(), f"{SKY_PYTHON} is missing: `make setup` creates the SkyPilot virtualenv"
    with moto_server() as url:
        aws = aws_from_config(CFG, endpoint_url=url)
        result = apply(CFG, aws=aws, sleep=lambda s: None)
        assert result.ok, (result.failed, result.leftovers)
        yield url, aws


def probe(url: str, config: Path, tmp_path: Path, *clusters: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SKYPILOT_"))}
    env.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
                "SKYPILOT_CONFIG": str(config), "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
                "HOME": str(tmp_path)})
    r = subprocess.run([str(SKY_PYTHON), str(PROBE), REGION, *clusters], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in reversed(r.stdout.splitlines()) if x.startswith("probe-result: "))
    return json.loads(line.removeprefix("probe-result: "))


def ec2(url: str):
    return boto3.client("ec2", region_name=REGION, endpoint_url=url)


def test_skypilot_launches_every_template_into_the_mesh(network, tmp_path) -> None:
    url, aws = network
    out = probe(url, ROOT / "sky/config.yaml", tmp_path, "main=sky/main.yaml", "qwen-coder=sky/model-server.yaml",
                "client=sky/client.yaml", "qwen-job-7=sky/model-server-job.yaml",
                "sky-jobs-controller-1a2b3c4d=sky/client.yaml")
    assert out["config"]["ok"], out["config"]
    c = ec2(url)
    vpc = c.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["mesh"]}])["Vpcs"]
    assert len(vpc) == 1
    vpc_id = vpc[0]["VpcId"]
    subnets = {s["SubnetId"] for s in c.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]}
    groups = {g["GroupName"]: g for g in c.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]}
    for cluster, group, profile in (("main", "mesh-mesh-main", "mesh-mesh-main"),
                                    ("qwen-coder", "mesh-mesh", "mesh-mesh-node"),
                                    ("client", "mesh-mesh", "mesh-mesh-node"),
                                    ("qwen-job-7", "mesh-mesh", "mesh-mesh-node"),
                                    # the managed-jobs controller: its own profile, not the user's credentials
                                    ("sky-jobs-controller-1a2b3c4d", "mesh-mesh", "mesh-mesh-jobs-controller")):
        got = out[cluster]
        assert got["ok"], f"{cluster}: {got.get('error')}\n{got.get('trace')}"
        inst = got["instance"]
        assert inst["vpc"] == vpc_id and inst["subnet"] in subnets, (cluster, inst)
        assert inst["groups"] == [groups[group]["GroupId"]], (cluster, inst)
        assert inst["profile"].endswith(f"instance-profile/{profile}"), (cluster, inst)
        assert got["managed_by_skypilot"] == "false"
    # SkyPilot added nothing to our groups: SSH only from ssh_cidrs, meshd's ports only on the main group.
    for name, g in groups.items():
        if not name.startswith("mesh-mesh"):
            continue
        ssh = [r for p in g["IpPermissions"] if p.get("FromPort") == 22 for r in p.get("IpRanges", [])]
        assert [r["CidrIp"] for r in ssh] == ["203.0.113.0/24"], (name, ssh)
        meshd = [p for p in g["IpPermissions"] if p.get("FromPort") == 7443]
        assert bool(meshd) == (name == "mesh-mesh-main"), (name, meshd)
        assert not any(p.get("UserIdGroupPairs") for p in g["IpPermissions"]), name
    # ... and the network is complete for SkyPilot by our own check too
    assert check(CFG, yaml.safe_load((ROOT / "sky/config.yaml").read_text()), aws, [REGION]) == []


def test_profiles_are_scoped_to_this_meshs_parameters(network) -> None:
    url, _ = network
    iam = boto3.client("iam", region_name=REGION, endpoint_url=url)
    docs = {n: iam.get_role_policy(RoleName=n, PolicyName="mesh-parameters")["PolicyDocument"]
            for n in ("mesh-mesh-main", "mesh-mesh-node")}
    for name, doc in docs.items():
        doc = doc if isinstance(doc, dict) else json.loads(doc)
        [st] = doc["Statement"]
        assert st["Resource"] == "arn:aws:ssm:*:*:parameter/mesh/mesh/*"
        assert ("ssm:PutParameter" in st["Action"]) == (name == "mesh-mesh-main")
    from infra.profiles import jobs_controller_document
    raw = iam.get_role_policy(RoleName="mesh-mesh-jobs-controller", PolicyName="mesh-parameters")["PolicyDocument"]
    assert (raw if isinstance(raw, dict) else json.loads(raw)) == jobs_controller_document("mesh")
    assert "ssm:" not in json.dumps(raw), "the jobs controller reads no join parameter"


def test_a_config_naming_what_infra_did_not_make_fails_with_what_to_run(network, tmp_path) -> None:
    url, aws = network
    bad = yaml.safe_load((ROOT / "sky/config.yaml").read_text())
    bad["aws"]["vpc_name"] = "lmrun"
    bad["aws"]["remote_identity"] = [{"*": "mesh-lmrun-node"}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = probe(url, path, tmp_path, "qwen-coder=sky/model-server.yaml")
    assert not out["qwen-coder"]["ok"]
    assert "No VPC with name 'lmrun'" in out["qwen-coder"]["error"] + out["qwen-coder"]["trace"]
    problems = check(CFG, bad, aws, [REGION])
    assert any("aws.vpc_name is 'lmrun'" in p and "set aws.vpc_name: mesh" in p for p in problems), problems
    assert any("instance profile mesh-lmrun-node does not exist" in p for p in problems), problems
    no_ssh = check(InfraConfig(name="mesh", main_region=REGION, only_regions=(REGION,)),
                   yaml.safe_load((ROOT / "sky/config.yaml").read_text()), aws, [REGION])
    assert any("ssh_cidrs is empty" in p for p in no_ssh), no_ssh
