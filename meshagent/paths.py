"""Which path each pair of nodes takes, and the WireGuard peers and routes that follow.

Rules, from node facts alone (pure functions, no I/O):

1. **direct**: both nodes are in the peered AWS network and a route exists
   between their VPCs: the same VPC, or one in the main region and the other
   in a regional VPC (regional VPCs peer only with the main region). Packets
   go to the private VPC address; no tunnel.
2. **tunnel**: otherwise, if either side has a public address, WireGuard
   straight to it. The side without a reachable address sends keepalives so
   its NAT mapping stays open and the other side can answer.
3. **relay**: otherwise (a node behind NAT, regional <-> regional, since
   peering is not transitive) WireGuard to the main node, which routes the
   packets back out of its WireGuard interface to the other node.
4. **unreachable**: nothing above works (e.g. no main node to relay through).

Every node's mesh address is the one address others use; `plan()` turns the
paths into the node's `InterfaceConfig` (peers, allowed addresses) and its
`RouteState`. The node's hub peer carries the mesh addresses of everything it
reaches through the main node; the main node's peer for a node carries that
node's mesh address.

Facts from other nodes are untrusted: a node with an invalid key, address or
port is left out of the plan (`Plan.refused` says why) rather than applied.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshcore.defaults import PATH_DOWN_AFTER_S, WIREGUARD_PORT
from meshcore.errors import InvalidArgument
from meshagent.routes import MAIN_TABLE, RELAY_RULE_PRIORITY, RELAY_TABLE, Route, RouteState, Rule
from meshagent.wg.model import DEFAULT_MTU, InterfaceConfig, PeerConfig, check_key

DIRECT, TUNNEL, RELAY, UNREACHABLE = "direct", "tunnel", "relay", "unreachable"


@dataclass(frozen=True)
class NodeFacts:
    """What path selection needs to know about a node (fields of mesh.v1.Node)."""

    name: str
    cloud: str = ""
    region: str = ""
    vpc_id: str = ""
    vpc_cidr: str = ""
    private_address: str = ""
    public_address: str = ""
    wireguard_public_key: str = ""
    wireguard_port: int = WIREGUARD_PORT
    mesh_address: str = ""

    @classmethod
    def from_node(cls, node) -> NodeFacts:
        """From a mesh.v1.Node message."""
        return cls(node.name, node.cloud, node.region, node.vpc_id, node.vpc_cidr, node.private_address,
                   node.public_address, node.wireguard_public_key, int(node.wireguard_port), node.mesh_address)

    @property
    def in_aws_vpc(self) -> bool:
        return self.cloud == "aws" and bool(self.vpc_id) and bool(self.private_address)


@dataclass(frozen=True)
class Path:
    kind: str
    via: str | None = None  # relay: the main node's name
    reason: str = ""


@dataclass(frozen=True)
class PlanSettings:
    """Per-node data-plane settings."""

    ifname: str = "mesh0"
    mtu: int = DEFAULT_MTU
    # Seconds between keepalives from a node the other side cannot reach first.
    # 25 s stays under the shortest common NAT UDP timeout (30 s).
    keepalive_s: int = 25
    listen_port: int = WIREGUARD_PORT


@dataclass
class Plan:
    interface: InterfaceConfig
    routes: RouteState
    paths: dict[str, Path]
    refused: dict[str, str] = field(default_factory=dict)


def peered(a: NodeFacts, b: NodeFacts, main_region: str) -> bool:
    """True when AWS routes packets between the two nodes' private addresses."""
    if not (a.in_aws_vpc and b.in_aws_vpc):
        return False
    if a.vpc_id == b.vpc_id:
        return True
    return (a.region == main_region) != (b.region == main_region)


def endpoint_address(src: NodeFacts, dst: NodeFacts, main_region: str) -> str | None:
    """The address `src` sends WireGuard packets to for `dst`, or None if `src` cannot reach it first."""
    if peered(src, dst, main_region):
        return dst.private_address
    return dst.public_address or None


