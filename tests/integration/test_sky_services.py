"""The central services' templates (sky/services/): prompt tracing (Arize Phoenix), experiment
tracking (MLflow) and a chat UI (Open WebUI), launched on the main region and exposed by name.

They cannot run here (no internet to install them): SkyPilot's own loader checks each, their
versions are pinned exactly, every meshctl command they run exists, and their run section runs
with stand-ins for `meshctl`/`sudo` and the server program only, so the name exposed is the
cluster name, on the port the server listens on, behind a health check.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
import typer
import yaml

from tests.integration.test_sky_templates import meshctl_commands, resolve_command

ROOT = Path(__file__).resolve().parents[2]
SKY_PYTHON = ROOT / ".venv-sky/bin/python"
SERVICES = {  # template: (pinned version env, program, port, health path)
    "phoenix.yaml": ("PHOENIX_VERSION", "phoenix", 6006, "/healthz"),
    "mlflow.yaml": ("MLFLOW_VERSION", "mlflow", 5000, "/health"),
    "open-webui.yaml": ("OPEN_WEBUI_VERSION", "open-webui", 8080, "/health"),
}
ENV = {"open-webui.yaml": {"SERVER": "qwen-coder"}}

LOADER = textwrap.dedent("""
    import json, sys, yaml
    import sky
    out = {}
    for name, env in json.loads(sys.argv[1]).items():
        try:
            config = yaml.safe_load(open(f"sky/services/{name}"))
            task = sky.Task.from_yaml_config(config, env_overrides=list(env.items())) if env else \\
                sky.Task.from_yaml(f"sky/services/{name}")
            res = next(iter(task.resources))
            out[name] = {"ok": True, "envs": dict(task.envs), "run": task.run, "setup": task.setup,
                         "cloud": str(res.cloud), "region": res.region}
        except Exception as e:
            out[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    json.dump(out, sys.stdout)
""")


@pytest.fixture(scope="module")
def loaded() -> dict:
    assert SKY_PYTHON.exists(), f"{SKY_PYTHON} is missing: `make setup` creates the SkyPilot virtualenv"
    todo = {name: ENV.get(name, {}) for name in SERVICES}
    todo["open-webui.yaml without SERVER"] = {}
    env = dict(os.environ, SKYPILOT_DISABLE_USAGE_COLLECTION="1")
    code = LOADER.replace('open(f"sky/services/{name}")', 'open(f"sky/services/{name.split()[0]}")').replace(
        'sky.Task.from_yaml(f"sky/services/{name}")', 'sky.Task.from_yaml(f"sky/services/{name.split()[0]}")')
    r = subprocess.run([str(SKY_PYTHON), "-c", code, json.dumps(todo)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("name", SERVICES)
def test_skypilot_loads_it_on_the_main_region_with_an_exact_version(loaded, name):
    got = loaded[name]
    assert got["ok"], got.get("error")
    assert (got["cloud"], got["region"]) == ("AWS", "us-east-1")
    version_env = SERVICES[name][0]
    assert re.fullmatch(r"\d+\.\d+\.\d+", got["envs"][version_env])
    assert f"==${{{version_env}}}" in got["setup"] and "mesh-setup.sh agent" in got["setup"]


def test_the_chat_ui_needs_a_server(loaded):
    missing = loaded["open-webui.yaml without SERVER"]
    assert not missing["ok"] and "SERVER" in missing["error"]


def test_every_meshctl_command_they_run_exists():
    from meshctl.main import app

    root = typer.main.get_command(app)
    for name in SERVICES:
        doc = yaml.safe_load((ROOT / "sky/services" / name).read_text())
        text = "\n".join(doc.get(k) or "" for k in ("setup", "run")).replace('"$PORT"', str(SERVICES[name][2]))
        for tokens in meshctl_commands(text):
            cmd, path, rest = resolve_command(root, tokens)
            ctx = cmd.make_context(" ".join(["meshctl", *path]), [t for t in rest], resilient_parsing=False)
            assert ctx is not None


@pytest.mark.parametrize("name", SERVICES)
def test_the_run_section_exposes_the_cluster_name_on_the_port_it_serves(tmp_path, name):
    _, program, port, health = SERVICES[name]
    doc = yaml.safe_load((ROOT / "sky/services" / name).read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for stand_in in ("sudo", "meshctl", program):  # each records its argv; sudo then runs the rest
        body = 'exec "$@"' if stand_in == "sudo" else ""
        (bin_dir / stand_in).write_text(f'#!/bin/sh\necho "{stand_in} $*" >> {calls}\n{body}\n')
        (bin_dir / stand_in).chmod(0o755)
    env = {**{k: str(v) for k, v in (doc.get("envs") or {}).items() if v is not None}, **ENV.get(name, {}),
           "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "SKYPILOT_CLUSTER_INFO": json.dumps({"cluster_name": "central", "cloud": "aws"})}
    r = subprocess.run(["bash", "-c", doc["run"]], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = calls.read_text().splitlines()
    assert f"meshctl expose --port {port} --name central --health-http {health}" in lines
    served = next(line for line in lines if line.startswith(f"{program} "))
    assert str(port) in served.split() or f"PORT={port}" in served or program == "phoenix"
    assert lines.index(f"meshctl expose --port {port} --name central --health-http {health}") < lines.index(served)
