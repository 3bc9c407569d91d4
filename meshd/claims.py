"""Claims: what meshd accepts from a node about itself, checked at join and at every renewal.

A node tells meshd its addresses, VPC, WireGuard key and labels. Each is a
claim every peer will act on (an address is routed into a tunnel to that
node; a key decides who may send as it), so meshd believes none it can check:

- an AWS node's private address lies inside the VPC CIDR it reports, and that
  CIDR lies inside the mesh's VPC ranges (`vpc_ranges`: the address plan);
- a private address is never loopback, link-local (169.254.169.254 is the
  metadata service), multicast, unspecified, inside the overlay pool, or a
  public address; and no other node holds it;
- a public endpoint is a public unicast address (a lab may allow its own
  ranges with `endpoint_ranges`);
- a WireGuard public key belongs to one node only;
- labels set on the join token are binding: a node may add labels, never
  change or drop those.

`check` is pure: the node, the other nodes (or who holds the unique facts,
`Holders`, which meshd keeps with its node snapshot), the token's labels and
the rules in; a `Refused` naming the fact out. The servicers call it and map
the error.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mesh.v1 import types_pb2
from meshcore.errors import InvalidArgument

Net = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The whole AWS address plan lives in 10.0.0.0/8 (one /16 per region).
DEFAULT_VPC_RANGES = ("10.0.0.0/8",)


class Refused(InvalidArgument):
    """A claim meshd will not accept; the message names the fact and the rule."""


@dataclass(frozen=True)
class ClaimRules:
    vpc_ranges: tuple[str, ...] = DEFAULT_VPC_RANGES
    overlay_pool: str = "100.96.0.0/12"
    #: extra ranges accepted as public endpoints (a lab's own "internet")
    endpoint_ranges: tuple[str, ...] = ()
    _nets: dict[str, tuple[Net, ...]] = field(default_factory=dict, compare=False, repr=False)

    def nets(self, what: str) -> tuple[Net, ...]:
        if what not in self._nets:
            raw = {"vpc": self.vpc_ranges, "endpoint": self.endpoint_ranges, "overlay": (self.overlay_pool,)}[what]
            try:
                self._nets[what] = tuple(ipaddress.ip_network(c, strict=False) for c in raw)
            except ValueError as e:
                raise InvalidArgument(f"invalid {what} range: {e}") from None
        return self._nets[what]


def _ip(value: str, fact: str):
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise Refused(f"refused {fact} {value!r}: not an IP address") from None


def _inside(addr, nets: Iterable[Net]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def check_private(node: types_pb2.Node, rules: ClaimRules) -> None:
    if not node.private_address:
        return
    fact = f"private address {node.private_address}"
    addr = _ip(node.private_address, "private address")
    for bad, why in ((addr.is_loopback, "loopback"), (addr.is_link_local, "link-local (instance metadata lives there)"),
                     (addr.is_multicast, "multicast"), (addr.is_unspecified, "unspecified"),
                     (_inside(addr, rules.nets("overlay")), f"inside the overlay pool {rules.overlay_pool}"),
                     (addr.is_global, "a public address")):
        if bad:
            raise Refused(f"refused {fact}: {why}; a private address must be the node's own address "
                          "inside its network")
    if node.cloud == "aws":
        if not node.vpc_cidr:
            raise Refused(f"refused {fact}: an AWS node must report its VPC CIDR")
        try:
            vpc = ipaddress.ip_network(node.vpc_cidr, strict=True)
        except ValueError:
            raise Refused(f"refused VPC CIDR {node.vpc_cidr!r}: not a CIDR") from None
        if addr not in vpc:
            raise Refused(f"refused {fact}: not inside the VPC CIDR {node.vpc_cidr} the node reports")
        if not any(vpc.version == n.version and vpc.subnet_of(n) for n in rules.nets("vpc")):
            raise Refused(f"refused VPC CIDR {node.vpc_cidr}: outside the mesh's VPC ranges "
                          f"({', '.join(rules.vpc_ranges)})")


def check_public(node: types_pb2.Node, rules: ClaimRules) -> None:
    if not node.public_address:
        return
    addr = _ip(node.public_address, "public address")
    if addr.is_multicast or addr.is_unspecified or addr.is_loopback or addr.is_link_local:
        ok = False
    else:
        ok = addr.is_global or _inside(addr, rules.nets("endpoint"))
    if not ok:
        raise Refused(f"refused public address {node.public_address}: an endpoint must be a public unicast address")


def _held(node: types_pb2.Node) -> list[tuple[str, str]]:
    """The facts a node holds alone: its WireGuard key, its mesh address, an AWS node's private address."""
    out = []
    if node.wireguard_public_key:
        out.append(("wg", node.wireguard_public_key))
    if node.mesh_address:
        out.append(("routed", node.mesh_address))
    if node.cloud == "aws" and node.private_address:
        out.append(("aws", node.private_address))
    return out


