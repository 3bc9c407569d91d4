"""The SkyPilot templates in sky/: loaded by SkyPilot's own loader, every
`meshctl` command they run checked against our CLI, and bad template
variables answered with a clear error.

SkyPilot pins protobuf below our version, so it lives in its own virtualenv
(.venv-sky, created by `make setup`); all templates are loaded in one
subprocess there, because importing SkyPilot takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
SKY = ROOT / "sky"
SKY_PYTHON = ROOT / ".venv-sky/bin/python"
TASKS = ["main.yaml", "model-server.yaml", "client.yaml"]
SCRIPTS = ["mesh-setup.sh", "run-qwen-coder.sh", "run-sky-t1.sh"]

LOADER = textwrap.dedent("""
    import json, sys, yaml
    import sky
    from sky.utils import common_utils, schemas

    out = {}
    def attempt(key, fn):
        try:
            out[key] = {"ok": True, "value": fn()}
        except Exception as e:
            out[key] = {"ok": False, "error": f"{type(e).__name__}: {e}"}

    def load(path, env=None):
        config = yaml.safe_load(open(path))
        task = sky.Task.from_yaml_config(config, env_overrides=env) if env else sky.Task.from_yaml(path)
        return {"name": task.name, "envs": dict(task.envs), "setup": task.setup, "run": task.run}

    def check_config(config):
        common_utils.validate_schema(config, schemas.get_config_schema(), "Invalid config YAML: ")
        return True

    attempt("main.yaml", lambda: load("sky/main.yaml"))
    attempt("model-server.yaml", lambda: load("sky/model-server.yaml"))
    attempt("client.yaml", lambda: load("sky/client.yaml", [("SERVER", "qwen-coder")]))
    attempt("client.yaml without SERVER", lambda: load("sky/client.yaml"))
    attempt("config.yaml", lambda: check_config(yaml.safe_load(open("sky/config.yaml"))))
    bad = yaml.safe_load(open("sky/config.yaml"))
    bad["aws"]["vpc_nmae"] = bad["aws"].pop("vpc_name")
    attempt("config.yaml with a typo", lambda: check_config(bad))
    json.dump(out, sys.stdout)
