"""Mesh addresses.

Every node has one mesh address that every other node reaches it at. An AWS
node inside the address plan keeps its private VPC address (unique mesh-wide
thanks to the plan); every other node gets one from the overlay pool
(default 100.96.0.0/12, clear of the VPC plan, K3s' 10.42/10.43 and Docker's
172.17).

Allocation is a store transaction: the address key `/addresses/<ip>` must be
absent and the cursor unchanged, so two joins never get the same address. The
cursor only moves forward (wrapping at the end of the pool), so an address
freed by a removed node is handed out again only after the whole pool has
been used: a stale DNS answer never points at a new owner soon after.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshcore.errors import AlreadyExists, ConfigError, InvalidArgument, ResourceExhausted
from meshd.store.base import Compare, Delete, Op, Put, Store, absent

PREFIX = "/addresses/"
CURSOR = "/alloc/cursor"
#: addresses after the cursor asked for one by one before the whole taken set is read
PROBES = 8
DEFAULT_POOL = "100.96.0.0/12"


def parse_pool(pool: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(pool, strict=True)
    except ValueError as e:
        raise ConfigError(f"invalid overlay pool {pool!r}: {e}") from e
    if net.num_addresses < 4:
        raise ConfigError(f"invalid overlay pool {pool}: needs at least 4 addresses")
    return net


@dataclass
class Allocation:
    address: str
    compares: list[Compare]
    ops: list[Op]


class AddressPool:
    def __init__(self, store: Store, pool: str = DEFAULT_POOL) -> None:
        self.store = store
        self.network = parse_pool(pool)

    async def plan(self, node_id: str, fixed: str | None = None) -> Allocation:
        """The allocation to commit with the node: `fixed` (an AWS private address) or the next free one."""
        if fixed:
            try:
                ip = ipaddress.ip_address(fixed)
            except ValueError as e:
                raise InvalidArgument(f"invalid private address {fixed!r}: {e}") from e
            key = PREFIX + str(ip)
            holder = await self.store.get(key)
            if holder is not None:
                raise AlreadyExists(f"address {ip} is already held by node {holder.value.decode()}")
            return Allocation(str(ip), [absent(key)], [Put(key, node_id.encode())])
        cur = await self.store.get(CURSOR)
        start = int(cur.value) if cur else 1
        size = self.network.num_addresses
        first, last = 1, size - 2  # skip the network and broadcast addresses
        base = int(self.network.network_address)
        taken: set[str] | None = None
        for step in range(last - first + 1):
            idx = first + (start - first + step) % (last - first + 1)
            ip = str(ipaddress.ip_address(base + idx))
            if taken is None and step < PROBES:  # the cursor's next address is nearly always free: ask for it
                free = await self.store.get(PREFIX + ip) is None
            else:  # a crowded stretch of the pool: read what is taken once
                if taken is None:
                    taken = {kv.key[len(PREFIX):] for kv in (await self.store.range(PREFIX))[0]}
                free = ip not in taken
            if free:
                cursor_cmp = Compare(CURSOR, "mod", "=", cur.mod_revision) if cur else absent(CURSOR)
                return Allocation(ip, [absent(PREFIX + ip), cursor_cmp],
                                  [Put(PREFIX + ip, node_id.encode()), Put(CURSOR, str(idx + 1).encode())])
        # retrying soon cannot help: a negative suggested wait tells agents not to retry
        raise ResourceExhausted(f"overlay pool {self.network} is full: remove nodes or configure a larger --overlay-pool",
                                retry_pushback_ms=-1)

    @staticmethod
    def release(address: str) -> Op:
        return Delete(PREFIX + address)
