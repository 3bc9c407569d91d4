"""K3s agent join: the invocation, the supervisor (with a fake `k3s` that records
its argv and environment), the systemd launcher, and K3sJoin over real gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from mesh.v1 import admission_pb2, admission_pb2_grpc
from meshagent.k3s import (
    Invocation,
    K3sAgent,
    K3sConfig,
    K3sJoin,
    K3sSupervisor,
    SystemdK3s,
    build_invocation,
    fetch_join,
    resolve_launcher,
)
from meshcore.errors import FailedPrecondition, InvalidArgument

JOIN = K3sJoin(server_url="https://10.4.0.4:6443", token="K10abc::server:s3cr3t-agent-token")
LABELS = {"gpu.model": "L4", "gpu.count": "4", "sky.cluster": "qwen-coder"}


def fake_k3s(bin_dir: Path, record: Path, behaviour: str = "serve") -> None:
    """A `k3s` that appends {argv, env} to `record`, then serves until SIGTERM,
    exits 1 at once ("crash"), or ignores SIGTERM ("stubborn")."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "k3s"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, signal, sys, time
        mode = {behaviour!r}
        if mode == "stubborn":  # before the record: once it is written, SIGTERM is ignored
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open({str(record)!r}, "a") as f:
            f.write(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ)}}) + "\\n")
        if mode == "crash":
            sys.exit(1)
        deadline = time.monotonic() + 30  # bounded even if nobody stops it
        while time.monotonic() < deadline:
            time.sleep(0.05)
        """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def base_env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path / "home"),
            "K3S_URL": "https://wrong:6443", "K3S_KUBECONFIG_OUTPUT": "/tmp/x"}


async def wait_for(cond, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


# -- the invocation ------------------------------------------------------------

def test_invocation_uses_mesh_address_interface_name_labels_and_keeps_token_out_of_argv(tmp_path):
    inv = build_invocation("qwen-coder", "10.12.3.7", LABELS, JOIN, K3sConfig(mesh_interface="mesh0"),
                           base_env=base_env(tmp_path))
    a = inv.argv
    assert a[:2] == ["k3s", "agent"]
    assert a[a.index("--server") + 1] == "https://10.4.0.4:6443"
    assert a[a.index("--node-ip") + 1] == "10.12.3.7"
    assert a[a.index("--node-name") + 1] == "qwen-coder"
    assert a[a.index("--flannel-iface") + 1] == "mesh0"
    assert [a[i + 1] for i, x in enumerate(a) if x == "--node-label"] == \
        ["gpu.count=4", "gpu.model=L4", "sky.cluster=qwen-coder"]
    assert not any(JOIN.token in x for x in a)
    assert inv.env["K3S_TOKEN"] == JOIN.token
    assert "K3S_URL" not in inv.env and "K3S_KUBECONFIG_OUTPUT" not in inv.env
    assert not any("kubeconfig" in x for x in a)
    assert JOIN.token not in repr(inv)


@pytest.mark.parametrize("kwargs, rule", [
    ({"node_name": "Qwen_Coder"}, "RFC 1123"),
    ({"mesh_address": "mesh-node"}, "must be an IP address"),
    ({"labels": {"gpu model": "L4"}}, "Kubernetes label syntax"),
    ({"labels": {"note": "x" * 64}}, "at most 63"),
    ({"labels": {"Bad.Prefix/x": "y"}}, "DNS subdomain"),
    ({"join": K3sJoin("http://10.4.0.4:6443", "t")}, "must be https://"),
])
def test_bad_facts_are_clear_errors(kwargs, rule):
    args = {"node_name": "n1", "mesh_address": "10.4.0.9", "labels": {}, "join": JOIN} | kwargs
    with pytest.raises(InvalidArgument, match=rule):
        build_invocation(**args)


def test_empty_token_is_a_failed_precondition():
    with pytest.raises(FailedPrecondition, match="empty K3s agent token"):
        build_invocation("n1", "10.4.0.9", {}, K3sJoin(JOIN.server_url, ""))


def test_launcher_follows_systemd():
    assert resolve_launcher(K3sConfig(), {"INVOCATION_ID": "abc"}) == "systemd"
    assert resolve_launcher(K3sConfig(), {}) == "exec"
    assert resolve_launcher(K3sConfig(launcher="exec"), {"INVOCATION_ID": "abc"}) == "exec"
    with pytest.raises(InvalidArgument, match="choose auto, exec or systemd"):
        resolve_launcher(K3sConfig(launcher="docker"), {})


# -- the supervisor with a fake k3s -------------------------------------------

async def test_supervisor_runs_k3s_with_recorded_argv_and_env_and_writes_no_kubeconfig(tmp_path):
    rec = tmp_path / "k3s.jsonl"
    fake_k3s(tmp_path / "bin", rec)
    (tmp_path / "home").mkdir()
    inv = build_invocation("sky-t1", "100.96.0.5", {"gpu.model": "L4"}, JOIN, base_env=base_env(tmp_path))
    sup = K3sSupervisor(inv, K3sConfig(stop_timeout_s=5))
    task = asyncio.create_task(sup.run())
    try:
        await wait_for(lambda: len(records(rec)) == 1)
        seen = records(rec)[0]
        assert seen["argv"] == inv.argv[1:]
        assert seen["env"]["K3S_TOKEN"] == JOIN.token
        assert "K3S_URL" not in seen["env"]
        assert sup.pid is not None
    finally:
        await sup.stop()
        await asyncio.wait_for(task, 10)
    assert sup.starts == 1 and sup.pid is None
    written = [p for p in tmp_path.rglob("*") if "kube" in p.name.lower() or p.suffix in (".yaml", ".yml")]
    assert written == []


async def test_supervisor_restarts_a_crashing_k3s_with_growing_backoff(tmp_path):
    rec = tmp_path / "k3s.jsonl"
    fake_k3s(tmp_path / "bin", rec, "crash")
    inv = build_invocation("n1", "10.4.0.9", {}, JOIN, base_env=base_env(tmp_path))
    delays: list[float] = []

    async def sleep(d: float) -> None:
        delays.append(d)

    sup = K3sSupervisor(inv, K3sConfig(restart_min_s=1, restart_max_s=3), sleep=sleep, max_starts=4)
    await asyncio.wait_for(sup.run(), 20)
    assert sup.starts == 4 and sup.exit_codes == [1, 1, 1, 1]
    assert delays == [1, 2, 3, 3]
    assert len(records(rec)) == 4


async def test_stop_kills_a_k3s_that_ignores_sigterm(tmp_path):
    rec = tmp_path / "k3s.jsonl"
    fake_k3s(tmp_path / "bin", rec, "stubborn")
    inv = build_invocation("n1", "10.4.0.9", {}, JOIN, base_env=base_env(tmp_path))
    sup = K3sSupervisor(inv, K3sConfig(stop_timeout_s=0.5))
    task = asyncio.create_task(sup.run())
    try:
        await wait_for(lambda: len(records(rec)) == 1)  # written after it ignores SIGTERM
        pid = sup.pid
    finally:
        await sup.stop()
        await asyncio.wait_for(task, 10)
    assert sup.exit_codes == [-9]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_missing_k3s_binary_is_a_clear_error(tmp_path):
    inv = Invocation([str(tmp_path / "no-such-k3s"), "agent"], {"PATH": "/usr/bin"})
    with pytest.raises(FailedPrecondition, match="is K3s installed"):
        await K3sSupervisor(inv).run()


# -- the systemd launcher ------------------------------------------------------

def test_systemd_launcher_keeps_token_in_a_0600_env_file(tmp_path):
    calls: list[list[str]] = []
    active = {"value": 3}

    def run(argv):
        calls.append(argv)
        return active["value"] if argv[1] == "is-active" else 0

    cfg = K3sConfig(env_file=tmp_path / "run/k3s-agent.env", launcher="systemd")
    inv = build_invocation("n1", "10.4.0.9", {}, JOIN, cfg, base_env={})
    launcher = SystemdK3s(inv, cfg, run=run)
    assert launcher.start() is True
    env_file = cfg.env_file
    assert env_file.read_text() == f"K3S_TOKEN={JOIN.token}\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    sd = next(c for c in calls if c[0] == "systemd-run")
    assert f"--property=EnvironmentFile={env_file}" in sd
    assert sd[sd.index("--") + 1:] == inv.argv
    assert not any(JOIN.token in x for c in calls for x in c)
    # an agent restart leaves a running K3s alone
    active["value"] = 0
    calls.clear()
    assert launcher.start() is False
    assert [c[0] for c in calls] == ["systemctl"]
    launcher.stop()
    assert calls[-1] == ["systemctl", "stop", "mesh-k3s-agent.service"]


# -- K3sJoin over a real gRPC server -------------------------------------------

class Admission(admission_pb2_grpc.AdmissionServiceServicer):
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    async def K3sJoin(self, request, context):
        if not self.enabled:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "meshd was started without K3s")
        return admission_pb2.K3sJoinResponse(server_url=JOIN.server_url, token=JOIN.token)


@pytest.mark.parametrize("enabled", [True, False])
async def test_fetch_join_over_grpc(enabled):
    server = grpc.aio.server()
    admission_pb2_grpc.add_AdmissionServiceServicer_to_server(Admission(enabled), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            if enabled:
                assert await fetch_join(channel) == JOIN
            else:
                with pytest.raises(FailedPrecondition, match="started without K3s"):
                    await fetch_join(channel)
    finally:
        await server.stop(None)


async def test_k3s_agent_fetches_join_facts_and_runs_k3s(tmp_path):
    rec = tmp_path / "k3s.jsonl"
    fake_k3s(tmp_path / "bin", rec)
    server = grpc.aio.server()
    admission_pb2_grpc.add_AdmissionServiceServicer_to_server(Admission(True), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    agent = K3sAgent("qwen-coder", "10.12.3.7", {"sky.cluster": "qwen-coder"}, K3sConfig(launcher="exec"),
                     env=base_env(tmp_path))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await agent.start(channel)
            await wait_for(lambda: len(records(rec)) == 1)
    finally:
        await agent.stop()
        await server.stop(None)
    seen = records(rec)[0]
    assert seen["argv"][seen["argv"].index("--server") + 1] == JOIN.server_url
    assert seen["env"]["K3S_TOKEN"] == JOIN.token
    assert agent._supervisor.pid is None  # stopped
