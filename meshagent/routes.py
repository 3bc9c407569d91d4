"""Routes, policy rules, relay firewall and sysctls as desired state, applied as a diff.

Model: `RouteState` is everything the data plane needs from the kernel besides
the WireGuard device itself:

- routes to peers' mesh addresses through the WireGuard interface
  (`ip route ... proto 151`: the protocol number labels them as ours, so we
  list, change and remove only our own and never anyone else's);
- on the main node, the relay: a policy rule `iif <wg> lookup 51820` and a
  table of every relayed node's address via the interface, so packets that
  arrive through the tunnel leave through it again even where the main node
  itself reaches that node directly over VPC peering (peering forwards no
  transit traffic); forwarding and loose reverse-path filtering for the
  interface;
- nftables rules in a table of our own (`inet mesh`): accept and MSS-clamp
  wg-to-wg forwarding. The table is replaced whole in one nft transaction
  and carries the hash of its content in its comment, so a re-apply with the
  same content does nothing and a restart can never duplicate a rule (each
  rule exists once, inside the one table). Other tables are never touched.

Sysctls are set when they differ and never reverted: forwarding, once on,
may be relied on by other software on the host.

`RouteManager.apply(desired)` reads what is there and changes only the
difference; routes and rules that are ours but no longer desired (a peer went
away) are removed. The MTU of the tunnel is chosen from the underlying path:
`choose_mtu`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field

from meshcore.errors import InvalidArgument
from meshagent.wg.command import Runner

# Route and rule protocol number that marks them as created by meshagent
# (rt_protos leaves 151 unassigned).
MESH_PROTO = 151
MAIN_TABLE = 254
# Table holding the relay routes of the main node; the same number as the
# default WireGuard port, which is easy to recognise in `ip rule` output. Its own
# constant: the table number must not follow a change of the port.
RELAY_TABLE = 51820
RELAY_RULE_PRIORITY = 5180
NFT_TABLE = "mesh"
# IPv6 40 + UDP 8 + WireGuard 32: the overhead wg-quick reserves as well.
WIREGUARD_OVERHEAD = 80
SAFE_MTU = 1280


def choose_mtu(underlay_mtu: int, overhead: int = WIREGUARD_OVERHEAD, configured: int | None = None) -> int:
    """Tunnel MTU: the configured one if set, else the underlying path's minus WireGuard's overhead,
    never below 1280 (the IPv6 minimum, always safe). 1500 gives 1420."""
    if configured is not None:
        if not SAFE_MTU <= configured <= 65535:
            raise InvalidArgument(f"invalid MTU {configured}: must be {SAFE_MTU} to 65535 ({SAFE_MTU} is the safe choice)")
        return configured
    return max(SAFE_MTU, underlay_mtu - overhead)


async def underlay_mtu(runner: Runner, towards: str, default: int = 1500) -> int:
    """MTU of the interface the kernel would use to reach `towards` (a peer's endpoint address)."""
    try:
        route = (await runner.json(["ip", "-j", "route", "get", towards]))[0]
        link = (await runner.json(["ip", "-j", "link", "show", "dev", route["dev"]]))[0]
        return int(link["mtu"])
    except Exception:
        return default


@dataclass(frozen=True, order=True)
class Route:
    dst: str              # CIDR
    dev: str
    src: str | None = None  # preferred source address (the node's mesh address)
    table: int = MAIN_TABLE


@dataclass(frozen=True, order=True)
class Rule:
    iif: str
    table: int
    priority: int = RELAY_RULE_PRIORITY


@dataclass(frozen=True)
class RouteState:
    routes: frozenset[Route] = frozenset()
    rules: frozenset[Rule] = frozenset()
    # Interfaces whose traffic this node forwards back out of the same interface (relay).
    relay_ifaces: tuple[str, ...] = ()
    # sysctl name -> value, e.g. net.ipv4.ip_forward = 1 on the main node.
    sysctls: tuple[tuple[str, str], ...] = ()


@dataclass
class RouteDiff:
    added: list[Route] = field(default_factory=list)
    removed: list[Route] = field(default_factory=list)
    rules_added: list[Rule] = field(default_factory=list)
    rules_removed: list[Rule] = field(default_factory=list)
    nft: str = "unchanged"  # unchanged | replaced | created | deleted
    sysctls: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.rules_added or self.rules_removed
                    or self.nft != "unchanged" or self.sysctls)


