"""Real processes: one daemon per state, refusals in one line, meshctl asks the daemon the user meant."""

from __future__ import annotations

import json
import socket
import subprocess

from testbed.localmesh import BIN, LocalMesh


def _meshd(local_mesh, state, *extra, admin=None):
    return subprocess.run([str(BIN / "meshd"), "--state-dir", str(state), "--metrics", "",
                           "--admin-socket", admin or str(local_mesh.root / "meshd.sock"), *extra],
                          capture_output=True, text=True, timeout=30, env=local_mesh.env)


def _one_error_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "ready" not in p.stdout
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], p.stderr
    return lines[0]


def test_a_second_meshd_on_the_same_state_directory_refuses_and_the_first_keeps_serving(local_mesh):
    pid = local_mesh.meshd.popen.pid
    line = _one_error_line(_meshd(local_mesh, local_mesh.root / "meshd", "--listen", "127.0.0.1:0",
                                  "--join-listen", "127.0.0.1:0"))
    assert f"pid {pid} on {socket.gethostname()}" in line and "meshd" in line
    # the first one kept its admin socket and its store
    assert local_mesh.meshctl("token", "create").stdout.strip()


def test_a_second_meshd_on_the_same_ports_or_admin_socket_refuses(local_mesh, tmp_path):
    line = _one_error_line(_meshd(local_mesh, tmp_path / "other", "--listen", local_mesh.coordinator,
                                  "--join-listen", "127.0.0.1:0", admin=str(tmp_path / "other.sock")))
    assert f"port {local_mesh.meshd.ready['listen']} is in use" in line and "--listen" in line
    line = _one_error_line(_meshd(local_mesh, tmp_path / "other", "--listen", "127.0.0.1:0",
                                  "--join-listen", "127.0.0.1:0"))
    assert "meshd.sock is held by another running meshd" in line
    assert local_mesh.meshctl("token", "create").stdout.strip()  # the admin socket is still the first one's


def test_a_port_held_by_another_program_is_one_line_naming_it(local_mesh, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = _one_error_line(_meshd(local_mesh, tmp_path / "m2", "--listen", "127.0.0.1:0",
                                      "--join-listen", f"127.0.0.1:{port}", admin=str(tmp_path / "m2.sock")))
    assert f"port {port} is in use" in line and "--join-listen" in line


def _agent(local_mesh, state, sock, *extra, coordinator=None, join=None, token=""):
    return subprocess.run([str(BIN / "meshagent"), "--state-dir", str(state), "--coordinator",
                           coordinator or local_mesh.coordinator, "--join-address", join or local_mesh.join_address,
                           "--socket", str(sock), "--dns", "", "--metrics", "", "--gossip", "", "--imds", "",
                           "--no-gpus", "--wireguard", "", "--no-spot-watch", *extra],
                          capture_output=True, text=True, timeout=30,
                          env={**local_mesh.env, "MESH_JOIN_TOKEN": token})


def test_agent_start_refusals_and_warnings(local_mesh, tmp_path):
    token = local_mesh.token(uses=3)
    local_mesh.start_agent("vm", token)
    # another agent given vm's socket: refused before it joins, and vm keeps its socket
    line = _one_error_line(_agent(local_mesh, tmp_path / "b", local_mesh.socket("vm"), token=token))
    assert "vm.sock is held by another running meshagent" in line
    assert json.loads(local_mesh.meshctl("status", "-o", "json", agent="vm").stdout)["node"]["name"] == "vm"
    # a second agent on vm's state directory
    line = _one_error_line(_agent(local_mesh, local_mesh.root / "vm", tmp_path / "c.sock"))
    assert "in use by meshagent (pid" in line
    # an identity from another mesh: refused with what to do
    other = LocalMesh(tmp_path / "other", lease_ttl_s=3, grace_s=3)
    other.root.mkdir()
    try:
        other.start_meshd()
        local_mesh.stop(local_mesh.agents.pop("vm"))
        line = _one_error_line(_agent(local_mesh, local_mesh.root / "vm", tmp_path / "d.sock",
                                      coordinator=other.coordinator, join=other.join_address))
        assert "belongs to another mesh" in line and "Remove" in line and "token" in line
    finally:
        other.close()
    # a coordinator that differs from the one stored at join: a warning naming both, then serving
    proc = local_mesh.start_agent("vm", extra=["--coordinator", f"localhost:{local_mesh.meshd.ready['listen']}"])
    log = proc.log.read_text()
    assert f"--coordinator localhost:{local_mesh.meshd.ready['listen']} differs from {local_mesh.coordinator}" in log


def test_meshctl_never_falls_back_from_the_agent_to_meshd(local_mesh, tmp_path):
    token = local_mesh.token(uses=2)
    local_mesh.start_agent("a", token)
    local_mesh.start_agent("b", token)
    local_mesh.meshctl("expose", "--port", "8000", "--name", "web1", agent="b")
    # a mistyped agent socket on the main node: an error naming it, and b's service stays
    env = {**local_mesh.env, "MESH_AGENT_SOCKET": str(tmp_path / "typo.sock")}
    r = subprocess.run([str(BIN / "meshctl"), "unexpose", "web1"], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and f"no meshagent socket at {tmp_path / 'typo.sock'}" in r.stderr
    listed = json.loads(local_mesh.meshctl("services", "-o", "json").stdout)
    assert [s["name"] for s in listed["services"]] == ["web1"]
    # a worker whose agent is down: the error is about the agent, not meshd
    env = {**local_mesh.env, "MESH_AGENT_SOCKET": local_mesh.socket("a"), "MESHD_ADMIN_SOCKET": "/nope.sock"}
    local_mesh.stop(local_mesh.agents.pop("a"))
    r = subprocess.run([str(BIN / "meshctl"), "services"], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "meshagent" in r.stderr and local_mesh.socket("a") in r.stderr
    assert "meshd" not in r.stderr.replace("--admin talks to meshd", "")
    # --admin asks meshd on purpose
    r = subprocess.run([str(BIN / "meshctl"), "--admin", "services", "-o", "json"], capture_output=True, text=True,
                       env={**local_mesh.env, "MESH_AGENT_SOCKET": local_mesh.socket("b")})
    assert r.returncode == 0 and "web1" in r.stdout
