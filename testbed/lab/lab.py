"""A network-namespace lab: build it, run things inside it, tear it down completely.

Each `Lab` has a random tag; its namespaces are `ml<tag>-<role>` and its
WireGuard interface names `wm<tag><role>` (WireGuard names must be unique on
the whole machine), so two labs never collide. `up()` records the lab in
/run/meshlab/<tag>.json so `python -m testbed.lab down` can remove labs left
behind by a killed test run. `down()` kills every process inside the
namespaces (including wireguard-go), deletes the namespaces (and with them
every veth, bridge and rule) and removes the WireGuard sockets.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from meshagent.paths import NodeFacts
from testbed.lab import topology
from testbed.lab.topology import NODES, ROUTERS, NodeSpec

REGISTRY = Path("/run/meshlab")
SOCKET_DIR = Path("/var/run/wireguard")
ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().parent / "probe.py"


class LabError(Exception):
    pass


@dataclass(frozen=True)
class LabNode:
    """A mesh node of the lab: its namespace, the WireGuard interface name it should use, its facts."""

    role: str
    netns: str
    ifname: str
    spec: NodeSpec

    def facts(self, wireguard_public_key: str = "", wireguard_port: int = 51820) -> NodeFacts:
        s = self.spec
        return NodeFacts(self.role, s.cloud, s.region, s.vpc_id, s.vpc_cidr, s.private_address, s.public_address,
                         wireguard_public_key, wireguard_port, s.mesh_address)


def _sh(argv: list[str], stdin: str | None = None, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(argv)[:200]}: {r.stderr.strip()[:400]}")
    return r


class Lab:
    main_region = topology.MAIN_REGION

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or secrets.token_hex(2)
        self.ns = {role: f"ml{self.tag}-{role}" for role in (*(n.role for n in NODES), *ROUTERS)}
        self.nodes = {n.role: LabNode(n.role, self.ns[n.role], f"wm{self.tag}{n.role}", n) for n in NODES}
        self.nat_public = topology.NAT_PUBLIC
        self._procs: list[subprocess.Popen] = []

    # -- life --------------------------------------------------------------

    @classmethod
    def create(cls) -> Lab:
        """A new lab with a tag no existing namespace uses, built and ready."""
        existing = _sh(["ip", "netns", "list"]).stdout
        for _ in range(20):
            lab = cls()
            if f"ml{lab.tag}-" not in existing:
                lab.up()
                return lab
        raise LabError("could not find a free lab tag")

    def up(self) -> Lab:
        REGISTRY.mkdir(parents=True, exist_ok=True)
        self._record()
        try:
            for ns in self.ns.values():
                _sh(["ip", "netns", "add", ns])
            self._run_steps(topology.build_steps(self.ns, self.nat_public))
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Remove everything this lab made. Safe to call twice and after a partial up()."""
        for p in self._procs:
            if p.poll() is None:
                p.kill()
        for p in self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()
        present = set(_sh(["ip", "netns", "list"], check=False).stdout.split())
        for ns in self.ns.values():
            if ns not in present:
                continue
            for pid in _sh(["ip", "netns", "pids", ns], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _sh(["ip", "netns", "del", ns], check=False)
        for node in self.nodes.values():
            (SOCKET_DIR / f"{node.ifname}.sock").unlink(missing_ok=True)
        (REGISTRY / f"{self.tag}.json").unlink(missing_ok=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def _record(self) -> None:
        (REGISTRY / f"{self.tag}.json").write_text(json.dumps({"tag": self.tag, "pid": os.getpid()}))

    def _run_steps(self, steps: list[list[str]]) -> None:
        for step in steps:
            if step[-2:-1] == ["-"] and step[-3:-2] == ["-f"]:
                _sh(step[:-1], stdin=step[-1])
            else:
                _sh(step)

    # -- running things inside ---------------------------------------------

    def netns(self, node: str) -> str:
        if node not in self.ns:
            raise LabError(f"no lab node '{node}': choose from {', '.join(self.ns)}")
        return self.ns[node]

    def run(self, node: str, argv: list[str], check: bool = True, timeout: float = 20.0,
            stdin: str | None = None) -> subprocess.CompletedProcess:
        return _sh(["ip", "netns", "exec", self.netns(node), *argv], stdin=stdin, check=check, timeout=timeout)

    def popen(self, node: str, argv: list[str], **kw) -> subprocess.Popen:
        """Start a process in `node`'s namespace; down() kills it if the caller does not."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("cwd", str(ROOT))
        p = subprocess.Popen(["ip", "netns", "exec", self.netns(node), *argv], **kw)
        self._procs.append(p)
        return p

    def serve(self, node: str, port: int = 7000) -> subprocess.Popen:
        """A probe server in `node` answering TCP with its name and echoing UDP."""
        p = self.popen(node, [sys.executable, str(PROBE), "serve", node, str(port)], stdout=subprocess.PIPE, text=True)
        if p.stdout.readline().strip() != "ready":
            raise LabError(f"probe server in {node} did not start")
        return p

    def connect(self, node: str, targets: list[str], timeout: float = 2.0) -> list[dict]:
        """TCP connects from `node` to each 'host:port'; results in order."""
        r = self.run(node, [sys.executable, str(PROBE), "connect", str(timeout), *targets],
                     timeout=timeout * len(targets) + 10)
        return json.loads(r.stdout)

    def rtt_ms(self, node: str, host: str, port: int, count: int) -> list[float]:
        r = self.run(node, [sys.executable, str(PROBE), "rtt", host, str(port), str(count)], timeout=count + 10)
        return json.loads(r.stdout)

    def route_dev(self, node: str, dst: str) -> str:
        """The interface `node` sends packets for `dst` out of."""
        return json.loads(self.run(node, ["ip", "-j", "route", "get", dst]).stdout)[0]["dev"]

    # -- faults ------------------------------------------------------------

    def renat(self, new_public: str = "198.18.0.31") -> None:
        """The NAT box comes back with a new public address: every mapping of the NAT'd node changes."""
        g = self.ns["natgw"]
        for pid in _sh(["ip", "netns", "pids", g], check=False).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        _sh(["ip", "netns", "del", g])
        # The veth ends in other namespaces go with it; wait until the names are free again.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if _sh(["ip", "-n", self.ns["nat"], "link", "show", "lan"], check=False).returncode != 0 and \
               _sh(["ip", "-n", self.ns["inet"], "link", "show", "p-natgw"], check=False).returncode != 0:
                break
            time.sleep(0.02)
        _sh(["ip", "netns", "add", g])
        self.nat_public = new_public
        self._run_steps(topology.nat_box_steps(self.ns, new_public, with_pub=True))


def down_all() -> int:
    """Remove every lab recorded in /run/meshlab, and any namespace that looks like one."""
    tags = {p.stem for p in REGISTRY.glob("*.json")} if REGISTRY.exists() else set()
    for name in _sh(["ip", "netns", "list"], check=False).stdout.split():
        if name.startswith("ml") and "-" in name and len(name.split("-")[0]) == 6:
            tags.add(name[2:6])
    for tag in sorted(tags):
        Lab(tag).down()
    return len(tags)
