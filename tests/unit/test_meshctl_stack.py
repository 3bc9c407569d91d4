"""meshctl install / dns / k3s on a temp root, with a fake `systemctl` on PATH
that records its arguments."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from meshctl.stack import dns_app, install_app, k3s_app

ROOT = Path(__file__).resolve().parents[2]
TF = " --token-file /etc/mesh/join-token --remove-token-file"
TOKEN = "t0123abcd." + "5" * 32 + "." + "a" * 64

app = typer.Typer()
app.add_typer(install_app, name="install")
app.add_typer(dns_app, name="dns")
app.add_typer(k3s_app, name="k3s")


@pytest.fixture
def host(tmp_path):
    """A temp root and a PATH whose `systemctl` appends its arguments to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    fake = bin_dir / "systemctl"
    fake.write_text("#!/bin/bash\n"
                    f'echo "$*" >> "{calls}"\n'
                    'if [ -n "$FAKE_SYSTEMCTL_FAIL" ]; then\n'
                    '  echo "Failed to connect to bus: No such file or directory" >&2; exit 1\n'
                    'fi\n')
    fake.chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()

    class Host:
        def __init__(self) -> None:
            self.root = root
            self.runner = CliRunner()
            self.token_file = self.token_path(TOKEN)

        def token_path(self, value: str) -> str:
            """A file holding `value` as a join token (the token never goes on the command line)."""
            f = tmp_path / f"token-{abs(hash(value))}"
            f.write_text(value + "\n")
            return str(f)

        def run(self, *args: str, fail: bool = False):
            env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MESH_JOIN_TOKEN": None,
                   "FAKE_SYSTEMCTL_FAIL": "1" if fail else None}
            return self.runner.invoke(app, [*args, "--root", str(root)], env=env)

        def calls(self) -> list[list[str]]:
            return [x.split(" ") for x in calls.read_text().splitlines()] if calls.exists() else []

    return Host()


def shipped(daemon: str) -> str:
    """The shipped unit with ExecStart at the executable installed with this meshctl."""
    real = os.path.realpath(Path(sys.prefix) / "bin" / daemon)
    return (ROOT / f"systemd/{daemon}.service").read_text().replace(f"/usr/local/bin/{daemon} ", f"{real} ")


def env_lines(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if not x.startswith("#")]


def test_install_agent_writes_unit_env_file_and_starts(host):
    r = host.run("install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", host.token_file, "--k3s", "-o", "json")
    assert r.exit_code == 0, r.output
    unit = host.root / "etc/systemd/system/meshagent.service"
    assert unit.read_text() == shipped("meshagent")
    env = host.root / "etc/mesh/meshagent.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert env_lines(env) == [f'MESHAGENT_OPTS="--coordinator 10.4.0.4:7443 --k3s{TF}"']
    token = host.root / "etc/mesh/join-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == TOKEN + "\n"
    assert host.calls() == [["daemon-reload"], ["enable", "meshagent.service"], ["restart", "meshagent.service"]]
    assert [row["result"] for row in json.loads(r.stdout)] == ["written"] * 3 + ["ok", "ok", "ok", "ok (ready)"]


def test_install_agent_with_name_labels_and_empty_token_after_join(host):
    state = host.root / "var/lib/meshagent"
    state.mkdir(parents=True)
    (state / "node.key").write_text("x")  # already joined: no token needed
    r = host.runner.invoke(app, ["install", "agent", "--coordinator", "10.4.0.4:7443", "--name", "qwen-coder",
                                 "--label", "sky.cluster=qwen-coder", "--label", "gpu.model=L4",
                                 "--root", str(host.root), "--no-start"], env={"MESH_JOIN_TOKEN": ""})
    assert r.exit_code == 0, r.output
    assert env_lines(host.root / "etc/mesh/meshagent.env") == [
        'MESHAGENT_OPTS="--coordinator 10.4.0.4:7443 --name qwen-coder --label sky.cluster=qwen-coder '
        f'--label gpu.model=L4{TF}"']


def test_reinstall_without_changes_does_not_bounce_the_daemon(host):
    args = ("install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", host.token_file)
    assert host.run(*args).exit_code == 0
    env = host.root / "etc/mesh/meshagent.env"
    before = env.read_bytes()
    assert host.run(*args).exit_code == 0
    assert env.read_bytes() == before
    assert host.calls()[-3:] == [["daemon-reload"], ["enable", "meshagent.service"], ["start", "meshagent.service"]]


