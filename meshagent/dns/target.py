"""What a service name resolves to: one `Target` per (address, port) a lookup returns.

The agent's catalog copy hands the DNS responder a list of targets for a
service name. Targets are checked once, when they are made, so answering a
query never has to validate an address again: `version` (4 or 6) picks the
A or AAAA record, and `host_label` is the DNS label SRV answers use for the
target's node.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from meshcore.errors import InvalidArgument
from meshcore.names import check_port, is_name

PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class Target:
    """One place a service can be reached: the node's mesh address and the service port."""

    address: str
    port: int
    protocol: str = "tcp"
    node: str = ""
    version: int = field(init=False, compare=False, repr=False)
    host_label: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            ip = ipaddress.ip_address(self.address)
        except ValueError:
            raise InvalidArgument(
                f"invalid target address {self.address!r}: must be an IPv4 or IPv6 address") from None
        check_port(self.port)
        if self.protocol not in PROTOCOLS:
            raise InvalidArgument(f"invalid protocol {self.protocol!r}: must be one of tcp, udp")
        # Frozen dataclass: derived fields are set once here.
        object.__setattr__(self, "address", str(ip))
        object.__setattr__(self, "version", ip.version)
        object.__setattr__(self, "host_label", node_label(self.node, str(ip)))


def node_label(node: str, address: str) -> str:
    """The DNS label naming a target's host in SRV answers.

    Node names are RFC 1123 labels in practice; anything else (or no name) gets
    a stable label derived from the name and address, so SRV targets always
    resolve.
    """
    if node and is_name(node):
        return node
    digest = hashlib.sha256(f"{node}\0{address}".encode()).hexdigest()[:10]
    return f"host-{digest}"


Lookup = Callable[[str], "list[Target]"]
"""`lookup(service_name) -> targets`; an empty list means the name is unknown."""