""")


@pytest.fixture(scope="module")
def loaded() -> dict:
    assert SKY_PYTHON.exists(), f"{SKY_PYTHON} is missing: `make setup` creates the SkyPilot virtualenv"
    env = dict(os.environ, SKYPILOT_DISABLE_USAGE_COLLECTION="1", HOME=os.environ.get("HOME", "/root"))
    r = subprocess.run([str(SKY_PYTHON), "-c", LOADER], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("key", ["main.yaml", "model-server.yaml", "client.yaml", "config.yaml"])
def test_skypilot_loads_the_template(loaded, key):
    assert loaded[key]["ok"], loaded[key].get("error")


def test_skypilot_rejects_what_is_broken(loaded):
    assert not loaded["config.yaml with a typo"]["ok"]
    assert "vpc_nmae" in loaded["config.yaml with a typo"]["error"]
    missing = loaded["client.yaml without SERVER"]
    assert not missing["ok"] and "SERVER" in missing["error"]


def test_templates_say_what_the_seeds_describe(loaded):
    server = loaded["model-server.yaml"]["value"]
    assert "meshctl expose --port 8000" in server["setup"]
    assert "SKYPILOT_CLUSTER_INFO" in server["setup"] and ".cluster_name" in server["setup"]
    assert "--port 8000" in server["run"]
    client = loaded["client.yaml"]["value"]
    assert client["envs"]["SERVER"] == "qwen-coder"
    assert "http://${SERVER}.default.svc.cluster.local:8000/v1" in client["run"]
    main = loaded["main.yaml"]["value"]
    assert "coordinator" in main["setup"]
    config = yaml.safe_load((SKY / "config.yaml").read_text())["aws"]
    assert config["vpc_name"] and any("main*" in p for p in config["security_group_name"])


# -- every meshctl command the templates run exists ---------------------------

def shell_texts() -> dict[str, str]:
    texts = {}
    for name in TASKS:
        doc = yaml.safe_load((SKY / name).read_text())
        texts[name] = "\n".join(doc.get(k) or "" for k in ("setup", "run"))
    for name in SCRIPTS:
        texts[name] = (SKY / name).read_text()
    return texts


def meshctl_commands(text: str) -> list[list[str]]:
    """Each `meshctl ...` invocation as tokens, line continuations joined."""
    text = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for m in re.finditer(r"(?:^|[\s;&|(`])meshctl\s+([^;&|)`\n]*)", line):
            out.append(shlex.split(m.group(1), comments=True))
    return out


def resolve_command(group, tokens: list[str]) -> tuple[object, list[str], list[str]]:
    path = []
    cmd = group
    rest = list(tokens)
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        sub = cmd.commands.get(rest[0])
        if sub is None:
            raise AssertionError(f"meshctl {' '.join(path + [rest[0]])}: no such command")
        path.append(rest.pop(0))
        cmd = sub
    return cmd, path, rest


def test_the_parser_finds_the_commands_the_templates_run():
    found = {name: meshctl_commands(text) for name, text in shell_texts().items()}
    assert ["expose", "--port", "8000", "--name", "$NAME", "--health-http", "/health"] in found["model-server.yaml"]
    assert ["dns", "install"] in found["client.yaml"]
    heads = {" ".join(cmd[:2]) for cmd in found["mesh-setup.sh"]}
    assert {"install agent", "install coordinator", "token create"} <= heads


def test_every_meshctl_command_in_the_templates_exists():
    from meshctl.main import app

    root = typer.main.get_command(app)
    checked = 0
    for source, text in shell_texts().items():
        for tokens in meshctl_commands(text):
            cmd, path, rest = resolve_command(root, tokens)
            assert not hasattr(cmd, "commands"), f"{source}: 'meshctl {' '.join(tokens)}' names a group, not a command"
            known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
            for tok in rest:
                if tok.startswith("--"):
                    opt = tok.split("=", 1)[0]
                    assert opt in known, f"{source}: 'meshctl {' '.join(path)}' has no option {opt}"
            r = CliRunner().invoke(app, [*path, "--help"])
            assert r.exit_code == 0, r.output
            checked += 1
    assert checked >= 6


# -- bad template variables get a clear error --------------------------------

def run_bash(script: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    """Executables that log their argv to <name>.log and run `body`."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name, body in scripts.items():
        p = d / name
        p.write_text(f'#!/bin/bash\nprintf "%s\\n" "$PWD" "$@" > "{tmp_path}/{name}.log"\n{body}\n')
        p.chmod(0o755)
    return d


@pytest.mark.parametrize("server", ["Qwen_Coder", "", "qwen-coder.default.svc", "-x"])
def test_client_refuses_a_bad_server_name(tmp_path, server):
    run = yaml.safe_load((SKY / "client.yaml").read_text())["run"]
    bins = fake_bin(tmp_path, curl="exit 99")
    r = run_bash(run, {"PATH": f"{bins}:/usr/bin:/bin", "SERVER": server, "HOME": str(tmp_path)})
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: invalid SERVER '{server}'") and "RFC 1123" in r.stderr
    assert not (tmp_path / "curl.log").exists()  # stopped before reaching out


def test_client_reaches_the_server_by_its_mesh_name(tmp_path):
    run = yaml.safe_load((SKY / "client.yaml").read_text())["run"]
    (tmp_path / "LiveBench/livebench").mkdir(parents=True)
    bins = fake_bin(tmp_path, curl="""echo '{"data": [{"id": "Qwen/Qwen2.5-Coder-32B-Instruct"}]}'""",
                    python="exit 0")
    env = {"PATH": f"{bins}:/usr/bin:/bin", "SERVER": "qwen-coder", "HOME": str(tmp_path),
           "BENCH": "live_bench/coding", "PARALLEL": "8"}
    r = run_bash(run, env)
    assert r.returncode == 0, r.stderr
    curl = (tmp_path / "curl.log").read_text().splitlines()
    assert curl[-1] == "http://qwen-coder.default.svc.cluster.local:8000/v1/models"
    python = (tmp_path / "python.log").read_text().splitlines()  # the last call: show results
    assert python[0] == str(tmp_path / "LiveBench/livebench")
    assert "Qwen/Qwen2.5-Coder-32B-Instruct" in python


