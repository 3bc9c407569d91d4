"""The systemd units: `systemd-analyze verify` and `security` on the units as
`meshctl install` writes them, the settings the daemons rely on, and a
daemon-like process speaking sd_notify (READY=1, then WATCHDOG=1) to a socket
the test binds, as systemd would."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshctl.stack import install_app

ROOT = Path(__file__).resolve().parents[2]
UNITS = {"meshd": ROOT / "systemd/meshd.service", "meshagent": ROOT / "systemd/meshagent.service"}
ALLOWED_CAPS = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is missing: `make setup` installs the systemd package"
    return path


def settings(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


@pytest.fixture
def installed(tmp_path):
    """Both units installed by `meshctl install` into a temp root, ExecStart at stub binaries."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for daemon in UNITS:
        stub = bin_dir / daemon
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    runner = CliRunner()
    root = tmp_path / "root"
    token = {"MESH_JOIN_TOKEN": "t0123abcd." + "5" * 32 + "." + "a" * 64}
    for args in (["agent", "--coordinator", "10.4.0.4:7443"], ["coordinator"]):
        r = runner.invoke(install_app, args + ["--root", str(root), "--bin-dir", str(bin_dir), "--no-start"], env=token)
        assert r.exit_code == 0, r.output
    return {d: root / "etc/systemd/system" / f"{d}.service" for d in UNITS}


