"""A mesh of real processes on loopback: meshd and N meshagents, no root, no cloud.

Used by `make demo`, the end-to-end tests and the control benchmark. Each
daemon is a real process started from this virtualenv; mesh addresses come
from a loopback pool (127.77.0.0/24 by default), so a service bound to its
node's mesh address is reachable from every other "node" on this machine.
Everything is stopped and removed by `close()` (or the context manager).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    ready: dict[str, str] = field(default_factory=dict)
    log: Path | None = None


def _wait_ready(p: subprocess.Popen, prefix: str, log: Path, timeout: float) -> dict[str, str]:
    """Read stdout until the daemon's 'ready' line; bounded by `timeout`."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while time.monotonic() < deadline:
            if p.poll() is not None:
                break
            if not sel.select(timeout=0.1):
                continue
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith(prefix + " ready"):
                    return dict(kv.split("=", 1) for kv in line.split()[2:] if "=" in kv)
    finally:
        sel.close()
    raise RuntimeError(f"{prefix} did not become ready within {timeout}s; see {log}:\n{log.read_text()[-2000:]}")


class LocalMesh:
    def __init__(self, root: Path | None = None, pool: str = "127.77.0.0/24", lease_ttl_s: float = 15,
                 grace_s: float = 30, gossip_profile: str = "lan") -> None:
        self.gossip_profile = gossip_profile
        self.root = Path(root or tempfile.mkdtemp(prefix="mesh-"))
        self._own_root = root is None
        self.pool = pool
        self.lease_ttl_s, self.grace_s = lease_ttl_s, grace_s
        self.meshd: Proc | None = None
        self.agents: dict[str, Proc] = {}
        self.extra: list[subprocess.Popen] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRPC_VERBOSITY": "ERROR",
                    "MESHD_ADMIN_SOCKET": str(self.root / "meshd.sock")}
        self.env.pop("MESH_AGENT_SOCKET", None)

    # -- daemons ---------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        log = self.root / f"{name}.log"
        err = open(log, "ab")
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env or self.env, cwd=self.root,
                             start_new_session=True)
        err.close()
        return p, log

    def start_meshd(self, listen: str = "127.0.0.1:0", join: str = "127.0.0.1:0", timeout: float = 20,
                    extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Proc:
        argv = [str(BIN / "meshd"), "--state-dir", str(self.root / "meshd"), "--listen", listen,
                "--join-listen", join, "--admin-socket", str(self.root / "meshd.sock"), "--metrics", "",
                "--overlay-pool", self.pool, "--lease-ttl", str(self.lease_ttl_s), "--grace", str(self.grace_s), *extra]
        p, log = self._spawn("meshd", argv, {**self.env, **env} if env else None)
        self.meshd = Proc("meshd", p, _wait_ready(p, "meshd", log, timeout), log)
        return self.meshd

    def restart_meshd(self, sig: int = signal.SIGTERM) -> Proc:
        ports = self.meshd.ready
        self.stop(self.meshd, sig)
        return self.start_meshd(f"127.0.0.1:{ports['listen']}", f"127.0.0.1:{ports['join']}")

    @property
    def coordinator(self) -> str:
        return f"127.0.0.1:{self.meshd.ready['listen']}"

    @property
    def join_address(self) -> str:
        return f"127.0.0.1:{self.meshd.ready['join']}"

    def token(self, uses: int = 1) -> str:
        return self.meshctl("token", "create", "--uses", str(uses)).stdout.strip()

    def socket(self, agent: str) -> str:
        return str(self.root / f"{agent}.sock")

    def _spawn_agent(self, name: str, token: str | None, extra: list[str] = (),
                     program: list[str] | None = None) -> tuple[subprocess.Popen, Path]:
        argv = [*(program or [str(BIN / "meshagent")]), "--state-dir", str(self.root / name), "--coordinator", self.coordinator,
                "--join-address", self.join_address, "--name", name, "--socket", self.socket(name),
                "--dns", "127.0.0.1:0", "--dns-upstream", "127.0.0.1:9", "--metrics", "", "--gossip", "0.0.0.0:0",
                "--gossip-profile", self.gossip_profile, "--no-spot-watch",
                # the loopback mesh: no cloud metadata, no GPUs, no data plane
                "--imds", "", "--no-gpus", "--wireguard", "", *extra]
        env = None
        if token:  # never on the command line (every local user can read it there)
            env = {**self.env, "MESH_JOIN_TOKEN": token}
        return self._spawn(name, argv, env)

    def start_agent(self, name: str, token: str | None = None, timeout: float = 20,
                    extra: list[str] = (), program: list[str] | None = None) -> Proc:
        """`program`: what runs in place of the meshagent script (e.g. python -c with a probe)."""
        p, log = self._spawn_agent(name, token, extra, program)
        proc = Proc(name, p, _wait_ready(p, "meshagent", log, timeout), log)
        self.agents[name] = proc
        return proc

    def start_agents(self, names: list[str], token: str, timeout: float = 60) -> list[Proc]:
        """Start every agent at once, then wait for each to be ready (within `timeout` in all),
        as VMs of one launch join together."""
        spawned = [(name, *self._spawn_agent(name, token)) for name in names]
        deadline = time.monotonic() + timeout
        for name, p, log in spawned:  # each registered before waiting, so close() stops them all
            self.agents[name] = Proc(name, p, {}, log)
        for name, p, log in spawned:
            self.agents[name].ready = _wait_ready(p, "meshagent", log, max(1.0, deadline - time.monotonic()))
        return [self.agents[name] for name in names]

    def dns(self, agent: str) -> tuple[str, int]:
        host, port = self.agents[agent].ready["dns"].rsplit(":", 1)
        return host, int(port)

    def meshctl(self, *args: str, agent: str | None = None, check: bool = True,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full_env = {**self.env, **(env or {})}
        if agent:
            full_env["MESH_AGENT_SOCKET"] = self.socket(agent)
        else:
            full_env.pop("MESH_AGENT_SOCKET", None)
            full_env["MESH_ADMIN"] = "1"
        r = subprocess.run([str(BIN / "meshctl"), *args], capture_output=True, text=True, env=full_env,
                           timeout=60, cwd=self.root)
        if check and r.returncode != 0:
            raise RuntimeError(f"meshctl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    # -- cleanup ---------------------------------------------------------------
    @staticmethod
    def stop(proc: Proc | subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        p = proc.popen if isinstance(proc, Proc) else proc
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout)
        if p.stdout:
            p.stdout.close()

    def close(self) -> None:
        for p in self.extra:
            self.stop(p)
        for a in self.agents.values():
            self.stop(a)
        if self.meshd:
            self.stop(self.meshd)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalMesh:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def still_resolving(name: str, servers: list[tuple[str, int]], timeout: float = 0.5) -> set[tuple[str, int]]:
    """Ask every server for `name` at once (one socket, one query each); the servers that still
    answer with records, or did not answer within `timeout` (unknown counts as still resolving)."""
    import select
    import socket

    import dnslib
    pending: dict[tuple[str, int], int] = {}
    out: set[tuple[str, int]] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i, server in enumerate(servers):
            q = dnslib.DNSRecord.question(name, "A")
            q.header.id = i + 1
            pending[server] = i + 1
            sock.sendto(q.pack(), server)
        ids = {v: k for k, v in pending.items()}
        deadline = time.monotonic() + timeout
        while pending and (left := deadline - time.monotonic()) > 0:  # bounded by timeout
            if not select.select([sock], [], [], left)[0]:
                break
            data, _ = sock.recvfrom(4096)
            try:
                reply = dnslib.DNSRecord.parse(data)
            except Exception:
                continue
            server = ids.get(reply.header.id)
            if server is None or server not in pending:
                continue
            del pending[server]
            if reply.rr:
                out.add(server)
    return out | set(pending)


def rss_mb(pid: int) -> float:
    """A process's resident memory (VmRSS), in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} has no resident memory to read (it has ended)")


def scrape(port: int | str, timeout: float = 5.0) -> str:
    """A daemon's Prometheus text from its --metrics listener on loopback (OSError when it does not answer)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return r.read().decode()


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples called `name` (as exposed: `_total`, `_bucket` included) whose labels include
    `labels`, each as (its labels, its value), read with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name and labels.items() <= s.labels.items()]


def resolve(name: str, server: tuple[str, int], qtype: str = "A", timeout: float = 2.0) -> list[str]:
    """Ask one DNS server for `name`; the answers' data as text (raises on timeout)."""
    import dnslib
    q = dnslib.DNSRecord.question(name, qtype)
    reply = dnslib.DNSRecord.parse(q.send(server[0], server[1], timeout=timeout))
    return [str(rr.rdata) for rr in reply.rr]
