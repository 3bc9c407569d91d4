"""Elsewhere: the address of the interface that holds the default route.

Read from the kernel's tables (/proc/net/route and the interface's address),
so nothing is sent anywhere.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

from meshagent.facts.base import FactsError

SIOCGIFADDR = 0x8915


def default_route_interface(route_table: str) -> str:
    """The interface of the IPv4 default route with the lowest metric in /proc/net/route's text."""
    best: tuple[int, str] | None = None
    for line in route_table.splitlines()[1:]:
        f = line.split()
        if len(f) < 8 or f[1] != "00000000" or f[7] != "00000000":
            continue
        try:
            metric = int(f[6])
        except ValueError:
            continue
        if best is None or metric < best[0]:
            best = (metric, f[0])
    if best is None:
        raise FactsError("no IPv4 default route")
    return best[1]


def interface_address(ifname: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))
        except OSError as e:
            raise FactsError(f"interface {ifname} has no IPv4 address: {e.strerror}") from None
    return str(ipaddress.IPv4Address(raw[20:24]))


def default_route_address(route_path: str = "/proc/net/route") -> str:
    try:
        with open(route_path) as f:
            table = f.read(256 * 1024)
    except OSError as e:
        raise FactsError(f"cannot read {route_path}: {e.strerror}") from None
    return interface_address(default_route_interface(table))