class Holders:
    """Which nodes hold each fact that must be unique, kept change by change (`change`, from the
    node snapshots), so a join into a 5,000-node mesh looks its claims up instead of scanning
    every node. `Holders.of(nodes)` builds one from a list."""

    def __init__(self) -> None:
        self._by: dict[tuple[str, str], dict[str, types_pb2.Node]] = {}

    @classmethod
    def of(cls, nodes: Iterable[types_pb2.Node]) -> Holders:
        h = cls()
        h.reset(nodes)
        return h

    def reset(self, nodes: Iterable[types_pb2.Node]) -> None:
        self._by.clear()
        for n in nodes:
            self.change(None, n)

    def change(self, old: types_pb2.Node | None, new: types_pb2.Node | None) -> None:
        if old is not None:
            for fact in _held(old):
                holders = self._by.get(fact)
                if holders is not None:
                    holders.pop(old.id, None)
                    if not holders:
                        del self._by[fact]
        if new is not None:
            for fact in _held(new):
                self._by.setdefault(fact, {})[new.id] = new

    def other(self, kind: str, value: str, node_id: str) -> types_pb2.Node | None:
        """A node other than `node_id` holding the fact, if any."""
        for holder_id, holder in self._by.get((kind, value), {}).items():
            if holder_id != node_id:
                return holder
        return None


def check_unique(node: types_pb2.Node, holders: Holders | Iterable[types_pb2.Node]) -> None:
    if not isinstance(holders, Holders):
        holders = Holders.of(holders)
    if node.wireguard_public_key:
        o = holders.other("wg", node.wireguard_public_key, node.id)
        if o is not None:
            raise Refused(f"refused WireGuard public key: it belongs to node {o.name}")
    # Peers route a node's mesh address (an AWS node's is its private one), so no node may
    # claim another's; private addresses elsewhere (two home LANs) may repeat.
    if node.private_address:
        o = holders.other("routed", node.private_address, node.id)
        if o is None and node.cloud == "aws":
            o = holders.other("aws", node.private_address, node.id)
        if o is not None:
            raise Refused(f"refused private address {node.private_address}: it belongs to node {o.name}")


def check_token_labels(labels: Mapping[str, str], token_labels: Mapping[str, str]) -> None:
    for k, v in token_labels.items():
        if labels.get(k) != v:
            have = "drops it" if k not in labels else f"sets {labels[k]!r}"
            raise Refused(f"refused label {k}: the join token sets {k}={v!r} and the node {have}; "
                          "labels from the token are binding")


def check(node: types_pb2.Node, holders: Holders | Iterable[types_pb2.Node], rules: ClaimRules,
          token_labels: Mapping[str, str] | None = None) -> None:
    """Raise Refused naming the first claim that fails."""
    check_private(node, rules)
    check_public(node, rules)
    check_unique(node, holders)
    if token_labels:
        check_token_labels(node.labels, token_labels)
