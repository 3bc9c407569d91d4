"""A stand-in for meshagent's data-plane half, run as its own process in a lab namespace.

Reads one plan (JSON on stdin: interface and routes), starts or adopts the
WireGuard device, applies both, prints what changed as one JSON line, then
keeps supervising until killed, as the agent does. Lets tests kill a real
agent process with SIGKILL and start another.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import uvloop

from meshagent.routes import Route, RouteManager, RouteState, Rule
from meshagent.wg.backend import BackendConfig
from meshagent.wg.command import Runner
from meshagent.wg.model import InterfaceConfig, PeerConfig
from meshagent.wg.userspace import UserspaceBackend


def encode(interface: InterfaceConfig, routes: RouteState) -> str:
    i = interface
    return json.dumps({
        "interface": {"name": i.name, "private_key": i.private_key, "address": i.address, "listen_port": i.listen_port,
                      "mtu": i.mtu, "peers": [[p.public_key, p.endpoint, list(p.allowed_ips), p.persistent_keepalive]
                                              for p in i.peers]},
        "routes": [[r.dst, r.dev, r.src, r.table] for r in routes.routes],
        "rules": [[r.iif, r.table, r.priority] for r in routes.rules],
        "relay_ifaces": list(routes.relay_ifaces), "sysctls": [list(s) for s in routes.sysctls]})


async def main(state_dir: str) -> None:
    doc = json.loads(sys.stdin.readline())
    i = doc["interface"]
    iface = InterfaceConfig(i["name"], i["private_key"], i["address"], i["listen_port"], i["mtu"],
                            tuple(PeerConfig(k, e, tuple(a), ka) for k, e, a, ka in i["peers"]))
    routes = RouteState(frozenset(Route(*r) for r in doc["routes"]), frozenset(Rule(*r) for r in doc["rules"]),
                        tuple(doc["relay_ifaces"]), tuple(tuple(s) for s in doc["sysctls"]))
    manager = RouteManager(Runner(None))  # the stub runs inside the namespace already
    backend = UserspaceBackend(iface.name, BackendConfig(state_dir=Path(state_dir)),
                               on_restart=lambda: manager.apply(routes))
    await backend.start()
    d = await backend.apply(iface)
    rd = await manager.apply(routes)
    print(json.dumps({"pid": backend.pid, "wg_empty": d.empty, "wg": str(d), "routes_empty": rd.empty,
                      "routes_added": len(rd.added), "nft": rd.nft}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
