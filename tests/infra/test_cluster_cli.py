"""The cluster commands as a user types them, on the moto server and the external-id-enforcing STS.

From `meshctl infra role create` to `meshctl cluster delete`: bad input is
one `error:` line before any AWS call, `--edit-before-creation` and `edit`
go through $EDITOR, `cluster use` makes later commands (including admin
commands against meshd, with the cluster's admin certificate) use the
cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from testbed.localmesh import BIN, LocalMesh
from meshctl.main import app
from tests.infra.conftest import TEST_IMAGE
from tests.infra.helpers import FEW


@pytest.fixture
def cli(moto, sts, tmp_path, monkeypatch, pricing_double, cluster_quotas):
    monkeypatch.setenv("MESHCTL_CONFIG_DIR", str(tmp_path / "meshctl"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("MESH_AWS_ENDPOINT_URL", moto)
    monkeypatch.setenv("MESH_AWS_PRICING_ENDPOINT_URL", pricing_double.url)
    monkeypatch.setenv("MESH_AWS_QUOTAS_ENDPOINT_URL", cluster_quotas.url)
    monkeypatch.setenv("MESH_AWS_STS_ENDPOINT_URL", sts.url)
    monkeypatch.setenv("MESH_PACKAGE", TEST_IMAGE["package"])
    runner = CliRunner()

    def run(*args: str, ok: bool = True, input: str | None = None, env: dict | None = None):
        r = runner.invoke(app, list(args), input=input, env=env)
        if ok:
            assert r.exit_code == 0, r.output
        else:
            assert r.exit_code != 0, r.output
            assert r.output.startswith("error: ") or "\nerror: " in r.output, r.output
            assert "Traceback" not in r.output
        return r
    return run


def editor(tmp_path: Path, body: str) -> dict[str, str]:
    """An $EDITOR that rewrites the file it is given with a shell snippet ($1 is the file)."""
    path = tmp_path / f"editor-{abs(hash(body))}.sh"
    path.write_text(f"#!/bin/sh\nset -e\n{body}\n")
    path.chmod(0o755)
    return {"EDITOR": str(path)}


def spec_file(tmp_path: Path, name: str, **kw) -> Path:
    from infra.cluster.spec import ClusterSpec, InstanceTypeSpec

    spec = ClusterSpec(instance_types=(InstanceTypeSpec(FEW[0], 0),), **TEST_IMAGE, **kw)
    p = tmp_path / f"{name}.yaml"
    p.write_text(spec.to_yaml())
    return p


def test_from_role_to_running_cluster_to_delete(cli, sts, tmp_path, mesh) -> None:
    role = json.loads(cli("infra", "role", "create", "-o", "json").output)
    arn, ext = role["role_arn"], role["external_id"]
    auth = ("--role-arn", arn, "--external-id", ext)
    name = f"{mesh}.cli"

    # refused before any AWS call
    n = len(sts.requests)
    r = cli("cluster", "create", "aws", *auth, "Bad_Name", ok=False)
    assert "invalid cluster name 'Bad_Name'" in r.output and "'-' or '.'" in r.output
    r = cli("cluster", "create", "aws", "--role-arn", "arn:aws:iam::1:role/x", "--external-id", ext, name, ok=False)
    assert "invalid role ARN" in r.output
    assert len(sts.requests) == n
    r = cli("cluster", "create", "aws", "--role-arn", arn, "--external-id", "wrong-id", name, ok=False)
    assert "wrong external id" in r.output
    # an invalid edit before creation creates nothing
    r = cli("cluster", "create", "aws", *auth, "--edit-before-creation", name, ok=False,
            env=editor(tmp_path, "echo 'profile: fast' > \"$1\""))
    assert "invalid profile 'fast'" in r.output

    # created from an edited spec, after the plan is shown and confirmed
    src = spec_file(tmp_path, "v1")
    r = cli("cluster", "create", "aws", *auth, "--edit-before-creation", name, input="y\n",
            env=editor(tmp_path, f"cp {src} \"$1\" && sed -i 's/performance/cost-savings/' \"$1\""))
    assert "1 meshd" in r.output and "Create this cluster?" in r.output and "created, spec version 1" in r.output
    assert "total (this spec)" in r.output and "total if switched" in r.output  # before confirming
    assert "cost-savings: $0.1010/h, $2.42/day" in r.output and "if switched" in r.output  # after
    assert (tmp_path / "cache" / "meshctl" / "prices.json").exists()
    ctx = json.loads((tmp_path / "meshctl" / "contexts.json").read_text())
    assert ctx["current"] == name and ctx["clusters"][name]["external_id"] == ext
    assert (tmp_path / "meshctl" / "contexts.json").stat().st_mode & 0o777 == 0o600
    r = cli("cluster", "create", "aws", *auth, "--spec", str(src), name, ok=False)
    assert "exists with another spec" in r.output  # this machine's own cluster, asked for differently

    rows = json.loads(cli("clusters", "-o", "json", "--probe-timeout", "0.2").output)
    mine = [x for x in rows if x["name"] == name]
    assert mine and mine[0]["status"] == "provisioning" and mine[0]["profile"] == "cost-savings"
    assert mine[0]["current"] == "*" and "coordinator-0: meshd not answering" in mine[0]["reason"]
    r = cli("clusters", "--watch", "--count", "2", "--interval", "0", "--probe-timeout", "0.1")
    assert mine[0]["id"] in r.output and "clusters (every 0 s" in r.output

    # edit the current cluster: a diff, the next version
    r = cli("cluster", "edit", "--spec", str(spec_file(tmp_path, "v2", profile="performance")), "--yes")
    assert "-profile: cost-savings" in r.output and "+profile: performance" in r.output
    assert "spec version 2" in r.output
    assert "on_demand_hour" in r.output and "us-west-2" in r.output  # the types offered per region
    assert "total if switched" in r.output
    r = cli("cluster", "edit", name, env=editor(tmp_path, "true"))
    assert f"no change to cluster {name}" in r.output
    r = cli("cluster", "edit", name, ok=False, env=editor(tmp_path, "echo 'instance_types: [G6]' >> \"$1\""))
    assert "invalid instance type 'G6'" in r.output
    r = cli("cluster", "use", "nope", ok=False)
    assert "not known on this machine" in r.output and name in r.output

    cli("cluster", "delete", name, "--yes")
    ctx = json.loads((tmp_path / "meshctl" / "contexts.json").read_text())
    assert ctx["current"] is None and name not in ctx["clusters"]
    rows = json.loads(cli("clusters", "-o", "json", *auth).output)
    assert name not in [x["name"] for x in rows]


def test_cluster_use_sends_admin_commands_to_that_clusters_meshd(cli, tmp_path, mesh) -> None:
    """The context holds the cluster's CA, admin certificate and address: `meshctl token list` reaches
    a real meshd that runs with the cluster's CA and bootstrap join string, as a coordinator would."""
    role = json.loads(cli("infra", "role", "create", "-o", "json").output)
    auth = ("--role-arn", role["role_arn"], "--external-id", role["external_id"])
    src = spec_file(tmp_path, "s", profile="cost-savings")
    src.write_text("".join(x for x in src.read_text().splitlines(True) if not x.startswith("package:")))
    cli("cluster", "create", "aws", *auth, "--spec", str(src), mesh)  # package from MESH_PACKAGE
    secrets = tmp_path / "meshctl" / "clusters" / mesh
    with LocalMesh(tmp_path / "coordinator") as lm:
        (lm.root / "meshd").mkdir(mode=0o700, parents=True)
        assert not (secrets / "ca.key").exists()  # the CA key left this machine once SSM held it
        ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=os.environ["MESH_AWS_ENDPOINT_URL"])
        key = ssm.get_parameter(Name=f"/mesh-clusters/{mesh}/coordinator/ca-key", WithDecryption=True)
        (lm.root / "meshd" / "ca.key").write_text(key["Parameter"]["Value"])  # as the coordinator's user data does
        shutil.copy(secrets / "ca.crt", lm.root / "meshd" / "ca.crt")
        lm.start_meshd(extra=("--bootstrap-token-file", str(secrets / "join-token")))
        ctx_path = tmp_path / "meshctl" / "contexts.json"
        ctx = json.loads(ctx_path.read_text())
        ctx["clusters"][mesh]["coordinator"] = lm.coordinator  # the Elastic IP, here on loopback
        ctx_path.write_text(json.dumps(ctx))
        cli("cluster", "use", mesh)
        env = {k: v for k, v in os.environ.items() if k not in ("MESHD_ADMIN_SOCKET", "MESH_COORDINATOR",
                                                                 "MESH_ADMIN_CERT_DIR")}
        env["MESHD_ADMIN_SOCKET"] = str(tmp_path / "no-admin-socket-here")
        r = subprocess.run([str(BIN / "meshctl"), "token", "list", "-o", "json"], capture_output=True, text=True,
                           env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        token_id = (secrets / "join-token").read_text().split(".")[0]
        assert token_id in r.stdout
    cli("cluster", "delete", mesh, "--yes")


def test_infra_types_lists_offered_types_per_region_with_shape_and_price(cli) -> None:
    rows = json.loads(cli("infra", "types", "--region", "us-east-1", "--region", "eu-west-1", "--types",
                          f"{FEW[0]},m6i.large,g6.xlarge", "--spot", "-o", "json").output)
    by = {(r["region"], r["type"]): r for r in rows}
    assert ("us-east-1", FEW[0]) in by and ("eu-west-1", FEW[0]) not in by, "trn1 is not offered in eu-west-1"
    m6i = by[("us-east-1", "m6i.large")]
    assert (m6i["vcpus"], m6i["memory_gib"], m6i["gpus"], m6i["on_demand_hour"]) == (2, 8.0, 0, 0.096)
    assert by[("eu-west-1", "m6i.large")]["on_demand_hour"] == pytest.approx(0.096 * 1.12)
    g6 = by[("us-east-1", "g6.xlarge")]
    assert g6["gpus"] == 1 and "L4" in g6["gpu"] and g6["on_demand_hour"] == 0.8048
    assert m6i["spot_hour"] == pytest.approx(0.00001)  # moto's spot price history


def test_clusters_judges_the_mesh_from_meshds_nodes(cli, tmp_path, mesh, monkeypatch) -> None:
    """`meshctl clusters` with the cluster's admin certificate: agents ready out of expected (every
    running cluster instance's agent and every node that has not left), so an agent that died makes
    the cluster degraded, naming it. A real meshd with the cluster's CA and join string, real agents
    joined with that string as the user data joins them; moto's made-up instance address is the one
    stand-in (the health probe is pointed at the real meshd's join port)."""
    from infra.cluster import status as status_mod

    role = json.loads(cli("infra", "role", "create", "-o", "json").output)
    auth = ("--role-arn", role["role_arn"], "--external-id", role["external_id"])
    r = cli("cluster", "create", "aws", *auth, "--spec", str(spec_file(tmp_path, "s", profile="cost-savings")), mesh)
    lines = r.output.splitlines()  # the cost is said before anything is built
    cost = next(i for i, x in enumerate(lines) if f"{mesh} costs cost-savings (this spec) $0.1010/h, $2.42/day" in x)
    assert cost < next(i for i, x in enumerate(lines) if "local secrets" in x)
    secrets = tmp_path / "meshctl" / "clusters" / mesh
    with LocalMesh(tmp_path / "coordinator", lease_ttl_s=1.5, grace_s=60) as lm:
        (lm.root / "meshd").mkdir(mode=0o700, parents=True)
        ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=os.environ["MESH_AWS_ENDPOINT_URL"])
        key = ssm.get_parameter(Name=f"/mesh-clusters/{mesh}/coordinator/ca-key", WithDecryption=True)
        (lm.root / "meshd" / "ca.key").write_text(key["Parameter"]["Value"])
        shutil.copy(secrets / "ca.crt", lm.root / "meshd" / "ca.crt")
        lm.start_meshd(extra=("--bootstrap-token-file", str(secrets / "join-token")))
        real = status_mod.health_probe
        monkeypatch.setattr(status_mod, "health_probe",
                            lambda ca, timeout: (lambda _target: real(ca, 5.0)(lm.join_address)))
        ctx_path = tmp_path / "meshctl" / "contexts.json"
        ctx = json.loads(ctx_path.read_text())
        ctx["clusters"][mesh]["coordinator"] = lm.coordinator  # the Elastic IP, here on loopback
        ctx_path.write_text(json.dumps(ctx))

        def row() -> dict:
            rows = json.loads(cli("clusters", "-o", "json", "--probe-timeout", "5").output)
            return next(r for r in rows if r["name"] == mesh)

        r = row()  # coordinator-0 runs (in moto) but its agent has not joined yet: first boot
        assert (r["status"], r["agents"]) == ("provisioning", "0/1"), r
        assert "agents 0/1 ready: not coordinator-0 (never joined)" in r["reason"]
        token = (secrets / "join-token").read_text().strip()
        lm.start_agent("coordinator-0", token=token)
        gpu = lm.start_agent("gpu-1", token=token)  # a SkyPilot VM: not a cluster instance, still expected
        r = row()
        assert (r["status"], r["agents"], r["reason"]) == ("running", "2/2", ""), r
        lm.stop(gpu, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (r := row())["agents"] != "1/2" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (r["status"], r["agents"]) == ("degraded", "1/2"), r  # was ready: no boot explains it
        assert "not gpu-1 (unreachable)" in r["reason"]
    cli("cluster", "delete", mesh, "--yes")
