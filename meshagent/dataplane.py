"""The agent's data plane: one WireGuard interface and its routes, kept equal to the plan.

The plan (meshagent/paths.py) is computed from meshd's node list: pairs
inside the peered AWS network talk over their VPC addresses, every other
pair over WireGuard, directly to a public endpoint or relayed through the hub
(the main node, `hub` in the config). Whenever the node list changes, and
when wireguard-go had to be restarted, the whole desired state is applied
again; only differences reach the device, the routes and nftables.

The private key is made here (state_dir/wg.key, 0600) before the node joins;
only its public key goes to meshd. On agent stop the device is left running,
so a restarted agent adopts it without dropping a packet.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path as FilePath

from mesh.v1 import types_pb2
from meshagent.paths import NodeFacts, Path, PlanSettings, plan
from meshagent.routes import RouteManager, choose_mtu
from meshagent.wg.backend import BackendConfig
from meshagent.wg.command import Runner
from meshagent.wg.factory import make_backend
from meshagent.wg.keys import load_or_create_private_key, public_key

log = logging.getLogger("meshagent.dataplane")


class DataPlane:
    def __init__(self, state_dir: FilePath, ifname: str, port: int, hub: str, mtu: int | None = None) -> None:
        self.ifname = ifname
        self.port = port
        self.hub = hub
        self.mtu = choose_mtu(1500, configured=mtu)
        self.private_key = load_or_create_private_key(state_dir / "wg.key")
        self.public_key = public_key(self.private_key)
        self._backend_config = BackendConfig(state_dir=state_dir / "wg")
        self.backend = None
        self.routes = RouteManager(Runner())
        self._nodes: list[types_pb2.Node] = []
        self._me: str = ""
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.paths: dict[str, str] = {}
        #: node name -> the chosen path (kind, relay, reason) and the peer key it uses
        self.routes_to: dict[str, tuple[Path, str]] = {}
        self.refused: dict[str, str] = {}
        self.applied = 0

    async def start(self, node_id: str) -> None:
        self._me = node_id
        self.backend = make_backend(self.ifname, self._backend_config, on_restart=self._restarted)
        await self.backend.start()
        self._task = asyncio.create_task(self._run(), name="dataplane")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def update(self, nodes: list[types_pb2.Node]) -> None:
        """The node list changed: re-plan soon (changes arriving together are applied once)."""
        self._nodes = [n for n in nodes if n.state != types_pb2.NODE_STATE_LEFT]
        self._wake.set()

    async def _restarted(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(0.02)
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception as e:  # keep the old state; try again on the next change or in a few seconds
                log.error("data plane apply failed: %s", e)
                await asyncio.sleep(2)
                self._wake.set()

    async def reconcile(self) -> None:
        me = next((n for n in self._nodes if n.id == self._me), None)
        if me is None:
            return  # not in meshd's list yet
        facts = [NodeFacts.from_node(n) for n in self._nodes if n.wireguard_public_key or n.id == self._me]
        hub = next((f for f in facts if f.name == self.hub), None)
        p = plan(NodeFacts.from_node(me), facts, hub, self.private_key,
                 PlanSettings(ifname=self.ifname, mtu=self.mtu, listen_port=self.port))
        for name, why in p.refused.items():
            if self.refused.get(name) != why:
                log.warning("not peering with %s: %s", name, why)
        self.refused = p.refused
        await self.backend.apply(p.interface)  # first: the routes name the interface
        await self.routes.apply(p.routes)
        self.paths = {name: path.kind for name, path in p.paths.items()}
        keys = {f.name: f.wireguard_public_key for f in facts}
        self.routes_to = {name: (path, keys.get(path.via or name, "")) for name, path in p.paths.items()}
        self.applied += 1

    async def peer_stats(self) -> dict[str, object]:
        """The device's counters by peer public key (endpoint, latest handshake, bytes)."""
        if self.backend is None:
            return {}
        return {st.public_key: st for st in await self.backend.stats()}
