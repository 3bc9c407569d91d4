"""The network-interface side of a WireGuard device: address, MTU and up state.

Both backends configure the tunnel itself differently (UAPI or netlink) but
the link the same way, through `ip` in the device's namespace. `LinkState` is
what is there; `apply_link` changes only what differs from the desired state.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshagent.wg.command import Runner


@dataclass(frozen=True)
class LinkState:
    exists: bool
    addresses: tuple[str, ...] = ()  # 'addr/prefix', sorted
    mtu: int = 0
    up: bool = False

    @property
    def address(self) -> str:
        # One address is the normal case; several (or none) never equal a desired single address.
        return ",".join(self.addresses)


async def link_state(runner: Runner, name: str) -> LinkState:
    rc, out, _ = await runner.run(["ip", "-j", "addr", "show", "dev", name], check=False)
    if rc != 0:
        return LinkState(exists=False)
    import json

    info = (json.loads(out) or [{}])[0]
    addrs = tuple(sorted(f"{a['local']}/{a['prefixlen']}" for a in info.get("addr_info", [])
                         if a.get("family") == "inet" or (a.get("family") == "inet6" and a.get("scope") != "link")))
    flags = info.get("flags", [])
    return LinkState(exists=True, addresses=addrs, mtu=int(info.get("mtu", 0)), up="UP" in flags)


async def apply_link(runner: Runner, name: str, state: LinkState, address: str, mtu: int) -> list[str]:
    """Bring the link to (address, mtu, up); returns the fields it changed."""
    changed, lines = [], []
    if state.addresses != (address,):
        lines += [f"addr del {old} dev {name}" for old in state.addresses if old != address]
        lines.append(f"addr replace {address} dev {name}")
        changed.append("address")
    if state.mtu != mtu or not state.up:
        lines.append(f"link set dev {name} mtu {mtu} up")
        changed += (["mtu"] if state.mtu != mtu else []) + ([] if state.up else ["up"])
    if lines:
        # One ip process for all of it: this is on the path from agent start to first packet.
        await runner.run(["ip", "-batch", "-"], stdin="\n".join(lines) + "\n")
    return changed