def test_units_pass_systemd_analyze_verify(installed):
    r = subprocess.run([analyze(), "verify", *map(str, installed.values())],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ours = [line for line in (r.stdout + r.stderr).splitlines() if "meshd" in line or "meshagent" in line]
    assert ours == []


def test_verify_catches_a_broken_unit(installed, tmp_path):
    broken = tmp_path / "meshd.service"
    broken.write_text(installed["meshd"].read_text().replace("Type=notify", "Type=notfy"))
    r = subprocess.run([analyze(), "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "notfy" in r.stdout + r.stderr


@pytest.mark.parametrize("daemon", UNITS)
def test_units_are_hardened(installed, daemon):
    r = subprocess.run([analyze(), "security", "--offline=true", str(installed[daemon])],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    # systemd's scale: 0 (locked down) to 10 (unsafe); "OK" is below 4.5.
    assert float(m.group(1)) < 4.0


@pytest.mark.parametrize("daemon", UNITS)
def test_unit_settings(daemon):
    s = settings(UNITS[daemon])
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["on-failure"] and s["WatchdogSec"]
    assert s["StateDirectory"] == [daemon]
    assert daemon in s["RuntimeDirectory"][0].split()
    assert s["EnvironmentFile"] == [f"-/etc/mesh/{daemon}.env"]
    assert s["ExecStart"][0].startswith(f"/usr/local/bin/{daemon} --state-dir /var/lib/{daemon} ")
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    caps = set(s["CapabilityBoundingSet"][0].split())
    assert caps <= ALLOWED_CAPS and set(s["AmbientCapabilities"][0].split()) <= caps
    assert s["WantedBy"] == ["multi-user.target"]


def test_installed_unit_is_the_shipped_unit(installed):
    for daemon, path in installed.items():
        shipped = UNITS[daemon].read_text()
        assert path.read_text() == shipped.replace(f"/usr/local/bin/{daemon} ", f"{path.parents[3].parent}/bin/{daemon} ")


# -- sd_notify from a daemon-like process --------------------------------------

DAEMON = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from meshcore import sdnotify

    async def main():
        # a daemon: serve first, then say so, then keep the watchdog fed
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sdnotify.ready(f"serving on 127.0.0.1:{{port}}")
        task = sdnotify.start_watchdog()
        assert task is not None, "watchdog not started"
        await asyncio.sleep(10)  # bounded: the test kills it long before

    asyncio.run(main())
""")


@pytest.mark.parametrize("abstract", [False, True])
def test_daemon_speaks_sd_notify(tmp_path, abstract):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"mesh-test-notify-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        notify_socket = "@" + name
    else:
        notify_socket = str(tmp_path / "notify.sock")
        sock.bind(notify_socket)
    sock.settimeout(5)
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON.format(root=str(ROOT)))
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket, WATCHDOG_USEC="200000")
    # systemd sets WATCHDOG_PID to the main process: exec keeps the shell's pid.
    proc = subprocess.Popen(["/bin/sh", "-c", f'WATCHDOG_PID=$$ exec "{sys.executable}" "{script}"'], env=env)
    try:
        messages = []
        for _ in range(4):  # READY=1 and three watchdog pings, 0.1 s apart
            messages.append(sock.recv(4096).decode())
        assert messages[0].startswith("READY=1\nSTATUS=serving on 127.0.0.1:")
        assert messages[1:] == ["WATCHDOG=1"] * 3
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)
        sock.close()


# -- the real daemons ------------------------------------------------------------

class Notifications:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path, log: Path) -> None:
        self.path = path
        self.log = log  # the daemon's output, shown when a notification does not come
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)  # meshd and the agent start in a few seconds

    def next(self) -> str:
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            out = self.log.read_text() if self.log.exists() else ""
            raise AssertionError(f"no notification within 30 s; {self.log.name}:\n{out[-3000:]}") from None

    def until(self, prefix: str, limit: int = 20) -> list[str]:
        seen = []
        for _ in range(limit):
            seen.append(self.next())
            if seen[-1].startswith(prefix):
                return seen
        raise AssertionError(f"no {prefix} among {seen}")

    def close(self) -> None:
        self.sock.close()


def start_daemon(args: list[str], notify: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="400000", PYTHONPATH=str(ROOT))
    cmd = " ".join(f"'{a}'" for a in [sys.executable, *args])
    with open(log, "wb") as out:
        return subprocess.Popen(["/bin/sh", "-c", f"WATCHDOG_PID=$$ exec {cmd}"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_daemon(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_meshd_and_meshagent_speak_sd_notify(tmp_path):
    meshd_n = Notifications(tmp_path / "meshd.notify", tmp_path / "meshd.log")
    agent_n = Notifications(tmp_path / "agent.notify", tmp_path / "agent.log")
    procs: list[subprocess.Popen] = []
    try:
        meshd = start_daemon(["-m", "meshd.main", "--state-dir", str(tmp_path / "meshd"), "--listen", "127.0.0.1:0",
                              "--join-listen", "127.0.0.1:0", "--admin-socket", str(tmp_path / "admin.sock"),
                              "--metrics", ""], tmp_path / "meshd.notify", tmp_path / "meshd.log")
        procs.append(meshd)
        assert meshd_n.next() == "READY=1"
        assert meshd_n.next() == "WATCHDOG=1"
        ports = dict(kv.split("=") for kv in re.search(r"meshd ready (.*)", (tmp_path / "meshd.log").read_text())
                     .group(1).split())
        r = subprocess.run([sys.executable, "-m", "meshctl.main", "--admin-socket", str(tmp_path / "admin.sock"),
                            "token", "create", "-o", "json"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        token = json.loads(r.stdout)["secret"]
        token_file = tmp_path / "join-token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        agent = start_daemon(["-m", "meshagent.main", "--state-dir", str(tmp_path / "agent"),
                              "--coordinator", f"127.0.0.1:{ports['listen']}",
                              "--join-address", f"127.0.0.1:{ports['join']}", "--token-file", str(token_file),
                              "--socket", str(tmp_path / "agent.sock"), "--dns", "127.0.0.1:0", "--metrics", "",
                              "--imds", "", "--no-gpus", "--wireguard", "", "--name", "notify-test"], tmp_path / "agent.notify", tmp_path / "agent.log")
        procs.append(agent)
        assert agent_n.until("READY=1")[-1] == "READY=1"
        assert agent_n.next() == "WATCHDOG=1" and agent_n.next() == "WATCHDOG=1"
        for proc, n in ((agent, agent_n), (meshd, meshd_n)):
            proc.terminate()
            assert n.until("STOPPING=1")[-1] == "STOPPING=1"
            assert proc.wait(15) == 0
    finally:
        for proc in procs:
            stop_daemon(proc)
        meshd_n.close()
        agent_n.close()
