"""meshctl's output formats against golden files (tests/golden/): JSON and YAML are
parsed and compared as data, tables as text; plus --watch, completion and --version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mesh.v1 import agent_pb2, catalog_pb2, nodes_pb2, types_pb2
from meshctl import main as cli
from meshctl.output import Output, plain_table, proto_dict
from meshctl.watch import Printer, follow_stream, poll_peers

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests/golden"
BIN = Path(sys.executable).parent
T0 = 1735732800  # 2025-01-01T12:00:00Z


def service(name: str, node: str, address: str, port: int, **kw) -> types_pb2.Service:
    s = types_pb2.Service(name=name, node_name=node, node_id=f"n-{node}", address=address, port=port,
                          protocol=types_pb2.PROTOCOL_TCP, revision=7, **kw)
    return s


def listing() -> catalog_pb2.ListServicesResponse:
    api = service("qwen-coder", "gpu-a", "10.4.1.10", 8000, tags=["llm", "vllm"])
    api.health.http_path = "/health"
    api.health_state = types_pb2.HEALTH_STATE_PASSING
    return catalog_pb2.ListServicesResponse(revision=12345678901, services=[
        api, service("a-very-long-service-name-that-a-terminal-would-cut-short", "cloud-vm-with-a-long-name",
                     "100.96.0.17", 9000)])


def node_listing() -> nodes_pb2.ListNodesResponse:
    return nodes_pb2.ListNodesResponse(revision=42, nodes=[
        types_pb2.Node(id="n-0123456789abcdef", name="gpu-a", mesh_address="10.4.1.10", cloud="aws",
                       region="us-east-1", state=types_pb2.NODE_STATE_READY, joined_at=T0, last_seen=T0 + 60,
                       labels={"gpu.model": "L4", "gpu.count": "4"}, revision=9, private_address="10.4.1.10",
                       vpc_id="vpc-1", gossip_port=7946),
        types_pb2.Node(id="n-fedcba9876543210", name="cloud-vm", mesh_address="100.96.0.17", cloud="gcp",
                       state=types_pb2.NODE_STATE_UNREACHABLE, joined_at=T0, drained=True)])


@pytest.fixture
def fake(monkeypatch):
    """meshctl's calls answered from canned responses (as the agent would)."""
    answers = {"ListServices": listing(), "ListNodes": node_listing()}

    class Stub:
        def __getattr__(self, name):
            return name

    monkeypatch.setattr(cli.ENDPOINTS, "to_agent", lambda: True)
    monkeypatch.setattr(cli.ENDPOINTS, "agent", lambda: Stub())
    monkeypatch.setattr(cli, "call", lambda fn, req, timeout=10.0: answers[fn])
    monkeypatch.setattr(cli, "_use_current_cluster", lambda: None)
    runner = CliRunner()

    def run(*args: str) -> str:
        r = runner.invoke(cli.app, list(args), env={"TZ": "UTC"})
        assert r.exit_code == 0, r.output
        return r.stdout
    return run


def golden(name: str) -> str:
    return (GOLDEN / name).read_text()


@pytest.mark.parametrize("command", ["services", "nodes"])
def test_json_and_yaml_are_the_golden_data(fake, command):
    want = json.loads(golden(f"{command}.json"))
    assert json.loads(fake(command, "-o", "json")) == want
    assert yaml.safe_load(fake(command, "-o", "yaml")) == want


def test_json_numbers_are_numbers_and_times_rfc3339(fake):
    data = json.loads(fake("services", "-o", "json"))
    assert data["revision"] == 12345678901 and isinstance(data["services"][0]["revision"], int)
    node = json.loads(fake("nodes", "-o", "json"))["nodes"][0]
    assert node["joined_at"] == "2025-01-01T12:00:00Z" and node["last_seen"] == "2025-01-01T12:01:00Z"
    assert json.loads(fake("nodes", "-o", "json"))["nodes"][1]["last_seen"] is None
    assert node["state"] == "NODE_STATE_READY"


@pytest.mark.parametrize("command, fmt", [("services", "table"), ("services", "wide"), ("nodes", "table"),
                                          ("nodes", "wide")])
def test_tables_in_a_pipe_are_plain_and_whole(fake, command, fmt):
    out = fake(command, "-o", fmt)
    assert out == golden(f"{command}.{fmt}.txt")
    assert not any(ch in out for ch in "─│┃━…")
    # awk finds the columns: the first one is the name on every line
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == [line.strip() for line in fake(command, "-o", "name").splitlines()]


def test_name_output(fake):
    assert fake("services", "-o", "name").split() == ["qwen-coder",
                                                     "a-very-long-service-name-that-a-terminal-would-cut-short"]


def test_plain_table_marks_empty_cells():
    assert plain_table([{"A": "", "B": None, "C": 0}], ["A", "B", "C"]).splitlines() == ["A   B   C", "-   -   0"]


# -- --watch ---------------------------------------------------------------------------

def ev(kind, obj=None, rev=0, many=()):
    return catalog_pb2.ServiceEvent(type=kind, service=obj, revision=rev, services=list(many))