def test_token_from_environment_and_user_lines_are_kept(host):
    env = host.root / "etc/mesh/meshagent.env"
    env.parent.mkdir(parents=True)
    env.write_text("# my notes\nHTTPS_PROXY=http://10.4.0.9:3128\n")
    r = host.runner.invoke(app, ["install", "agent", "--coordinator", "mesh.example.internal:7443",
                                 "--root", str(host.root), "--no-start"], env={"MESH_JOIN_TOKEN": TOKEN})
    assert r.exit_code == 0, r.output
    assert env.read_text().splitlines() == ["# my notes", "HTTPS_PROXY=http://10.4.0.9:3128",
                                            f'MESHAGENT_OPTS="--coordinator mesh.example.internal:7443{TF}"']
    assert (host.root / "etc/mesh/join-token").read_text() == TOKEN + "\n"
    assert host.calls() == []  # --no-start


def test_install_coordinator(host):
    r = host.run("install", "coordinator", "--listen", "0.0.0.0:7443",
                 "--daemon-arg=--k3s-token-file=/var/lib/rancher/k3s/server/agent-token")
    assert r.exit_code == 0, r.output
    assert env_lines(host.root / "etc/mesh/meshd.env") == [
        'MESHD_OPTS="--listen 0.0.0.0:7443 --k3s-token-file=/var/lib/rancher/k3s/server/agent-token"']
    assert (host.root / "etc/systemd/system/meshd.service").read_text() == shipped("meshd")
    assert ["restart", "meshd.service"] in host.calls()


def test_install_coordinator_on_ipv6(host):
    r = host.run("install", "coordinator", "--listen", "[::]:7443", "--no-start")
    assert r.exit_code == 0, r.output
    assert env_lines(host.root / "etc/mesh/meshd.env") == ['MESHD_OPTS="--listen [::]:7443"']


@pytest.mark.parametrize("args, message", [
    (["install", "agent", "--coordinator", "10.4.0.4"], "must be HOST:PORT"),
    (["install", "agent", "--coordinator", "10.4.0.4:70000", "--token-file", "@" + TOKEN], "between 1 and 65535"),
    (["install", "agent", "--coordinator", "bad host:7443", "--token-file", "@" + TOKEN], "must be HOST:PORT"),
    (["install", "agent", "--coordinator", "fd00::1:7443", "--token-file", "@" + TOKEN], "must be HOST:PORT"),
    (["install", "agent", "--coordinator", "[mesh]:7443", "--token-file", "@" + TOKEN], "must be HOST:PORT"),
    (["install", "coordinator", "--listen", "0.0.0.0:0"], "between 1 and 65535"),
    (["install", "agent", "--coordinator", "10.4.0.4:7443"], "a join token is needed"),
    (["install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", "@abc def"], "malformed join token"),
    (["install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", '@x."$(reboot)'], "malformed join token"),
    (["install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", "@" + TOKEN, "--bin-dir", "bin"], "absolute path"),
    (["install", "coordinator", "--daemon-arg", "--x;reboot"], "invalid --daemon-arg"),
    (["install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", "@" + TOKEN, "--name", "Qwen_Coder"], "RFC 1123"),
    (["install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", "@" + TOKEN, "--label", "gpu model=L4"],
     "Kubernetes label"),
    (["install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", "@" + TOKEN, "--label", "gpu"], "expected key=value"),
    (["k3s", "join"], "install the agent first"),
    (["dns", "install", "--address", "localhost"], "invalid DNS address"),
    (["dns", "install", "--mode", "hosts"], "choose one of auto, resolved, resolv.conf"),
])
def test_bad_input_is_one_clear_line_and_nothing_is_written(host, args, message):
    r = host.run(*[host.token_path(a[1:]) if a.startswith("@") else a for a in args])
    assert r.exit_code == 1
    assert r.output.startswith("error: ") and message in r.output and "Traceback" not in r.output
    assert not (host.root / "etc/mesh").exists() and host.calls() == []


