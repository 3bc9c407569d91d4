"""Real meshd and meshagent processes on the lab's nodes (used by the lab tests and `make demo-lab`).

meshd runs on the hub (the main node). Each node's agent joins with one
token, reaching meshd over the VPC peering inside AWS and at the hub's public
address from elsewhere, and runs WireGuard on its lab interface.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testbed.localmesh import BIN, _wait_ready
from testbed.lab.lab import Lab

ROLES = ("hub", "ra", "rb", "cloud", "nat")
COORDINATOR = {"hub": "10.4.0.10", "ra": "10.4.0.10", "rb": "10.4.0.10", "cloud": "198.18.0.4", "nat": "198.18.0.4"}


class LabDaemons:
    def __init__(self, lab: Lab, state: Path) -> None:
        self.lab = lab
        self.state = state
        self.env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
        self.ctl_env = {**self.env, "MESHD_ADMIN_SOCKET": str(state / "admin.sock"), "MESH_AGENT_SOCKET": "/nonexistent"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.ready: dict[str, dict] = {}

    def _start(self, where: str, name: str, argv: list[str], prefix: str, env: dict[str, str] | None = None) -> None:
        with open(self.state / f"{name}.log", "ab") as log:
            p = self.lab.popen(where, argv, stdout=subprocess.PIPE, stderr=log, env=env or self.env)
        self.procs[name] = p
        self.ready[name] = _wait_ready(p, prefix, self.state / f"{name}.log", 30)

    def start_meshd(self) -> None:
        self._start("hub", "meshd", [str(BIN / "meshd"), "--state-dir", str(self.state / "meshd"), "--listen",
                                     "0.0.0.0:7443", "--join-listen", "0.0.0.0:7444", "--admin-socket",
                                     str(self.state / "admin.sock"), "--metrics", "", "--overlay-pool",
                                     "100.64.0.0/24", "--lease-ttl", "5", "--grace", "10"], "meshd")

    def start_agent(self, role: str, token: str = "") -> None:
        node = self.lab.nodes[role]
        s = node.spec
        argv = [str(BIN / "meshagent"), "--state-dir", str(self.state / role), "--coordinator",
                f"{COORDINATOR[role]}:7443", "--name", role, "--socket", str(self.state / f"{role}.sock"),
                "--dns", "127.0.0.1:0", "--dns-upstream", "127.0.0.1:9", "--metrics", "", "--gossip", "0.0.0.0:0",
                "--gossip-profile", "local", "--no-spot-watch", "--wireguard", node.ifname, "--hub", "hub",
                "--cloud", s.cloud, "--region", s.region]
        env = {**self.env, "MESH_JOIN_TOKEN": token} if token else None  # never on the command line
        for flag, value in (("--vpc-id", s.vpc_id), ("--vpc-cidr", s.vpc_cidr),
                            ("--private-address", s.private_address), ("--public-address", s.public_address)):
            if value:
                argv += [flag, value]
        self._start(role, role, argv, "meshagent", env)

    def meshctl(self, *args: str, agent: str | None = None) -> subprocess.CompletedProcess:
        env = dict(self.ctl_env)
        if agent:
            env["MESH_AGENT_SOCKET"] = str(self.state / f"{agent}.sock")
        return subprocess.run([str(BIN / "meshctl"), *args], env=env, capture_output=True, text=True, check=True,
                              timeout=60)

    def start(self) -> LabDaemons:
        self.start_meshd()
        token = self.meshctl("token", "create", "--uses", str(len(ROLES))).stdout.strip()
        for role in ROLES:
            self.start_agent(role, token)
        return self

    def stop(self, name: str | None = None) -> None:
        names = [name] if name else list(self.procs)
        for n in names:
            p = self.procs[n]
            if p.poll() is None:
                p.terminate()
        for n in names:
            p = self.procs.pop(n)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            if p.stdout:
                p.stdout.close()


def query(lab: Lab, role: str, dns: str, name: str) -> list[str]:
    """Ask `role`'s agent DNS (inside its namespace) for an A record."""
    host, port = dns.rsplit(":", 1)
    code = ("import dnslib,sys; q=dnslib.DNSRecord.question(sys.argv[1]);"
            "r=dnslib.DNSRecord.parse(q.send(sys.argv[2], int(sys.argv[3]), timeout=1));"
            "print(' '.join(str(x.rdata) for x in r.rr))")
    r = lab.run(role, [sys.executable, "-c", code, name, host, port], check=False)
    return r.stdout.split()