def test_watch_prints_the_set_then_one_line_per_change(capsys):
    a, b = service("alpha", "n1", "10.0.0.1", 80), service("beta", "n2", "10.0.0.2", 81)
    b2 = service("beta", "n2", "10.0.0.2", 82)
    stream = [ev(types_pb2.EVENT_TYPE_RESET), ev(types_pb2.EVENT_TYPE_PUT, many=[a, b], rev=3),
              ev(types_pb2.EVENT_TYPE_SYNCED, rev=3), ev(types_pb2.EVENT_TYPE_PUT, b2, 4),
              ev(types_pb2.EVENT_TYPE_DELETE, a, 5), ev(types_pb2.EVENT_TYPE_PUT, service("gamma", "n1", "x", 1), 6)]
    follow_stream(iter(stream), "service", lambda s: s.name,
                  Printer("service", ["NAME", "PORT"], Output.table, lambda s: {"NAME": s.name, "PORT": s.port}))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [["EVENT", "NAME", "PORT"], ["ADDED", "alpha", "80"],
                                                ["ADDED", "beta", "81"], ["MODIFIED", "beta", "82"],
                                                ["DELETED", "alpha", "80"], ["ADDED", "gamma", "1"]]


def test_watch_json_is_one_object_per_line_and_a_reset_is_diffed(capsys):
    a, b = service("alpha", "n1", "10.0.0.1", 80), service("beta", "n2", "10.0.0.2", 81)
    stream = [ev(types_pb2.EVENT_TYPE_RESET), ev(types_pb2.EVENT_TYPE_PUT, a, 3), ev(types_pb2.EVENT_TYPE_SYNCED, rev=3),
              # meshd's store replaced: a new full copy, in which alpha is gone and beta is new
              ev(types_pb2.EVENT_TYPE_RESET), ev(types_pb2.EVENT_TYPE_PUT, b, 1), ev(types_pb2.EVENT_TYPE_SYNCED, rev=1)]
    follow_stream(iter(stream), "service", lambda s: s.name, Printer("service", ["NAME"], Output.json, dict))
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["type"], e["service"]["name"], e["revision"]) for e in events] == [
        ("ADDED", "alpha", 3), ("ADDED", "beta", 1), ("DELETED", "alpha", 1)]
    assert isinstance(events[0]["service"]["revision"], int)


def test_peers_watch_polls_at_a_bounded_interval_and_reports_path_changes(capsys):
    answers = iter([
        agent_pb2.ListPeersResponse(peers=[agent_pb2.Peer(node_id="n1", name="a", path="tunnel", rx_bytes=1)]),
        agent_pb2.ListPeersResponse(peers=[agent_pb2.Peer(node_id="n1", name="a", path="tunnel", rx_bytes=99)]),
        agent_pb2.ListPeersResponse(peers=[agent_pb2.Peer(node_id="n1", name="a", path="relay", via="main")]),
        agent_pb2.ListPeersResponse(peers=[])])
    slept = []
    poll_peers(lambda: next(answers), 0.01, Printer("peer", ["NAME", "PATH"], Output.name, lambda p: {"NAME": p.name}),
               sleep=slept.append, rounds=4)
    assert capsys.readouterr().out.splitlines() == ["ADDED a", "MODIFIED a", "DELETED a"]
    assert slept == [1.0, 1.0, 1.0]  # clamped to at least a second


# -- completion and --version ------------------------------------------------------------

def meshctl_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


def test_bash_loads_the_completion_script_and_completes_commands():
    script = subprocess.run([str(BIN / "meshctl"), "completion", "bash"], capture_output=True, text=True,
                            env=meshctl_env(), timeout=60)
    assert script.returncode == 0, script.stderr
    r = subprocess.run(["bash", "-c", script.stdout + '\nCOMP_WORDS=(meshctl ser); COMP_CWORD=1; '
                        '_meshctl_completion meshctl; echo "${COMPREPLY[*]}"'],
                       capture_output=True, text=True, env=meshctl_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["services"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_completion_scripts_for_zsh_and_fish(shell):
    r = subprocess.run([str(BIN / "meshctl"), "completion", shell], capture_output=True, text=True,
                       env=meshctl_env(), timeout=60)
    assert r.returncode == 0 and "_MESHCTL_COMPLETE=complete_" + shell in r.stdout
    if shell == "zsh" and shutil.which("zsh"):
        assert subprocess.run(["zsh", "-n"], input=r.stdout, text=True, timeout=30).returncode == 0


@pytest.mark.parametrize("prog", ["meshctl", "meshd", "meshagent"])
def test_version(prog):
    from meshcore import __version__
    r = subprocess.run([str(BIN / prog), "--version"], capture_output=True, text=True, env=meshctl_env(), timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"{prog} {__version__}"


def test_proto_dict_keeps_presence_like_the_json_mapping():
    s = types_pb2.Service(name="x")
    assert "health" not in proto_dict(s)  # an unset message field is left out, as MessageToDict does
    s.health.tcp = True
    assert "http_path" not in proto_dict(s)["health"]  # so is an unset oneof member
    assert proto_dict(s)["health"]["tcp"] is True
