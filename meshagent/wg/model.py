"""Desired state of one WireGuard interface, its validation, and the diff between two states.

Model: an `InterfaceConfig` is the whole truth the agent wants for one
interface (key, address, port, MTU, peers). A backend reads what is there
(`current()`), `diff()` compares the two, and the backend applies only the
`Diff`. Applying the same desired state twice therefore changes nothing.

A peer's `endpoint` of None means "not ours to set": the peer reaches us from
behind NAT and WireGuard learns (and roams) its endpoint from authenticated
packets. The diff never overwrites a learned endpoint with nothing.

Everything a remote node supplies (public keys, endpoints, allowed addresses)
is validated here, before any backend sees it: a bad value raises
`InvalidArgument` naming the rule and is never applied.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
from dataclasses import dataclass, field

from meshcore.defaults import WIREGUARD_PORT
from meshcore.errors import InvalidArgument

KEY_RULE = "a WireGuard key must be 32 bytes in standard base64 (44 characters ending in '=')"
ENDPOINT_RULE = "an endpoint must be 'IPv4:port' or '[IPv6]:port' with a unicast address and a port 1-65535"
IFNAME_RULE = "an interface name must be 1-15 characters of letters, digits, '-', '_' or '.'"
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

# Interface MTU on a 1500-byte path: 1500 - 80 (IPv6 40 + UDP 8 + WireGuard 32),
# the same reserve wg-quick takes so one value suits IPv4 and IPv6 underlays.
DEFAULT_MTU = 1420
# The IPv6 minimum; always safe, at some throughput cost.
SAFE_MTU = 1280
MAX_KEEPALIVE_S = 65535


def check_key(key: str, what: str = "public key") -> str:
    """Return `key` if it is a valid base64 WireGuard key, else raise InvalidArgument."""
    if not isinstance(key, str):
        raise InvalidArgument(f"invalid {what} {key!r}: {KEY_RULE}")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"invalid {what} '{key[:48]}': not base64; {KEY_RULE}") from None
    if len(raw) != 32:
        raise InvalidArgument(f"invalid {what} '{key[:48]}': decodes to {len(raw)} bytes; {KEY_RULE}")
    if raw == bytes(32):
        # The all-zero key is a low-order point: a handshake with it is meaningless.
        raise InvalidArgument(f"invalid {what}: the all-zero key is not a usable Curve25519 point")
    return key


def check_endpoint(endpoint: str) -> str:
    """Return `endpoint` normalised ('1.2.3.4:51820' / '[::1]:51820'), else raise InvalidArgument.

    Only literal addresses: a name would make the data plane depend on DNS.
    """
    if not isinstance(endpoint, str) or not endpoint:
        raise InvalidArgument(f"invalid endpoint {endpoint!r}: {ENDPOINT_RULE}")
    host, sep, port_s = endpoint.rpartition(":")
    if not sep or not host:
        raise InvalidArgument(f"invalid endpoint '{endpoint}': missing ':port'; {ENDPOINT_RULE}")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        addr = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise InvalidArgument(f"invalid endpoint '{endpoint}': '{host}' is not an IP address; {ENDPOINT_RULE}") from None
    if addr.version == 6 and not bracketed:
        raise InvalidArgument(f"invalid endpoint '{endpoint}': IPv6 addresses need brackets; {ENDPOINT_RULE}")
    if addr.is_unspecified or addr.is_multicast or (addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255")):
        raise InvalidArgument(f"invalid endpoint '{endpoint}': {addr} is not a unicast address; {ENDPOINT_RULE}")
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise InvalidArgument(f"invalid endpoint '{endpoint}': port '{port_s}' out of range; {ENDPOINT_RULE}")
    return f"[{addr}]:{int(port_s)}" if addr.version == 6 else f"{addr}:{int(port_s)}"


def check_cidr(cidr: str, what: str = "allowed address") -> str:
    """Return `cidr` normalised ('10.0.0.1/32'); host bits must be zero."""
    try:
        return str(ipaddress.ip_network(cidr, strict=True))
    except (ValueError, TypeError) as e:
        raise InvalidArgument(f"invalid {what} {cidr!r}: must be a network in CIDR form with no host bits set ({e})") from None


def check_interface_address(cidr: str) -> str:
    """An interface address: 'address/prefix' (host bits allowed, e.g. 10.4.0.10/32)."""
    try:
        return str(ipaddress.ip_interface(cidr))
    except (ValueError, TypeError):
        raise InvalidArgument(f"invalid interface address {cidr!r}: must be 'address/prefix', e.g. 100.64.0.5/32") from None


def check_ifname(name: str) -> str:
    if not isinstance(name, str) or not _IFNAME.match(name) or name in (".", ".."):
        raise InvalidArgument(f"invalid interface name {name!r}: {IFNAME_RULE}")
    return name


@dataclass(frozen=True)
class PeerConfig:
    """One peer. `endpoint` None: learned from the peer's packets (it is behind NAT)."""

    public_key: str
    endpoint: str | None = None
    allowed_ips: tuple[str, ...] = ()
    # Seconds between keepalives; 0 is off. Set on the side behind NAT so the
    # mapping stays open and the other side can send first.
    persistent_keepalive: int = 0

    def validated(self) -> PeerConfig:
        try:
            return _validated_peer(self)
        except TypeError:  # unhashable fields (a list of addresses): check without the cache
            return self._validate()

    def _validate(self) -> PeerConfig:
        ka = self.persistent_keepalive
        if isinstance(ka, bool) or not isinstance(ka, int) or not 0 <= ka <= MAX_KEEPALIVE_S:
            raise InvalidArgument(f"invalid persistent keepalive {ka!r}: must be 0 (off) to {MAX_KEEPALIVE_S} seconds")
        ips = tuple(sorted({check_cidr(c) for c in self.allowed_ips}, key=_net_key))
        return PeerConfig(
            public_key=check_key(self.public_key, "peer public key"),
            endpoint=None if self.endpoint is None else check_endpoint(self.endpoint),
            allowed_ips=ips,
            persistent_keepalive=ka,
        )