def select_path(a: NodeFacts, b: NodeFacts, main: NodeFacts | None, main_region: str) -> Path:
    if a.name == b.name:
        raise InvalidArgument(f"path from node '{a.name}' to itself: a path joins two different nodes")
    if peered(a, b, main_region):
        why = "same VPC" if a.vpc_id == b.vpc_id else "VPC peering with the main region"
        return Path(DIRECT, reason=why)
    if a.public_address or b.public_address:
        return Path(TUNNEL, reason="public endpoint")
    if main is None or main.name in (a.name, b.name):
        return Path(UNREACHABLE, reason="no public address on either side and no main node to relay through")
    if not (_leg(a, main, main_region) and _leg(b, main, main_region)):
        return Path(UNREACHABLE, reason="the main node cannot be reached from both sides")
    return Path(RELAY, via=main.name, reason="no direct route (NAT or non-transitive peering)")


def _leg(x: NodeFacts, main: NodeFacts, main_region: str) -> bool:
    return endpoint_address(x, main, main_region) is not None or endpoint_address(main, x, main_region) is not None


def check_facts(n: NodeFacts) -> None:
    """Raise InvalidArgument if a node's facts cannot go into a WireGuard config."""
    check_key(n.wireguard_public_key, f"public key of node '{n.name}'")
    if not 1 <= int(n.wireguard_port) <= 65535:
        raise InvalidArgument(f"node '{n.name}' WireGuard port {n.wireguard_port}: must be 1-65535")
    for what in ("mesh_address", "private_address", "public_address"):
        value = getattr(n, what)
        if value or what == "mesh_address":
            try:
                addr = ipaddress.ip_address(value)
            except ValueError:
                raise InvalidArgument(f"node '{n.name}' {what} {value!r}: must be an IP address") from None
            if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
                raise InvalidArgument(f"node '{n.name}' {what} {value}: must be a unicast, non-loopback address")


def _host(addr: str) -> str:
    return str(ipaddress.ip_network(addr))  # /32 or /128


def _endpoint(addr: str | None, port: int) -> str | None:
    if addr is None:
        return None
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def relayed_nodes(nodes: Iterable[NodeFacts], main: NodeFacts, main_region: str) -> set[str]:
    """Names of the nodes that take the relay path with at least one other node. O(n).

    Only nodes without a public address can be relayed; among those (the
    candidates), X has a relay partner unless every other candidate is
    peered with it. Peered candidates are counted per VPC and per side of
    the main region instead of compared pair by pair.
    """
    cands = [n for n in nodes if n.name != main.name and not n.public_address and _leg(n, main, main_region)]
    per_vpc = Counter(n.vpc_id for n in cands if n.in_aws_vpc)
    aws_main = sum(1 for n in cands if n.in_aws_vpc and n.region == main_region)
    aws_other = sum(1 for n in cands if n.in_aws_vpc and n.region != main_region)
    out = set()
    for n in cands:
        if n.in_aws_vpc:
            # Peered with n: its own VPC (n included) and every AWS VPC across the main-region line.
            across = aws_other if n.region == main_region else aws_main
            partners = len(cands) - per_vpc[n.vpc_id] - across
        else:
            partners = len(cands) - 1
        if partners > 0:
            out.add(n.name)
    return out


