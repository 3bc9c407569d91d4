"""Our data plane on every lab node, driven in-process: one wireguard-go backend and one
route manager per node, configured from `meshagent.paths.plan` over the lab's node facts.

This is what meshagent does on each VM, minus the control plane: the facts
that meshd would hand out come straight from the lab's topology.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from meshagent.paths import NodeFacts, Plan, PlanSettings, plan
from meshagent.routes import RouteDiff, RouteManager
from meshagent.wg.backend import BackendConfig
from meshagent.wg.command import Runner
from meshagent.wg.keys import generate_private_key, public_key
from meshagent.wg.model import Diff
from meshagent.wg.userspace import UserspaceBackend
from testbed.lab.lab import Lab

# Nodes others cannot reach first come last, so their first handshake finds the other side configured.
APPLY_ORDER = ("hub", "cloud", "ra", "rb", "nat")


class LabMesh:
    def __init__(self, lab: Lab, state_dir: Path, port: int = 51820, keepalive_s: int = 25,
                 mtu: int = 1420) -> None:
        self.lab = lab
        self.state_dir = state_dir
        self.port = port
        self.keepalive_s = keepalive_s
        self.mtu = mtu
        self.keys = {role: generate_private_key() for role in lab.nodes}
        self.backends: dict[str, UserspaceBackend] = {}
        self.routers = {role: RouteManager(Runner(n.netns)) for role, n in lab.nodes.items()}
        self.removed: set[str] = set()  # nodes that left the mesh
        self.overrides: dict[str, dict] = {}  # role -> NodeFacts fields that changed (e.g. a new public address)
        for role in lab.nodes:
            self.backends[role] = self.new_backend(role)

    def new_backend(self, role: str) -> UserspaceBackend:
        n = self.lab.nodes[role]
        cfg = BackendConfig(netns=n.netns, state_dir=self.state_dir, restart_delay_s=0.05)
        return UserspaceBackend(n.ifname, cfg, on_restart=lambda: self.apply_routes(role))

    def fact(self, role: str) -> NodeFacts:
        f = self.lab.nodes[role].facts(public_key(self.keys[role]), self.port)
        return dataclasses.replace(f, **self.overrides.get(role, {}))

    def facts(self) -> list[NodeFacts]:
        return [self.fact(r) for r in self.lab.nodes if r not in self.removed]

    def main(self) -> NodeFacts:
        return self.fact("hub")

    def plan(self, role: str, nodes: list[NodeFacts] | None = None) -> Plan:
        n = self.lab.nodes[role]
        settings = PlanSettings(ifname=n.ifname, mtu=self.mtu, keepalive_s=self.keepalive_s, listen_port=self.port)
        me = self.fact(role)
        return plan(me, nodes if nodes is not None else self.facts(), self.main(), self.keys[role], settings,
                    self.lab.main_region)

    async def start(self, roles=APPLY_ORDER) -> None:
        await asyncio.gather(*(self.backends[r].start() for r in roles))

    async def apply(self, role: str) -> tuple[Diff, RouteDiff]:
        p = self.plan(role)
        d = await self.backends[role].apply(p.interface)
        return d, await self.routers[role].apply(p.routes)

    async def apply_routes(self, role: str) -> RouteDiff:
        return await self.routers[role].apply(self.plan(role).routes)

    async def apply_all(self, roles=APPLY_ORDER) -> dict[str, tuple[Diff, RouteDiff]]:
        out = {}
        for r in roles:
            if r not in self.removed:
                out[r] = await self.apply(r)
        return out

    async def stop(self) -> None:
        for b in self.backends.values():
            try:
                await b.stop()
            except Exception:
                pass
