"""`meshctl infra` and `meshctl quotas` end to end on moto: tables, JSON, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshctl.infra_cmd import infra_app, quotas_app
from tests.infra.helpers import tagged

runner = CliRunner()
ROOT_DIR = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, text: str) -> str:
    p = tmp_path / "mesh-infra.yaml"
    p.write_text(text)
    return str(p)


def run(app, args: list[str], moto: str, **env: str):
    return runner.invoke(app, args, env={"MESH_AWS_ENDPOINT_URL": moto, **env}, catch_exceptions=False)


def test_plan_apply_status_destroy(moto, mesh, tmp_path) -> None:
    cfg = config(tmp_path, f"name: {mesh}\ninstance_types: [trn1.2xlarge]\nssh_cidrs: [203.0.113.0/24]\n")
    r = run(infra_app, ["plan", "--config", cfg, "--output", "json"], moto)
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert {c["region"] for c in plan["changes"]} == {"us-east-1", "us-east-2", "us-west-2"}
    assert any(c["resource"] == "allow tcp 22 from 203.0.113.0/24" for c in plan["changes"])

    r = run(infra_app, ["apply", "--config", cfg], moto)
    assert r.exit_code == 0, r.stderr
    assert "us-west-2" in r.stdout and "ok" in r.stdout
    # Not a terminal: progress on stderr, one line per step, each with the time elapsed.
    lines = r.stderr.splitlines()
    assert lines and all(re.match(r"^\[ *\d+\.\ds\] (us-[a-z]+-\d): ", line) for line in lines), lines
    texts = [line.split("] ", 1)[1] for line in lines]
    for region in ("us-east-1", "us-east-2", "us-west-2"):
        n = sum(1 for c in plan["changes"] if c["region"] == region)
        mine = [t for t in texts if t.startswith(region + ": ")]
        # A region's changes may be applied in several rounds (the hub's peerings wait for the spokes).
        starts = [int(t.split()[2]) for t in mine if t.startswith(f"{region}: applying ")]
        steps = [t for t in mine if re.match(rf"{region}: \d+/\d+ (create|update|delete|authorize|accept)", t)]
        assert sum(starts) == n and len(steps) == n, mine
        assert mine[0].startswith(f"{region}: applying ") and mine[-1].startswith(f"{region}: done, ")
    assert "us-west-2: 1/" in r.stderr and "create vpc" in r.stderr

    r = run(infra_app, ["status", "--config", cfg, "--output", "json"], moto)
    rows = {row["region"]: row for row in json.loads(r.stdout)}
    assert rows["us-east-1"]["role"] == "main" and rows["us-east-1"]["cidr"] == "10.4.0.0/16"
    assert "active" in rows["us-west-2"]["peering"] and rows["us-west-2"]["drift"] == "in sync"

    r = run(infra_app, ["destroy", "--config", cfg], moto)
    assert r.exit_code == 1 and "pass --yes" in r.stderr
    r = run(infra_app, ["destroy", "--config", cfg, "--yes", "--output", "json"], moto)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["leftovers"] == []
    assert all(tagged(moto, region, mesh) == [] for region in ("us-east-1", "us-east-2", "us-west-2"))


@pytest.mark.parametrize("text, message", [
    ("name: x\ninstance_typez: [g6.xlarge]\n", "error: unknown config key 'instance_typez': valid keys are name,"),
    ("name: x\nmain_region: ap-southeast-5\n", "error: main region 'ap-southeast-5' is excluded"),
    ("name: x\nmain_region: us-north-9\ninstance_types: [trn1.2xlarge]\n", "error: unknown main region 'us-north-9'"),
    ("name: x\ninstance_types: [g6.xlarg]\n", "error: unknown instance type 'g6.xlarg'"),
])
def test_bad_input_is_one_clear_line(moto, tmp_path, text: str, message: str) -> None:
    r = run(infra_app, ["plan", "--config", config(tmp_path, text)], moto)
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr
    assert "Traceback" not in r.output


def test_missing_credentials_is_one_line(moto, tmp_path) -> None:
    cfg = config(tmp_path, "name: x\n")
    r = run(infra_app, ["plan", "--config", cfg], moto, AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="",
            AWS_SESSION_TOKEN="")
    assert r.exit_code == 1
    assert r.stderr.startswith("error: no AWS credentials found for ec2:DescribeRegions")


def test_missing_config_file(tmp_path) -> None:
    r = runner.invoke(infra_app, ["status", "--config", str(tmp_path / "none.yaml")])
    assert r.exit_code == 1 and "config file" in r.stderr and "not found" in r.stderr


def test_policy_command(tmp_path) -> None:
    r = runner.invoke(infra_app, ["policy", "--config", config(tmp_path, "name: lmrun\n"), "--quotas"])
    doc = json.loads(r.stdout)
    actions = {a for s in doc["Statement"] for a in s["Action"]}
    assert "ec2:CreateVpc" in actions and "servicequotas:RequestServiceQuotaIncrease" in actions
    assert "arn:aws:ssm:*:*:parameter/mesh/lmrun/*" in r.stdout


def test_quotas_commands(moto, tmp_path, quotas_double) -> None:
    cfg = config(tmp_path, "name: x\ninstance_types: [trn1.2xlarge]\n")
    env = {"MESH_AWS_QUOTAS_ENDPOINT_URL": quotas_double.url}
    quotas_double.set("us-east-1", "L-2C3B7624", 8)
    r = run(quotas_app, ["check", "--config", cfg, "--output", "json"], moto, **env)
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 6 and {row["needed"] for row in rows} == {8}
    assert [row["status"] for row in rows if row["region"] == "us-east-1" and row["code"] == "L-2C3B7624"] == ["ok"]

    quotas_double.refuse("us-west-2", "L-6B0D517C")
    r = run(quotas_app, ["request", "--config", cfg, "--interval", "0"], moto, **env)
    assert r.exit_code == 1 and "1 quota request(s) refused" in r.stderr
    assert len(quotas_double.requests) == 4


def test_quotas_explain(tmp_path) -> None:
    from tests.infra.test_quotas import SKY_LOG

    log = tmp_path / "sky.log"
    log.write_text(SKY_LOG)
    r = runner.invoke(quotas_app, ["explain", str(log), "--output", "json"])
    assert r.exit_code == 0
    assert [(e["region"], e["code"]) for e in json.loads(r.stdout)] == [("us-east-1", "L-3819A6DF"),
                                                                        ("us-west-2", "L-417A185B")]
    r = runner.invoke(quotas_app, ["explain", str(tmp_path / "missing.log")])
    assert r.exit_code != 0


def test_importing_the_cli_does_not_import_boto3() -> None:
    code = "import sys, meshctl.infra_cmd; assert 'boto3' not in sys.modules and 'botocore' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT_DIR, timeout=60)
