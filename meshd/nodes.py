"""Nodes: joining, facts, drain and removal.

Stored: `/nodes/<id>` (the Node message without liveness), `/nodenames/<name>`
(the id holding the name), `/nodebound/<id>` (the labels the join token set,
which bind the node for good). A join consumes a token use, claims the name and
an address in one transaction. What a node says about itself is checked
against `meshd.claims` at join and whenever a renewal changes it. Whether a node is alive is not stored here:
renewals go to `meshd.leases.Liveness`, which also supplies the `last_seen`
shown with a node.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import secrets
from collections.abc import AsyncIterator, Callable

from mesh.v1 import types_pb2
from meshcore import limits, pki
from meshcore.clock import SYSTEM, Clock
from meshcore.defaults import PATH_KINDS
from meshcore.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from meshcore.names import check_labels, check_name, check_port
from meshd.addresses import AddressPool
from meshd.admission import Admission
from meshd import claims
from meshd.catalog import watch_prefix
from meshd.fanout import Decoded, Snapshots
from meshd.joinqueue import MAX_PENDING_JOINS, JoinQueue
from meshd.claims import ClaimRules
from meshd.leases import HEARTBEATS, Liveness
from meshd.store.base import Delete, KeyValue, Put, Store, absent, unchanged

PREFIX = "/nodes/"
NAMES = "/nodenames/"
BOUND = "/nodebound/"
SERVICES = "/services/"


def check_wireguard_key(key: str) -> str:
    if not key:
        return key
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise InvalidArgument(f"invalid WireGuard public key {key[:12]!r}…: must be 32 bytes in base64 (as `wg pubkey` prints)")
    return key


def check_address(addr: str, what: str) -> str:
    if not addr:
        return addr
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {addr!r}: must be an IPv4 or IPv6 address") from None
    if ip.is_multicast or ip.is_unspecified:
        raise InvalidArgument(f"invalid {what} {addr}: must be a unicast address")
    return str(ip)


def check_fact_sizes(node: types_pb2.Node) -> None:
    """Free-text facts are bounded (meshcore.limits): cloud and region travel in gossip facts."""
    for f in ("cloud", "region", "vpc_id", "vpc_cidr", "private_address", "public_address",
              "wireguard_public_key"):
        if len(getattr(node, f).encode()) > limits.MAX_FACT_BYTES:
            raise InvalidArgument(f"node {f} is {len(getattr(node, f).encode())} bytes: at most {limits.MAX_FACT_BYTES}")
    if len(node.hostname.encode()) > limits.MAX_HOSTNAME_BYTES:
        raise InvalidArgument(f"node hostname is {len(node.hostname.encode())} bytes: at most {limits.MAX_HOSTNAME_BYTES}")
    if node.HasField("path_report"):
        check_path_report(node.path_report)


def check_path_report(report: types_pb2.PathReport) -> None:
    """A path report names each known path kind at most once."""
    kinds = [k.kind for k in report.kinds]
    unknown = sorted(set(kinds) - set(PATH_KINDS))
    if unknown or len(kinds) != len(set(kinds)):
        what = f"unknown path kind {unknown[0][:32]!r}" if unknown else "a path kind named twice"
        raise InvalidArgument(f"path report: {what}: each of {', '.join(PATH_KINDS)} at most once")


def check_facts(node: types_pb2.Node) -> None:
    """Refuse facts no honest node would send; they are never stored or applied."""
    check_name(node.name, "node name")
    check_fact_sizes(node)
    check_wireguard_key(node.wireguard_public_key)
    check_address(node.private_address, "private address")
    check_address(node.public_address, "public address")
    if node.wireguard_port:
        check_port(node.wireguard_port)
    if node.vpc_cidr:
        try:
            ipaddress.ip_network(node.vpc_cidr)
        except ValueError:
            raise InvalidArgument(f"invalid VPC CIDR {node.vpc_cidr!r}") from None
    check_labels(node.labels, "node label")


def decode(kv: KeyValue) -> types_pb2.Node:
    node = types_pb2.Node.FromString(kv.value)
    node.revision = kv.mod_revision
    return node


class Nodes:
    def __init__(self, store: Store, admission: Admission, addresses: AddressPool, ca: pki.CertificateAuthority,
                 liveness: Liveness, clock: Clock = SYSTEM, rules: ClaimRules | None = None,
                 cert_ttl_s: float = 90 * 24 * 3600.0, max_pending_joins: int = MAX_PENDING_JOINS) -> None:
        self.store = store
        self.cert_ttl_s = cert_ttl_s
        self.admission = admission
        self.addresses = addresses
        self.ca = ca
        self.liveness = liveness
        self.clock = clock
        self.rules = rules or ClaimRules(overlay_pool=str(addresses.network))
        # Joins on one replica take turns, and only so many wait (meshd.joinqueue).
        self.join_queue = JoinQueue(max_pending_joins, clock)
        # the current node list, read once per store revision (the lease loop, joins, new watch streams)
        # ...and who holds each fact that must be unique, kept with it (claims at join and renewal)
        self.holders = claims.Holders()
        self.snapshots = Snapshots(store, PREFIX, decode, index=self.holders)
        self._decode_shared = Decoded(decode)  # for watchers: each change decoded once

    # -- reads ----------------------------------------------------------------
    def _live(self, node: types_pb2.Node) -> types_pb2.Node:
        seen = self.liveness.seen_at(node.id)
        if seen is not None:
            node.last_seen = int(seen)
        return node

    async def exists(self, node_id: str) -> bool:
        return await self.store.get(PREFIX + node_id) is not None

    async def list(self) -> tuple[list[types_pb2.Node], int]:
        kvs, rev = await self.store.range(PREFIX)
        return [self._live(decode(kv)) for kv in kvs], rev

    async def _find(self, id_or_name: str) -> KeyValue:
        kv = await self.store.get(PREFIX + id_or_name)
        if kv is None:
            ref = await self.store.get(NAMES + id_or_name)
            if ref is not None:
                kv = await self.store.get(PREFIX + ref.value.decode())
        if kv is None:
            raise NotFound(f"node {id_or_name!r} not found")
        return kv

    async def get(self, id_or_name: str) -> types_pb2.Node:
        return self._live(decode(await self._find(id_or_name)))

    async def current(self) -> list[types_pb2.Node]:
        """Every node as stored (no `last_seen`), read and decoded once per store revision and
        shared with the watch streams' snapshots: callers must not change them."""
        items, _ = await self.snapshots.get()
        return [n for n, _ in items]

    async def claimed(self) -> claims.Holders:
        """Who holds each unique fact as of the store's current revision."""
        await self.snapshots.get()
        return self.holders

    def watch(self, from_revision: int, snapshot=None, grouped: bool = False,
              chunk: int = 0) -> AsyncIterator[tuple[str, types_pb2.Node | None, int]]:
        """Changes to the nodes (meshd.catalog.watch_prefix); `grouped` streams share each decoded
        change (read only), so a change is decoded once, not once per watcher."""
        return watch_prefix(self.store, PREFIX, from_revision, self._decode_shared if grouped else decode,
                            snapshot, grouped, chunk)

    # -- join -----------------------------------------------------------------
    async def join(self, token: str, facts: types_pb2.Node, csr_pem: str) -> tuple[types_pb2.Node, bytes]:
        """Admit a node: one transaction consumes a token use, claims the name and an address.
        Refused at once (ResourceExhausted, with a suggested wait) when too many joins wait."""
        check_facts(facts)
        async with self.join_queue.turn():
            return await self._join(token, facts, csr_pem)

    async def _join(self, token: str, facts: types_pb2.Node, csr_pem: str) -> tuple[types_pb2.Node, bytes]:
        for _ in range(8):  # bounded retries when a join on another replica wins a compare
            tok, tok_cmp, tok_ops = await self.admission.check(token)
            holder = await self.store.get(NAMES + facts.name)
            if holder is not None:
                raise AlreadyExists(f"node name {facts.name!r} is already held by node {holder.value.decode()}; "
                                    f"remove it with `meshctl node remove {facts.name}` or pick another name")
            # Labels from the token bind the node: it may add labels, never change these.
            claims.check_token_labels({**tok.labels, **facts.labels}, tok.labels)
            check_labels({**facts.labels, **tok.labels}, "node label")
            claims.check(facts, await self.claimed(), self.rules)
            node_id = "n" + secrets.token_hex(8)
            fixed = facts.private_address if facts.cloud == "aws" and facts.private_address else None
            alloc = await self.addresses.plan(node_id, fixed)
            node = types_pb2.Node()
            node.CopyFrom(facts)
            node.id = node_id
            node.mesh_address = alloc.address
            node.state = types_pb2.NODE_STATE_READY
            node.joined_at = int(self.clock.wall())
            node.last_seen = 0
            node.revision = 0
            node.labels.update(tok.labels)
            # Sign first: a CSR refused here leaves nothing behind.
            cert = self.ca.sign_csr(csr_pem, node_id, pki.KIND_NODE, seconds=self.cert_ttl_s)
            res = await self.store.txn(
                [*tok_cmp, absent(NAMES + node.name), *alloc.compares],
                [*tok_ops, Put(PREFIX + node_id, _stored(node)), Put(NAMES + node.name, node_id.encode()),
                 Put(BOUND + node_id, json.dumps(dict(tok.labels), sort_keys=True).encode()), *alloc.ops])
            if res.succeeded:
                node.revision = res.revision
                await self.liveness.renewed(node_id)
                return node, cert
        raise Conflict("join lost too many races with concurrent joins; retry")

    # -- updates --------------------------------------------------------------
    async def _update(self, id_or_name: str, change: Callable[[types_pb2.Node], None]) -> types_pb2.Node:
        for _ in range(8):
            kv = await self._find(id_or_name)
            node = decode(kv)
            change(node)
            res = await self.store.txn([unchanged(kv)], [Put(kv.key, _stored(node))])
            if res.succeeded:
                node.revision = res.revision
                return self._live(node)
        raise Conflict(f"node {id_or_name} changed concurrently; retry")

    def renew_certificate(self, node_id: str, csr_pem: str) -> bytes:
        """A new certificate for `node_id` (a member calling over mTLS with its current one): the
        subject is the caller's id whatever the CSR names, so a node can only renew itself."""
        return self.ca.sign_csr(csr_pem, node_id, pki.KIND_NODE, seconds=self.cert_ttl_s)

    async def renew(self, node_id: str, facts: types_pb2.Node) -> types_pb2.Node:
        """Renew the lease; update changing facts (public address, WireGuard key/port, labels)."""
        check_fact_sizes(facts)
        check_labels(facts.labels, "node label")  # bounded on every renewal, changed or not
        check_wireguard_key(facts.wireguard_public_key)
        check_address(facts.public_address, "public address")
        if facts.wireguard_port:
            check_port(facts.wireguard_port)
        if facts.gossip_port:
            check_port(facts.gossip_port)
        if facts.metrics_port:
            check_port(facts.metrics_port)
        await self.liveness.renewed(node_id)
        current = await self.get(node_id)
        wanted = types_pb2.Node()
        wanted.CopyFrom(current)
        wanted.state = types_pb2.NODE_STATE_READY
        for f in ("public_address", "wireguard_public_key", "wireguard_port", "hostname", "gossip_port",
                  "metrics_port"):
            if getattr(facts, f):
                setattr(wanted, f, getattr(facts, f))
        if facts.HasField("path_report"):
            wanted.path_report.CopyFrom(facts.path_report)
        if facts.labels:
            bound = await self._bound(node_id)
            claims.check_token_labels({**bound, **facts.labels}, bound)
            merged = {**facts.labels, **bound}  # a renewal may not drop them either
            check_labels(merged, "node label")
            wanted.labels.clear()
            wanted.labels.update(merged)
        if _stored(wanted) == _stored(current):
            return current  # nothing changed: no write
        if (wanted.public_address, wanted.wireguard_public_key) != (current.public_address,
                                                                    current.wireguard_public_key):
            claims.check_public(wanted, self.rules)
            claims.check_unique(wanted, await self.claimed())
        return await self._update(node_id, lambda n: n.CopyFrom(_with_revision(wanted, n.revision)))

    async def bound_labels(self, node_id: str) -> dict[str, str]:
        """The labels the node's join token set (binding for good)."""
        return await self._bound(node_id)

    async def _bound(self, node_id: str) -> dict[str, str]:
        kv = await self.store.get(BOUND + node_id)
        return json.loads(kv.value) if kv is not None else {}

    async def set_state(self, node_id: str, state: int) -> types_pb2.Node:
        def change(n: types_pb2.Node) -> None:
            n.state = state
        return await self._update(node_id, change)

    async def drain(self, id_or_name: str, drain: bool) -> types_pb2.Node:
        def change(n: types_pb2.Node) -> None:
            n.drained = drain
        return await self._update(id_or_name, change)

    async def remove(self, id_or_name: str, services: list[types_pb2.Service]) -> types_pb2.Node:
        """Remove a node with its services, name and address, in one transaction."""
        kv = await self._find(id_or_name)
        node = decode(kv)
        ops = [Delete(kv.key), Delete(NAMES + node.name), self.addresses.release(node.mesh_address),
               Delete(HEARTBEATS + node.id), Delete(BOUND + node.id)]
        ops += [Delete(SERVICES + s.name) for s in services if s.node_id == node.id]
        res = await self.store.txn([unchanged(kv)], ops)
        if not res.succeeded:
            raise Conflict(f"node {id_or_name} changed concurrently; retry")
        self.liveness.forget(node.id)
        node.state = types_pb2.NODE_STATE_LEFT
        return node


def _stored(node: types_pb2.Node) -> bytes:
    n = types_pb2.Node()
    n.CopyFrom(node)
    n.revision = 0
    n.last_seen = 0
    return n.SerializeToString(deterministic=True)


def _with_revision(node: types_pb2.Node, revision: int) -> types_pb2.Node:
    n = types_pb2.Node()
    n.CopyFrom(node)
    n.revision = revision
    return n