def plan(me: NodeFacts, nodes: Iterable[NodeFacts], main: NodeFacts | None, private_key: str,
         settings: PlanSettings = PlanSettings(), main_region: str | None = None) -> Plan:
    """The WireGuard interface and routes node `me` needs to reach every node in `nodes`."""
    region = main_region if main_region is not None else (main.region if main else "")
    refused: dict[str, str] = {}
    valid: list[NodeFacts] = []
    seen_addr: dict[str, str] = {me.mesh_address: me.name}
    nodes = list(nodes)
    # A key held by two nodes would send one node's traffic to the other: neither gets a peer
    # (meshd refuses such a claim; this is the second line). The others are planned as usual.
    holders = Counter(n.wireguard_public_key for n in nodes if n.wireguard_public_key)
    for n in nodes:
        if n.name == me.name:
            continue
        if holders[n.wireguard_public_key] > 1 or (n.wireguard_public_key and
                                                   n.wireguard_public_key == me.wireguard_public_key):
            refused[n.name] = "its WireGuard public key is claimed by another node too"
            continue
        try:
            check_facts(n)
        except InvalidArgument as e:
            refused[n.name] = str(e)
            continue
        if n.mesh_address in seen_addr:
            refused[n.name] = (f"mesh address {n.mesh_address} already belongs to node '{seen_addr[n.mesh_address]}': "
                               "a mesh address belongs to one node")
            continue
        seen_addr[n.mesh_address] = n.name
        valid.append(n)
    if main is not None and main.name != me.name and main.name in refused:
        main = None  # a main node we refuse cannot relay for us
    src = me.mesh_address
    dev = settings.ifname
    peers: dict[str, dict] = {}
    routes: set[Route] = set()
    paths: dict[str, Path] = {}

    def peer(other: NodeFacts) -> dict:
        if other.name not in peers:
            to = endpoint_address(me, other, region)
            back = endpoint_address(other, me, region)
            peers[other.name] = {"key": other.wireguard_public_key, "endpoint": _endpoint(to, other.wireguard_port),
                                 "ips": set(), "keepalive": settings.keepalive_s if back is None else 0}
        return peers[other.name]

    for other in valid:
        p = select_path(me, other, main, region)
        paths[other.name] = p
        if p.kind == TUNNEL:
            peer(other)["ips"].add(_host(other.mesh_address))
            routes.add(Route(_host(other.mesh_address), dev, src, MAIN_TABLE))
        elif p.kind == RELAY:
            peer(main)["ips"].add(_host(other.mesh_address))
            routes.add(Route(_host(other.mesh_address), dev, src, MAIN_TABLE))

    rules: set[Rule] = set()
    relay_ifaces: tuple[str, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    if main is not None and main.name == me.name:
        relayed = relayed_nodes(valid, me, region)
        for other in valid:
            if other.name in relayed:
                peer(other)["ips"].add(_host(other.mesh_address))
                routes.add(Route(_host(other.mesh_address), dev, src, RELAY_TABLE))
        if relayed:
            rules.add(Rule(dev, RELAY_TABLE, RELAY_RULE_PRIORITY))
            relay_ifaces = (dev,)
            # Loose reverse-path filtering on the tunnel: relayed sources are reached directly,
            # not through it, and strict filtering would drop them (the effective value is the max).
            sysctls = (("net.ipv4.ip_forward", "1"), (f"net.ipv4.conf.{dev}.rp_filter", "2"))

    peer_cfgs = tuple(sorted((PeerConfig(v["key"], v["endpoint"], tuple(sorted(v["ips"])), v["keepalive"])
                             for v in peers.values() if v["ips"]), key=lambda p: p.public_key))
    iface = InterfaceConfig(dev, private_key, _host(src), settings.listen_port,
                            settings.mtu, peer_cfgs)
    return Plan(iface, RouteState(frozenset(routes), frozenset(rules), relay_ifaces, sysctls), paths, refused)


def path_health(routes_to: dict[str, tuple[Path, str]], handshakes: dict[str, float], since: dict[str, float],
                now: float, down_after_s: float = PATH_DOWN_AFTER_S) -> dict[str, int]:
    """Path kind in use → how many peers reached that way are down (the node's PathReport).

    `routes_to`: node name → (its path, the WireGuard key carrying it); `handshakes`: key → latest
    handshake (Unix seconds, 0: never); `since`: key → when it was first configured. A WireGuard
    path is down when its key has had no handshake for `down_after_s` after being configured that
    long; an unreachable one always is; a direct one rides the VPC's route and is never counted."""
    report: dict[str, int] = {}
    for path, key in routes_to.values():
        down = 0
        if path.kind == UNREACHABLE:
            down = 1
        elif path.kind in (TUNNEL, RELAY) and now - since.get(key, now) >= down_after_s:
            down = int(now - handshakes.get(key, 0.0) >= down_after_s)
        report[path.kind] = report.get(path.kind, 0) + down
    return report