def test_client_says_so_when_the_server_does_not_answer(tmp_path):
    run = yaml.safe_load((SKY / "client.yaml").read_text())["run"]
    bins = fake_bin(tmp_path, curl="exit 7")
    r = run_bash(run, {"PATH": f"{bins}:/usr/bin:/bin", "SERVER": "sky-t1", "HOME": str(tmp_path)})
    assert r.returncode == 3
    assert "no model server answers at http://sky-t1.default.svc.cluster.local:8000/v1" in r.stderr


@pytest.mark.parametrize("args, env, message", [
    ("agent Qwen_Coder", {}, "invalid node name 'Qwen_Coder'"),
    ("agent", {}, "invalid node name ''"),
    ("agent qwen-coder", {"MESH_NAME": "My Mesh"}, "invalid MESH_NAME 'My Mesh'"),
    ("agent qwen-coder", {"MESH_REGION": "virginia"}, "invalid MESH_REGION 'virginia'"),
    ("agent q" + "x" * 62, {"SKYPILOT_SETUP_NODE_RANK": "1"}, "invalid node name"),
    ("deploy", {}, "usage: bash sky/mesh-setup.sh"),
])
def test_mesh_setup_refuses_bad_variables_before_touching_anything(tmp_path, args, env, message):
    bins = fake_bin(tmp_path, sudo="exit 99", meshctl="exit 99")
    r = run_bash(f"bash sky/mesh-setup.sh {args}", {"PATH": f"{bins}:/usr/bin:/bin", **env})
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert not (tmp_path / "sudo.log").exists() and not (tmp_path / "meshctl.log").exists()


def test_mesh_setup_joins_with_the_token_in_the_environment_only(tmp_path):
    # sudo runs its command (as the test user); meshctl records argv and the token it sees.
    bins = fake_bin(tmp_path, sudo='while [[ "$1" == -* ]]; do shift; done; exec "$@"',
                    meshctl=f'echo "$MESH_JOIN_TOKEN" > "{tmp_path}/token.seen"')
    env = {"PATH": f"{bins}:/usr/bin:/bin", "MESH_COORDINATOR": "10.4.0.4:7443",
           "MESH_JOIN_TOKEN": "t-0123abcd.s3cret", "SKYPILOT_SETUP_NODE_RANK": "0"}
    r = run_bash("bash sky/mesh-setup.sh agent qwen-coder", env)
    assert r.returncode == 0, r.stderr
    argv = (tmp_path / "meshctl.log").read_text().splitlines()[1:]
    # agents join the main node's K3s too (the agent token comes from meshd over mTLS)
    assert argv == ["install", "agent", "--coordinator", "10.4.0.4:7443", "--name", "qwen-coder",
                    "--label", "sky.cluster=qwen-coder", "--k3s"]
    assert (tmp_path / "token.seen").read_text().strip() == "t-0123abcd.s3cret"
    # a worker of a multi-node cluster gets its rank appended
    r = run_bash("bash sky/mesh-setup.sh agent qwen-coder", {**env, "SKYPILOT_SETUP_NODE_RANK": "2"})
    assert r.returncode == 0, r.stderr
    assert "qwen-coder-2" in (tmp_path / "meshctl.log").read_text().splitlines()


@pytest.mark.parametrize("wrapper, name, model", [
    ("run-qwen-coder.sh", "qwen-coder", "Qwen/Qwen2.5-Coder-32B-Instruct"),
    ("run-sky-t1.sh", "sky-t1", "NovaSky-AI/Sky-T1-32B-Preview"),
])
def test_wrappers_launch_the_model_server_under_the_service_name(tmp_path, wrapper, name, model):
    bins = fake_bin(tmp_path, sky="exit 0")
    r = subprocess.run([str(SKY / wrapper), "--use-spot"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=30, env={"PATH": f"{bins}:/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "sky.log").read_text().splitlines()
    assert log[0] == str(ROOT)  # the repository is the task's workdir
    argv = log[1:]
    assert argv[:4] == ["launch", "-c", name, "sky/model-server.yaml"]
    assert f"MODEL={model}" in argv and argv[-1] == "--use-spot"