@dataclass(frozen=True)
class InterfaceConfig:
    """The whole desired state of one interface. `address` is CIDR, e.g. '10.4.0.10/32'."""

    name: str
    private_key: str
    address: str
    listen_port: int = WIREGUARD_PORT
    mtu: int = DEFAULT_MTU
    peers: tuple[PeerConfig, ...] = ()

    def validated(self) -> InterfaceConfig:
        """A normalised copy, or InvalidArgument naming the first broken rule."""
        if isinstance(self.listen_port, bool) or not isinstance(self.listen_port, int) or not 0 <= self.listen_port <= 65535:
            raise InvalidArgument(f"invalid listen port {self.listen_port!r}: must be 0 (any) to 65535")
        if isinstance(self.mtu, bool) or not isinstance(self.mtu, int) or not 1280 <= self.mtu <= 65535:
            # Below 1280 IPv6 cannot run over the tunnel at all.
            raise InvalidArgument(f"invalid MTU {self.mtu!r}: must be 1280 to 65535")
        peers = tuple(p.validated() for p in self.peers)
        seen: dict[str, str] = {}
        for p in peers:
            if p.public_key in seen:
                raise InvalidArgument(f"peer {p.public_key} listed twice: each public key may appear once")
            seen[p.public_key] = p.public_key
        owners: dict[str, str] = {}
        for p in peers:
            for ip in p.allowed_ips:
                if ip in owners:
                    raise InvalidArgument(
                        f"allowed address {ip} given to two peers ({owners[ip][:8]}…, {p.public_key[:8]}…): "
                        "an address routes to one peer only")
                owners[ip] = p.public_key
        return InterfaceConfig(
            name=check_ifname(self.name),
            private_key=check_key(self.private_key, "private key"),
            address=check_interface_address(self.address),
            listen_port=self.listen_port,
            mtu=self.mtu,
            peers=tuple(sorted(peers, key=lambda p: p.public_key)),
        )

    def peer_map(self) -> dict[str, PeerConfig]:
        return {p.public_key: p for p in self.peers}


@dataclass
class Diff:
    """What an apply changed (or would change). Empty when current equals desired."""

    created: bool = False                     # the interface did not exist
    interface: list[str] = field(default_factory=list)  # changed interface fields
    added: list[str] = field(default_factory=list)      # peer public keys
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.created or self.interface or self.added or self.removed or self.changed)

    def __str__(self) -> str:
        if self.empty:
            return "no change"
        parts = []
        if self.created:
            parts.append("created interface")
        if self.interface:
            parts.append("set " + ",".join(self.interface))
        for word, keys in (("added", self.added), ("removed", self.removed), ("changed", self.changed)):
            if keys:
                parts.append(f"{word} {len(keys)} peer(s)")
        return "; ".join(parts)


def peer_differs(current: PeerConfig, desired: PeerConfig) -> list[str]:
    """The fields of `desired` that `current` does not match (endpoint None: learned, never compared)."""
    out = []
    if desired.endpoint is not None and current.endpoint != desired.endpoint:
        out.append("endpoint")
    if current.persistent_keepalive != desired.persistent_keepalive:
        out.append("persistent_keepalive")
    if set(current.allowed_ips) != set(desired.allowed_ips):
        out.append("allowed_ips")
    return out


def diff(current: InterfaceConfig | None, desired: InterfaceConfig) -> Diff:
    """Compare a validated desired state with what the backend reports. Pure."""
    d = Diff()
    if current is None:
        d.created = True
        d.interface = ["private_key", "listen_port", "address", "mtu"]
        d.added = [p.public_key for p in desired.peers]
        return d
    for name in ("private_key", "address", "mtu"):
        if getattr(current, name) != getattr(desired, name):
            d.interface.append(name)
    # Port 0 asks for any port: whatever was picked satisfies it.
    if desired.listen_port and current.listen_port != desired.listen_port:
        d.interface.append("listen_port")
    have, want = current.peer_map(), desired.peer_map()
    d.added = sorted(k for k in want if k not in have)
    d.removed = sorted(k for k in have if k not in want)
    d.changed = sorted(k for k in want if k in have and peer_differs(have[k], want[k]))
    return d


# An agent re-applies mostly the same peers: remember the ones already checked.
@functools.lru_cache(maxsize=16384)
def _validated_peer(p: PeerConfig) -> PeerConfig:
    return p._validate()


def _net_key(cidr: str) -> tuple[int, int, int]:
    n = ipaddress.ip_network(cidr)
    return (n.version, int(n.network_address), n.prefixlen)