def test_failing_systemctl_is_reported_in_one_line(host):
    r = host.run("install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", host.token_file, fail=True)
    assert r.exit_code == 1
    assert r.output.startswith("error: 'systemctl daemon-reload' failed: Failed to connect to bus: No such file")
    assert "systemctl restart meshagent" in r.output and r.output.count("\n") == 1
    assert (host.root / "etc/mesh/meshagent.env").exists()


def test_k3s_join_and_leave_toggle_the_agent_option(host):
    assert host.run("install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", host.token_file).exit_code == 0
    env = host.root / "etc/mesh/meshagent.env"
    r = host.run("k3s", "join")
    assert r.exit_code == 0, r.output
    assert env_lines(env)[0] == f'MESHAGENT_OPTS="--coordinator 10.4.0.4:7443{TF} --k3s"'
    assert host.calls()[-1] == ["restart", "meshagent.service"]
    n = len(host.calls())
    assert host.run("k3s", "join").exit_code == 0
    assert len(host.calls()) == n  # already joined: no restart
    assert host.run("k3s", "leave").exit_code == 0
    assert env_lines(env)[0] == f'MESHAGENT_OPTS="--coordinator 10.4.0.4:7443{TF}"'
    assert host.calls()[-2:] == [["stop", "mesh-k3s-agent.service"], ["restart", "meshagent.service"]]
    assert stat.S_IMODE(env.stat().st_mode) == 0o600


def test_dns_install_and_uninstall_through_the_cli(host):
    (host.root / "run/systemd/resolve").mkdir(parents=True)
    r = host.run("dns", "install", "--address", "127.0.0.77")
    assert r.exit_code == 0, r.output
    dropin = host.root / "etc/systemd/resolved.conf.d/mesh.conf"
    assert "Domains=~cluster.local ~mesh" in dropin.read_text()
    assert host.calls() == [["restart", "systemd-resolved"]]
    assert host.run("dns", "install").exit_code == 0
    assert len(host.calls()) == 1
    r = host.run("dns", "uninstall", "-o", "json")
    assert r.exit_code == 0 and not dropin.exists()
    assert json.loads(r.stdout)[0] == {"what": "/etc/systemd/resolved.conf.d/mesh.conf", "result": "changed"}


def test_written_options_are_understood_by_the_daemons(host):
    """ExecStart = the unit's fixed options + the env file's, split on whitespace."""
    from meshagent.main import parse_args as agent_args
    from meshd.main import parse_args as meshd_args

    assert host.run("install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", host.token_file, "--name", "qwen-coder",
                    "--label", "gpu.model=L4", "--dns", "127.0.0.77:53", "--no-start").exit_code == 0
    assert host.run("install", "coordinator", "--daemon-arg=--k3s-server-url=https://10.4.0.4:6443",
                    "--daemon-arg=--k3s-token-file=/etc/mesh/k3s-agent-token", "--no-start").exit_code == 0
    for daemon, parse in (("meshagent", agent_args), ("meshd", meshd_args)):
        unit = (host.root / f"etc/systemd/system/{daemon}.service").read_text()
        exec_start = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
        fixed = exec_start.split()[1:-1]  # between the binary and $..._OPTS
        env = dict(line.split("=", 1) for line in env_lines(host.root / f"etc/mesh/{daemon}.env"))
        opts = env[f"{daemon.upper()}_OPTS"].strip('"').split()
        config = parse(fixed + opts)
        if daemon == "meshagent":
            assert (config.coordinator, config.name, config.labels, config.dns) == \
                ("10.4.0.4:7443", "qwen-coder", {"gpu.model": "L4"}, "127.0.0.77:53")
            assert str(config.state_dir) == "/var/lib/meshagent" and config.socket == "/run/meshagent/agent.sock"
        else:
            assert config.k3s_server_url == "https://10.4.0.4:6443" and config.listen == "0.0.0.0:7443"
            assert str(config.state_dir) == "/var/lib/meshd" and config.admin_socket == "/run/meshd/admin.sock"


