"""A stand-in for systemctl inside a lab VM: runs a unit's ExecStart as systemd would.

What it does with a unit file from /etc/systemd/system: reads
`EnvironmentFile=` (a leading '-' means optional) and `Environment=`, expands
`$VAR` in ExecStart by splitting the value on whitespace and `${VAR}` as one
word (systemd's rules), starts the process in its own session with the
system PATH, stdout and stderr to /var/log/mesh-lab/<unit>.log, and, for
`Type=notify`, waits for READY=1 on a NOTIFY_SOCKET within TimeoutStartSec
(a start that fails or times out exits 1, printing the log's last lines, as
`systemctl start` and the journal would). `stop` sends SIGTERM and waits.
The caller's AWS_* variables pass through to the unit, standing in for the
instance role and AWS's network (the lab's moto server).
Every call is recorded in /var/log/mesh-lab/systemctl.log.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNITS = Path("/etc/systemd/system")
LOG = Path("/var/log/mesh-lab")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse_unit(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        env[k.strip()] = v
    return env


def expand(cmd: str, env: dict[str, str]) -> list[str]:
    words = []
    for word in shlex.split(cmd):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if m:
            words.extend(env.get(m.group(1), "").split())
            continue
        words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return words


def _seconds(v: str, default: float) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", v or "")
    if not m:
        return default
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def start(unit: str) -> int:
    path = UNITS / f"{unit}.service"
    if not path.exists():
        print(f"Failed to start {unit}.service: Unit {unit}.service not found.", file=sys.stderr)
        return 5
    u = parse_unit(path.read_text())
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    # AWS_* from the caller's environment: on EC2 a unit reaches AWS with the instance role over AWS's
    # network, which no unit file names; in the lab the AWS variables the VM was given (the hub's moto
    # server and its test credentials) stand in for both, e.g. for meshd's --publish-join-token.
    env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    for ef in u.get("EnvironmentFile", []):
        optional = ef.startswith("-")
        p = Path(ef.lstrip("-"))
        if p.exists():
            env.update(read_env_file(p))
        elif not optional:
            print(f"{unit}.service: failed to load environment file {p}", file=sys.stderr)
            return 1
    for e in u.get("Environment", []):
        for item in shlex.split(e):
            k, _, v = item.partition("=")
            env[k] = v
    argv = expand(u["ExecStart"][-1], env)
    stop(unit)
    notify = u.get("Type", ["simple"])[-1] == "notify"
    sock = None
    if notify:
        sock_path = tempfile.mktemp(prefix=f"notify-{unit}-", dir=str(LOG))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        env["NOTIFY_SOCKET"] = sock_path
    LOG.mkdir(parents=True, exist_ok=True)
    log = open(LOG / f"{unit}.log", "ab")
    (LOG / f"{unit}.started").write_text(repr(time.monotonic()))  # for timing from the process start
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                            cwd="/")
    (LOG / f"{unit}.pid").write_text(str(proc.pid))
    if sock is None:
        return 0
    deadline = time.monotonic() + _seconds(u.get("TimeoutStartSec", ["90s"])[-1], 90)
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            sock.settimeout(0.2)
            try:
                msg = sock.recv(4096).decode()
            except socket.timeout:
                continue
            if "READY=1" in msg.split("\n"):
                return 0
    finally:
        sock.close()
        os.unlink(env["NOTIFY_SOCKET"])
    tail = (LOG / f"{unit}.log").read_text(errors="replace").splitlines()[-15:]
    print(f"Job for {unit}.service failed.\n" + "\n".join(tail), file=sys.stderr)
    return 1


def _pid(unit: str) -> int | None:
    try:
        pid = int((LOG / f"{unit}.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def stop(unit: str, timeout: float = 30) -> int:
    pid = _pid(unit)
    if pid is None:
        return 0
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid(unit) is not None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    if _pid(unit) is not None:
        os.killpg(pid, signal.SIGKILL)
    return 0


def main(argv: list[str]) -> int:
    LOG.mkdir(parents=True, exist_ok=True)
    with open(LOG / "systemctl.log", "a") as f:
        f.write(" ".join(argv) + "\n")
    args = [a for a in argv if not a.startswith("-")]
    if not args:
        return 0
    verb, units = args[0], [a.removesuffix(".service") for a in args[1:]]
    if verb in ("daemon-reload", "reset-failed") or (verb == "enable" and "--now" not in argv):
        return 0
    if verb in ("start", "restart") or (verb == "enable" and "--now" in argv):
        return max((start(u) for u in units), default=0)
    if verb == "stop" or verb == "disable":
        return max((stop(u) for u in units), default=0)
    if verb == "is-active":
        return 0 if all(_pid(u) for u in units) else 3
    print(f"systemctl stand-in: '{verb}' is not supported", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
