"""End to end with real processes on loopback: meshd, meshagents and the meshctl CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from testbed.localmesh import BIN, resolve
from tests.meshfix import wait_for


def test_demo_runs_and_fetches_the_page():
    r = subprocess.run([sys.executable, "-m", "testbed.demo"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "200 'hello from qwen-coder on alpha'" in r.stdout and "demo ok" in r.stdout


def test_meshd_sigkill_loses_nothing_acknowledged_and_names_keep_resolving(local_mesh):
    token = local_mesh.token(uses=2)
    local_mesh.start_agent("server", token)
    local_mesh.start_agent("client", token)
    exposed = json.loads(local_mesh.meshctl("expose", "--port", "8000", "--name", "api", "-o", "json",
                                            agent="server").stdout)
    assert exposed["name"] == "api" and exposed["node_name"] == "server"
    local_mesh.stop(local_mesh.meshd, signal.SIGKILL)
    # meshd is gone: the client still answers from its copy
    assert resolve("api.mesh", local_mesh.dns("client")) == [exposed["address"]]
    status = json.loads(local_mesh.meshctl("status", "-o", "json", agent="client").stdout)
    wait_for(lambda: not json.loads(local_mesh.meshctl("status", "-o", "json", agent="client").stdout)["connected"])
    local_mesh.restart_meshd()
    listed = json.loads(local_mesh.meshctl("services", "-o", "json").stdout)
    assert [s["name"] for s in listed["services"]] == ["api"]  # acknowledged before the kill: kept
    wait_for(lambda: json.loads(local_mesh.meshctl("status", "-o", "json", agent="client").stdout)["connected"])
    log = local_mesh.agents["client"].log.read_text()
    assert log.count("lost meshd") == 1 and status["nodes"] == 2


def test_user_mistakes_get_one_clear_line_and_a_non_zero_exit(local_mesh):
    token = local_mesh.token()
    local_mesh.start_agent("vm", token)
    cases = [
        (["expose", "--port", "8000", "--name", "Bad_Name"], "DNS-1035"),
        (["expose", "--port", "70000", "--name", "ok"], "between 1 and 65535"),
        (["expose", "--port", "0", "--name", "ok"], "between 1 and 65535"),
        (["unexpose", "missing"], "not found"),
        (["resolve", "nothing-here"], "no service named"),
    ]
    for args, rule in cases:
        r = local_mesh.meshctl(*args, agent="vm", check=False)
        assert r.returncode != 0 and rule in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    r = local_mesh.meshctl("token", "create", "--ttl", "soon", check=False)
    assert r.returncode != 0 and "invalid duration" in r.stderr
    r = subprocess.run([str(BIN / "meshctl"), "--agent-socket", "/nonexistent.sock", "services"],
                       capture_output=True, text=True, env={**local_mesh.env, "MESHD_ADMIN_SOCKET": "/nope.sock"})
    assert r.returncode != 0 and "no meshagent socket at /nonexistent.sock" in r.stderr  # never meshd instead


def test_bad_token_and_corrupted_state_are_clear_errors(local_mesh, tmp_path):
    p = subprocess.run([str(BIN / "meshagent"), "--state-dir", str(tmp_path / "a"), "--coordinator",
                        local_mesh.coordinator, "--join-address", local_mesh.join_address,
                        "--socket", str(tmp_path / "a.sock"), "--dns", "", "--metrics", "", "--imds", "",
                        "--wireguard", ""],
                       capture_output=True, text=True, timeout=30, env={**local_mesh.env, "MESH_JOIN_TOKEN": "garbage"})
    assert p.returncode == 2 and "malformed join token" in p.stderr and "Traceback" not in p.stderr
    bad = tmp_path / "bad-meshd"
    bad.mkdir()
    (bad / "ca.key").write_text("not a key")
    (bad / "ca.crt").write_text("not a cert")
    p = subprocess.run([str(BIN / "meshd"), "--state-dir", str(bad), "--listen", "127.0.0.1:0", "--join-listen",
                        "127.0.0.1:0", "--admin-socket", str(tmp_path / "x.sock"), "--metrics", ""],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "not a PEM private key" in p.stderr and "Traceback" not in p.stderr
    assert (bad / "ca.key").read_text() == "not a key"  # never overwritten
    (tmp_path / "agent-state").mkdir()
    (tmp_path / "agent-state" / "node.json").write_text("{broken")
    p = subprocess.run([str(BIN / "meshagent"), "--state-dir", str(tmp_path / "agent-state"), "--coordinator",
                        local_mesh.coordinator, "--dns", "", "--metrics", "", "--socket", str(tmp_path / "b.sock"),
                        "--imds", "", "--wireguard", ""],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "unreadable" in p.stderr and "Traceback" not in p.stderr


def test_node_remove_and_lease_expiry_take_names_away(local_mesh):
    token = local_mesh.token(uses=3)
    for n in ("a", "b", "c"):
        local_mesh.start_agent(n, token)
    local_mesh.meshctl("expose", "--port", "9000", "--name", "from-a", agent="a")
    local_mesh.meshctl("expose", "--port", "9000", "--name", "from-b", agent="b")
    wait_for(lambda: resolve("from-b.mesh", local_mesh.dns("c")) and resolve("from-a.mesh", local_mesh.dns("c")))
    local_mesh.meshctl("node", "remove", "a")
    wait_for(lambda: not resolve("from-a.mesh", local_mesh.dns("c")))
    local_mesh.stop(local_mesh.agents["b"], signal.SIGKILL)  # b dies without a word: lease 3 s + grace 3 s
    wait_for(lambda: not resolve("from-b.mesh", local_mesh.dns("c")), timeout=20)
    nodes = json.loads(local_mesh.meshctl("nodes", "-o", "json").stdout)["nodes"]
    assert {n["name"]: n.get("state") for n in nodes} == {"b": "NODE_STATE_UNREACHABLE", "c": "NODE_STATE_READY"}


def test_admin_certificate_and_the_scheduler_example(local_mesh, tmp_path):
    token = local_mesh.token()
    local_mesh.start_agent("gpu-box", token, extra=["--label", "gpu.model=L4", "--label", "gpu.count=4"])
    local_mesh.meshctl("expose", "--port", "8000", "--name", "llm", agent="gpu-box")
    local_mesh.meshctl("admin", "cert", "sched", "--out", str(tmp_path / "sched"))
    assert oct((tmp_path / "sched" / "admin.key").stat().st_mode & 0o777) == "0o600"
    # admin calls over mTLS, without the admin socket
    env = {"MESH_ADMIN_CERT_DIR": str(tmp_path / "sched"), "MESH_COORDINATOR": local_mesh.coordinator,
           "MESHD_ADMIN_SOCKET": "/nonexistent.sock"}
    listed = json.loads(local_mesh.meshctl("nodes", "-o", "json", env=env).stdout)
    assert [n["name"] for n in listed["nodes"]] == ["gpu-box"]
    r = subprocess.run([sys.executable, "examples/watch_catalog.py", "--coordinator", local_mesh.coordinator,
                        "--cert-dir", str(tmp_path / "sched"), "--events", "3"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "gpu-box" in lines[0] and "4x L4" in lines[0]
    assert [line.split()[2] for line in lines[1:]] == ["reset", "put", "synced"] and "llm" in lines[2]


def test_keys_rotate_from_the_cli(tmp_path):
    """One rotation at a time. A rotation moves on once every live node has renewed since it
    began (in an empty mesh at once), so a node that is live but not renewing (stopped, with a
    60 s lease) holds it at its first stage while the second `keys rotate` is refused."""
    from testbed.localmesh import LocalMesh
    mesh = LocalMesh(tmp_path / "mesh", lease_ttl_s=60, grace_s=60)
    mesh.root.mkdir()
    try:
        mesh.start_meshd()
        agent = mesh.start_agent("vm-a", mesh.token())
        os.killpg(agent.popen.pid, signal.SIGSTOP)
        try:
            out = json.loads(mesh.meshctl("keys", "rotate", "-o", "json").stdout)
            assert out["stage"] == "installing" and len(out["key_id"]) == 8
            r = mesh.meshctl("keys", "rotate", check=False)
            assert r.returncode != 0 and "already under way" in r.stderr
        finally:
            os.killpg(agent.popen.pid, signal.SIGCONT)
    finally:
        mesh.close()


def test_an_agent_frozen_for_less_than_the_suspicion_floor_is_not_declared_dead(tmp_path):
    """A stop-the-world pause or a stalled VM is not a crash. An agent stopped (SIGSTOP) for 3 s,
    under the LAN profile's 4 s suspicion floor, is suspected by its peers and refutes once it
    runs again: no peer declares it dead (their own counters, as `meshctl status` shows them)
    and its name still resolves everywhere."""
    from meshcore.gossip.profiles import lan
    from testbed.localmesh import LocalMesh
    assert lan().suspicion_min_timeout > 3.0
    mesh = LocalMesh(tmp_path / "mesh", lease_ttl_s=120, grace_s=120)
    mesh.root.mkdir()
    try:
        mesh.start_meshd()
        token = mesh.token(uses=0)
        names = [f"vm-{i}" for i in range(5)]
        for name in names:
            mesh.start_agent(name, token)
        mesh.meshctl("expose", "--port", "8000", "--name", "paused", agent="vm-0")
        assert wait_for(lambda: all(resolve("paused.mesh", mesh.dns(x)) for x in names), timeout=30)
        time.sleep(2)  # full membership everywhere

        def counters(name: str) -> dict:
            return json.loads(mesh.meshctl("status", "-o", "json", agent=name).stdout)["counters"]
        pid = mesh.agents["vm-0"].popen.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(3.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(6)  # past the floor of any suspicion the freeze started
        peers = [counters(x) for x in names[1:]]
        assert sum(int(c.get("gossip_suspicions", 0)) for c in peers) >= 1, "the freeze went unnoticed"
        assert [int(c.get("gossip_members_declared_dead", 0)) for c in peers] == [0] * 4
        assert int(counters("vm-0").get("gossip_refutations", 0)) >= 1
        assert all(resolve("paused.mesh", mesh.dns(x)) for x in names[1:])
    finally:
        mesh.close()