def test_meshctl_imports_no_daemon_code() -> None:
    """meshctl reaches meshd and meshagent over their APIs; shared rules come from meshcore."""
    import ast

    bad = []
    for f in sorted((ROOT / "meshctl").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            bad += [f"{f.name}:{node.lineno}: {n}" for n in names if n.split(".")[0] in ("meshd", "meshagent")]
    assert bad == []


# -- install from a virtualenv -------------------------------------------------------

@pytest.fixture
def venv(tmp_path):
    """A virtualenv outside this checkout whose meshctl is this checkout's, as `pip install` makes one:
    console scripts meshd, meshagent and meshctl in <venv>/bin with the virtualenv's python."""
    venv = tmp_path / "venv"
    import sysconfig
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    # the dependencies come from this virtualenv, the package from this checkout
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "mesh.pth").write_text(f"{ROOT}\n{sysconfig.get_paths()['purelib']}\n")
    for prog, module in (("meshd", "meshd.main"), ("meshagent", "meshagent.main"), ("meshctl", "meshctl.main")):
        script = venv / "bin" / prog
        script.write_text(f"#!{venv}/bin/python\nimport sys\nfrom {module} import main\nsys.exit(main())\n")
        script.chmod(0o755)
    return venv


def run_meshctl(venv: Path, host_bin: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # PATH has the recorded systemctl but not the virtualenv: as `sudo /opt/mesh/bin/meshctl install ...`
    path = f"{host_bin}:/usr/sbin:/usr/bin:/sbin:/bin"
    return subprocess.run([str(venv / "bin/meshctl"), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": path, "HOME": str(venv), **(env or {})})


def test_install_from_a_virtualenv_points_the_unit_at_its_executables(host, venv, tmp_path):
    r = run_meshctl(venv, tmp_path / "bin", "install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", host.token_file,
                    "--root", str(host.root), "-o", "json")
    assert r.returncode == 0, r.stderr
    unit = (host.root / "etc/systemd/system/meshagent.service").read_text()
    exec_start = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    assert exec_start.startswith(f"ExecStart={venv}/bin/meshagent --state-dir /var/lib/meshagent ")
    results = {row["what"]: row["result"] for row in json.loads(r.stdout)}
    assert results["systemd-analyze verify meshagent.service"] == "ok"
    assert results["systemctl restart meshagent.service"] == "ok (ready)"
    assert host.calls() == [["daemon-reload"], ["enable", "meshagent.service"], ["restart", "meshagent.service"]]
    # the unit runs what it names: the stand-in systemctl of the lab would execute this path
    assert os.access(exec_start.split()[0].removeprefix("ExecStart="), os.X_OK)


def test_a_missing_executable_is_refused_before_anything_is_written(host, tmp_path):
    r = host.run("install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", host.token_file,
                 "--bin-dir", str(tmp_path / "nowhere"))
    assert r.exit_code == 1 and r.output.startswith("error: meshagent executable not found")
    assert not (host.root / "etc").exists() and host.calls() == []


def test_an_executable_under_home_is_refused(host, tmp_path, monkeypatch):
    from meshcore.errors import MeshError
    from meshctl import stack
    monkeypatch.setattr(stack.os.path, "realpath", lambda p: "/home/alice/venv/bin/meshagent")
    monkeypatch.setattr(stack.os, "access", lambda p, m: True)
    with pytest.raises(MeshError, match="ProtectHome=yes hides"):
        stack.find_binary("meshagent", None)


def test_dry_run_prints_the_unit_and_the_environment_file_and_changes_nothing(host):
    r = host.run("install", "agent", "--coordinator", "10.4.0.4:7443", "--token-file", host.token_file, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "ExecStart=" in r.output and f'MESHAGENT_OPTS="--coordinator 10.4.0.4:7443{TF}"' in r.output
    assert "MESH_JOIN_TOKEN=" not in r.output and "5" * 32 not in r.output
    assert not (host.root / "etc").exists() and host.calls() == []


def test_a_failed_start_shows_the_journal(host, tmp_path):
    fake = tmp_path / "bin"
    (fake / "systemctl").write_text('#!/bin/bash\ncase "$1" in restart|start) echo "Job for meshd.service failed '
                                    'because the control process exited with error code." >&2; exit 1;; esac\n')
    (fake / "journalctl").write_text("#!/bin/sh\necho 'meshd[42]: meshd: error: cannot read /var/lib/meshd/ca.key'\n")
    for f in ("systemctl", "journalctl"):
        (fake / f).chmod(0o755)
    r = host.run("install", "coordinator")
    assert r.exit_code == 1
    assert r.output.startswith("error: meshd did not start: 'systemctl restart meshd.service' failed: Job for")
    assert "meshd: error: cannot read /var/lib/meshd/ca.key" in r.output
