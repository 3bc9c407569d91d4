"""Kernel WireGuard through netlink (pyroute2), where the module exists.

The device is a `wireguard` link created with `ip`; keys, port and peers go
through pyroute2's generic-netlink `WireGuard` socket. pyroute2's async API
fails under uvloop and its sync API refuses to run inside a running loop, so
every netlink call runs in a worker thread (`asyncio.to_thread`).

The kernel keeps no process to supervise; a device removed behind our back is
recreated by the next `apply`. Netlink sockets act in the caller's namespace,
so this backend drives the agent's own namespace only.
"""

from __future__ import annotations

import asyncio
import ipaddress

from meshcore.errors import AlreadyExists, InvalidArgument, Unavailable
from meshcore.names import parse_hostport
from meshagent.wg.backend import Backend
from meshagent.wg.command import Runner
from meshagent.wg.link import apply_link, link_state
from meshagent.wg.model import Diff, InterfaceConfig, PeerConfig, diff
from meshagent.wg.uapi import PeerStats


class KernelBackend(Backend):
    kind = "kernel"

    def __init__(self, name, config, on_restart=None) -> None:
        super().__init__(name, config, on_restart)
        if config.netns is not None:
            raise InvalidArgument("the kernel WireGuard backend drives the agent's own namespace: run the agent "
                                  "inside the namespace, or use the userspace backend")
        self.runner = Runner(None)
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        state = await link_state(self.runner, self.name)
        if state.exists:
            kind = await self._link_kind()
            if kind != "wireguard":
                raise AlreadyExists(f"interface name '{self.name}' is in use by a '{kind}' interface: choose a name no "
                                    "other interface has")
            return  # ours from a previous agent run: adopt it
        await self.runner.run(["ip", "link", "add", "dev", self.name, "type", "wireguard"])

    async def stop(self) -> None:
        await self.runner.run(["ip", "link", "del", "dev", self.name], check=False)

    async def _link_kind(self) -> str:
        info = await self.runner.json(["ip", "-j", "-d", "link", "show", "dev", self.name])
        return ((info or [{}])[0].get("linkinfo") or {}).get("info_kind", "unknown")

    async def current(self) -> InterfaceConfig | None:
        state = await link_state(self.runner, self.name)
        if not state.exists:
            return None
        key, port, peers, _ = await asyncio.to_thread(_read, self.name)
        return InterfaceConfig(self.name, key or "", state.address, port, state.mtu, tuple(peers))

    async def stats(self) -> list[PeerStats]:
        return (await asyncio.to_thread(_read, self.name))[3]

    async def apply(self, desired: InterfaceConfig) -> Diff:
        desired = desired.validated()
        self._check_name(desired)
        async with self._lock:
            if not (await link_state(self.runner, self.name)).exists:
                await self.start()
            cur = await self.current()
            d = diff(cur, desired)
            await asyncio.to_thread(_write, self.name, desired, d)
            state = await link_state(self.runner, self.name)
            d.interface = sorted(set(d.interface) | set(await apply_link(self.runner, self.name, state,
                                                                        desired.address, desired.mtu)))
            return d


def _read(name: str) -> tuple[str | None, int, list[PeerConfig], list[PeerStats]]:
    from pyroute2 import WireGuard

    try:
        with WireGuard() as wg:
            msgs = list(wg.info(name))
    except Exception as e:
        raise Unavailable(f"cannot read WireGuard device '{name}' over netlink: {e}") from None
    key, port, peers, stats = None, 0, [], []
    for msg in msgs:
        key = msg.get_attr("WGDEVICE_A_PRIVATE_KEY") or key
        key = key.decode() if isinstance(key, bytes) else key
        port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or port
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
            pub = peer.get_attr("WGPEER_A_PUBLIC_KEY")
            pub = pub.decode() if isinstance(pub, bytes) else pub
            ep = peer.get_attr("WGPEER_A_ENDPOINT")
            endpoint = None
            if ep and ep.get("addr"):
                addr = ipaddress.ip_address(ep["addr"])
                endpoint = f"[{addr}]:{ep['port']}" if addr.version == 6 else f"{addr}:{ep['port']}"
            ips = []
            for a in peer.get_attr("WGPEER_A_ALLOWEDIPS") or []:
                if a.get("addr"):  # set by pyroute2's decoder as 'address/prefix'
                    ips.append(a["addr"])
            ka = peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0
            hs = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
            peers.append(PeerConfig(pub, endpoint, tuple(ips), ka))
            stats.append(PeerStats(pub, endpoint, int(hs.get("tv_sec", 0)) if isinstance(hs, dict) else 0,
                                   peer.get_attr("WGPEER_A_RX_BYTES") or 0, peer.get_attr("WGPEER_A_TX_BYTES") or 0))
    return key, port, peers, stats


def _write(name: str, desired: InterfaceConfig, d: Diff) -> None:
    from pyroute2 import WireGuard

    want = desired.peer_map()
    with WireGuard() as wg:
        if "private_key" in d.interface or "listen_port" in d.interface:
            wg.set(name, private_key=desired.private_key,
                   listen_port=desired.listen_port if desired.listen_port else None)
        for key in d.removed:
            wg.set(name, peer={"public_key": key, "remove": True})
        for key in [*d.added, *d.changed]:
            p = want[key]
            peer = {"public_key": key, "persistent_keepalive": p.persistent_keepalive,
                    "replace_allowed_ips": True, "allowed_ips": list(p.allowed_ips)}
            if p.endpoint is not None:
                peer["endpoint_addr"], peer["endpoint_port"] = parse_hostport(p.endpoint, "endpoint")
            wg.set(name, peer=peer)