def render_nft(desired: RouteState) -> str | None:
    """The `inet mesh` table for `desired`, or None when we need no rules at all."""
    if not desired.relay_ifaces:
        return None
    rules = []
    for i in sorted(desired.relay_ifaces):
        # Clamp MSS to the route MTU: relayed TCP must fit both tunnel legs.
        rules.append(f'iifname "{i}" oifname "{i}" tcp flags syn tcp option maxseg size set rt mtu')
        rules.append(f'iifname "{i}" oifname "{i}" accept')
    body = "\n".join(f"    {r}" for r in rules)
    # Policy accept: our chain only adds accepts; it must not drop what other tables allow.
    chain = f"  chain forward {{\n    type filter hook forward priority filter; policy accept;\n{body}\n  }}\n"
    digest = hashlib.sha256(chain.encode()).hexdigest()[:16]
    return f'table inet {NFT_TABLE} {{\n  comment "meshagent {digest}"\n{chain}}}\n'


def _digest(table_text: str | None) -> str | None:
    if table_text is None:
        return None
    m = re.search(r'comment "meshagent ([0-9a-f]+)"', table_text)
    return m.group(1) if m else ""


def diff_routes(current: set[Route], desired: set[Route]) -> tuple[list[Route], list[Route]]:
    return sorted(desired - current), sorted(current - desired)


def _norm_dst(dst: str) -> str:
    return str(ipaddress.ip_network(dst if "/" in dst else dst + ("/128" if ":" in dst else "/32")))


def _table(v) -> int:
    return {"main": MAIN_TABLE, "local": 255, "default": 253}.get(str(v), None) or int(v)


class RouteManager:
    """Applies `RouteState`s in one namespace (None: the agent's own)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def routes(self) -> set[Route]:
        out = []
        for family in ("-4", "-6"):
            out += await self.runner.json(["ip", family, "-j", "route", "show", "table", "all", "proto", str(MESH_PROTO)])
        return {Route(_norm_dst(r["dst"]), r["dev"], r.get("prefsrc"), _table(r.get("table", "main"))) for r in out}

    async def rules(self) -> set[Rule]:
        out = await self.runner.json(["ip", "-j", "rule", "show"])
        return {Rule(r["iif"], _table(r["table"]), int(r["priority"])) for r in out
                if str(r.get("protocol")) == str(MESH_PROTO) and "iif" in r}

    async def nft_table(self) -> str | None:
        rc, out, _ = await self.runner.run(["nft", "list", "table", "inet", NFT_TABLE], check=False)
        return out if rc == 0 else None

    async def current(self) -> RouteState:
        table = await self.nft_table()
        ifaces = tuple(sorted(set(re.findall(r'iifname "([^"]+)"', table or ""))))
        return RouteState(frozenset(await self.routes()), frozenset(await self.rules()), ifaces)

    async def apply(self, desired: RouteState) -> RouteDiff:
        d = RouteDiff()
        # Sysctls first: forwarding must be on before the relay routes draw traffic.
        for name, value in desired.sysctls:
            _, have, _ = await self.runner.run(["sysctl", "-n", name], check=False)
            if have.strip() != value:
                await self.runner.run(["sysctl", "-q", "-w", f"{name}={value}"])
                d.sysctls.append(name)
        cur_rules = await self.rules()
        d.rules_added = sorted(desired.rules - cur_rules)
        d.rules_removed = sorted(cur_rules - desired.rules)
        d.added, d.removed = diff_routes(await self.routes(), set(desired.routes))
        lines = [f"rule del priority {r.priority} iif {r.iif} lookup {r.table}" for r in d.rules_removed]
        lines += [f"route del {r.dst} dev {r.dev} table {r.table} proto {MESH_PROTO}" for r in d.removed]
        lines += [f"route replace {r.dst} dev {r.dev}" + (f" src {r.src}" if r.src else "")
                  + f" table {r.table} proto {MESH_PROTO}" for r in d.added]
        lines += [f"rule add priority {r.priority} iif {r.iif} lookup {r.table} protocol {MESH_PROTO}"
                  for r in d.rules_added]
        if lines:
            # One ip process for the whole change: 1,000 routes in milliseconds, not seconds.
            await self.runner.run(["ip", "-batch", "-"], stdin="\n".join(lines) + "\n")
        want = render_nft(desired)
        have = await self.nft_table()
        if want is None and have is not None:
            await self.runner.run(["nft", "delete", "table", "inet", NFT_TABLE])
            d.nft = "deleted"
        elif want is not None and _digest(want) != _digest(have):
            # Delete and re-create in one transaction: never a moment with half the rules, never a duplicate.
            script = (f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n" if have is not None else "") + want
            await self.runner.run(["nft", "-f", "-"], stdin=script)
            d.nft = "replaced" if have is not None else "created"
        return d
