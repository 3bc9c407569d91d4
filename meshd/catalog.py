"""The service catalog: mesh-wide unique names mapped to a node's port.

`/services/<name>` holds a Service message. A name belongs to one node at a
time: exposing a name held by another node is refused with ALREADY_EXISTS
naming the holder; the holder may re-expose it (port, protocol, health
change). Only the owning node (or an admin) may unexpose it.

Names of a job. A node whose join token carries the label `sky.job=<job>`
(binding: meshd.claims) belongs to that job, and so do the names it exposes.
SkyPilot runs one VM per managed job at a time and, after a preemption,
relaunches the job on a new VM: that node (same job, joined later) takes the
job's names over at once, whether the old node left (spot notice), is still
unreachable, or is gone, without waiting for lease + grace. When a job's node
leaves or is removed, its names stay kept for the job (`/jobnames/<name>`),
out of DNS, so no other node can take them in the gap; a node of another job
(or of none) is refused with PERMISSION_DENIED naming the holder. An admin
`unexpose` of the name releases it.

Watch resumes from a revision: the store replays exactly the changes after
it. If that history was compacted, the stream starts with RESET, the full
current set, then SYNCED, and goes on live; a reconnecting agent is never
left with a stale or partial copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from mesh.v1 import types_pb2
from meshcore import limits
from meshcore.errors import (
    AlreadyExists, Conflict, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted,
)
from meshcore.names import check_name, check_port, check_service_name
from meshd.fanout import Decoded
from meshd.store.base import Compacted, Delete, Event, KeyValue, Put, Store, absent, unchanged

PREFIX = "/services/"
#: a name kept for its job while no node of the job holds it: {"job": …, "node": last holder}
RESERVED = "/jobnames/"
#: the binding labels the join token set, written by meshd.nodes at join
BOUND = "/nodebound/"
NODES = "/nodes/"
JOB_LABEL = "sky.job"


def decode(kv: KeyValue) -> types_pb2.Service:
    s = types_pb2.Service.FromString(kv.value)
    s.revision = kv.mod_revision
    return s


def check_service(svc: types_pb2.Service, stored: bool = False) -> None:
    """The rules of a service; `stored`: the name is already in the catalog (kept from before
    service names had to start with a letter), so only the older RFC 1123 rule applies."""
    (check_name if stored else check_service_name)(svc.name, "service name")
    check_port(svc.port)
    if svc.protocol not in (types_pb2.PROTOCOL_UNSPECIFIED, types_pb2.PROTOCOL_TCP, types_pb2.PROTOCOL_UDP):
        raise InvalidArgument(f"invalid protocol {svc.protocol}: must be tcp or udp")
    if svc.health.WhichOneof("kind") == "http_path":
        path = svc.health.http_path
        if not path.startswith("/"):
            raise InvalidArgument(f"invalid HTTP health check path {path[:40]!r}: must start with '/'")
        if len(path.encode()) > limits.MAX_HEALTH_PATH_BYTES:
            raise InvalidArgument(f"HTTP health check path is {len(path.encode())} bytes: "
                                  f"at most {limits.MAX_HEALTH_PATH_BYTES}")
    if svc.health.WhichOneof("kind") and svc.protocol == types_pb2.PROTOCOL_UDP:
        raise InvalidArgument("health checks are HTTP or TCP: a UDP service cannot have one")
    if len(svc.tags) > limits.MAX_TAGS:
        raise InvalidArgument(f"a service has {len(svc.tags)} tags: at most {limits.MAX_TAGS}")
    for t in svc.tags:
        if not t or len(t.encode()) > limits.MAX_TAG_BYTES:
            raise InvalidArgument(f"invalid tag {t[:20]!r}: 1-{limits.MAX_TAG_BYTES} bytes")


def check_record_size(svc: types_pb2.Service) -> None:
    """The service as it will be stored, signed and gossiped must fit one record: refused
    here, at the door, rather than by a watch stream or a peer later."""
    probe = types_pb2.Service()
    probe.CopyFrom(svc)
    probe.revision = 2**62  # the widest revision it may ever carry
    size = probe.ByteSize()
    if size > limits.MAX_SERVICE_BYTES:
        raise InvalidArgument(f"service {svc.name!r} takes {size} bytes as a catalog record: at most "
                              f"{limits.MAX_SERVICE_BYTES} (use fewer or shorter tags, or a shorter health path)")


class Catalog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._decode_shared = Decoded(decode)

    async def expose(self, node: types_pb2.Node, svc: types_pb2.Service) -> types_pb2.Service:
        check_name(svc.name, "service name")
        check_service(svc, stored=await self.store.get(PREFIX + svc.name) is not None)
        if node.drained:
            raise FailedPrecondition(f"node {node.name} is drained: it cannot expose new services")
        want = types_pb2.Service()
        want.CopyFrom(svc)
        want.protocol = svc.protocol or types_pb2.PROTOCOL_TCP
        want.node_id, want.node_name, want.address, want.revision = node.id, node.name, node.mesh_address, 0
        want.health_state = types_pb2.HEALTH_STATE_CRITICAL  # the widest state it may be given later
        check_record_size(want)
        want.health_state = svc.health_state
        key = PREFIX + svc.name
        job = await self.job_of(node.id)
        for _ in range(8):
            kv = await self.store.get(key)
            kept = None
            if kv is None:
                await self._check_count(node.id)
            if kv is not None:
                held = decode(kv)
                if held.node_id != node.id:
                    await self._check_takeover(node, job, held)
                else:
                    held.revision = 0
                    if held.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True):
                        return decode(kv)  # already exactly so: no write
            else:
                kept = await self.store.get(RESERVED + svc.name)
                if kept is not None:
                    k = json.loads(kept.value)
                    if k.get("job") != job:
                        raise PermissionDenied(
                            f"service name {svc.name!r} is kept for job {k.get('job')!r} (held by node "
                            f"{k.get('node')!r} until it left); node {node.name!r} is "
                            + (f"of job {job!r}" if job else "of no job")
                            + ": only a node of that job takes it, or an admin releases it with "
                            f"`meshctl unexpose {svc.name}`", holder=str(k.get("node", "")))
            compares = [unchanged(kv) if kv else absent(key)]
            ops = [Put(key, want.SerializeToString(deterministic=True))]
            if kept is not None:
                compares.append(unchanged(kept))
                ops.append(Delete(kept.key))
            res = await self.store.txn(compares, ops)
            if res.succeeded:
                want.revision = res.revision
                return want
        raise AlreadyExists(f"service name {svc.name!r} is being claimed concurrently")

    async def _check_count(self, node_id: str) -> None:
        services, _ = await self.list()
        held = sum(1 for s in services if s.node_id == node_id)
        if held >= limits.MAX_SERVICES_PER_NODE:
            raise ResourceExhausted(f"node holds {held} services: at most {limits.MAX_SERVICES_PER_NODE} per node")

    async def job_of(self, node_id: str) -> str:
        """The job a node belongs to: its binding `sky.job` label, or ''."""
        kv = await self.store.get(BOUND + node_id)
        return json.loads(kv.value).get(JOB_LABEL, "") if kv is not None else ""

    async def _joined(self, node_id: str) -> int:
        kv = await self.store.get(NODES + node_id)
        return kv.create_revision if kv is not None else 0

    async def _check_takeover(self, node: types_pb2.Node, job: str, held: types_pb2.Service) -> None:
        """Return when `node` may take `held` over (a newer node of the same job); raise otherwise."""
        theirs = await self.job_of(held.node_id)
        if job and job == theirs:
            if await self._joined(node.id) > await self._joined(held.node_id):
                return
            raise AlreadyExists(f"service name {held.name!r} was taken over by node {held.node_name!r}, "
                                f"a newer node of job {job!r}", holder=held.node_name)
        if job or theirs:
            raise PermissionDenied(
                f"service name {held.name!r} is held by node {held.node_name!r} of "
                + (f"job {theirs!r}" if theirs else "no job") + f"; node {node.name!r} is "
                + (f"of job {job!r}" if job else "of no job")
                + ": only a node of the same job takes a name over", holder=held.node_name)
        raise AlreadyExists(f"service name {held.name!r} is held by node {held.node_name!r}",
                            holder=held.node_name)

    async def unexpose(self, name: str, node_id: str | None) -> types_pb2.Service:
        """Remove a service; `node_id` None means an admin (may remove any). A change to it meanwhile
        (its owner reporting its health) is read again and checked again, not an error."""
        check_name(name, "service name")
        for _ in range(8):
            kv = await self.store.get(PREFIX + name)
            if kv is None:
                kept = await self.store.get(RESERVED + name)
                if kept is not None and node_id is None:  # an admin releases a name kept for a job
                    await self.store.txn([unchanged(kept)], [Delete(kept.key)])
                    k = json.loads(kept.value)
                    return types_pb2.Service(name=name, node_name=str(k.get("node", "")))
                raise NotFound(f"service {name!r} not found")
            svc = decode(kv)
            if node_id is not None and svc.node_id != node_id:
                raise PermissionDenied(f"service {name!r} belongs to node {svc.node_name!r}: "
                                       f"a node can only unexpose its own services")
            res = await self.store.txn([unchanged(kv)], [Delete(kv.key)])
            if res.succeeded:
                return svc
        raise Conflict(f"service {name!r} changed during each of 8 attempts to remove it; retry")

    async def get(self, name: str) -> types_pb2.Service | None:
        kv = await self.store.get(PREFIX + name)
        return decode(kv) if kv is not None else None

    async def list(self) -> tuple[list[types_pb2.Service], int]:
        kvs, rev = await self.store.range(PREFIX)
        return [decode(kv) for kv in kvs], rev

    async def remove_node_services(self, node_id: str) -> list[types_pb2.Service]:
        """Take a node's services out of the catalog; a job's names stay kept for the job."""
        services, _ = await self.list()
        mine = [s for s in services if s.node_id == node_id]
        if mine:
            job = await self.job_of(node_id)
            ops = [Delete(PREFIX + s.name) for s in mine]
            if job:
                ops += [Put(RESERVED + s.name, json.dumps({"job": job, "node": s.node_name}).encode())
                        for s in mine]
            await self.store.txn([], ops)
        return mine

    def watch(self, from_revision: int, snapshot=None, grouped: bool = False,
              chunk: int = 0) -> AsyncIterator[tuple[str, types_pb2.Service | None, int]]:
        """Changes to the catalog (watch_prefix); each change is decoded once for every watcher
        (the objects are shared: read only)."""
        return watch_prefix(self.store, PREFIX, from_revision, self._decode_shared, snapshot, grouped, chunk)


async def watch_prefix(store: Store, prefix: str, from_revision: int, decode_fn,
                       snapshot=None, grouped: bool = False, chunk: int = 0) -> AsyncIterator[tuple]:
    """Yield ("put" | "delete" | "reset" | "synced", object or None, revision).

    With `chunk`, the current set after "reset" comes as ("batch", [(object, revision), ...],
    highest revision) of up to `chunk` objects each, not one "put" per object.

    With `grouped`, the changes after the current set come as ("changes", [(kind, object,
    revision), ...], last revision): everything the store has handed over by the time the
    watcher asks again, at once (see _read_ahead); a resumed history comes as one such group.

    Resuming after `from_revision` replays exactly what was missed, then
    "synced". From 0, a compacted revision, or one ahead of the store (the
    caller's copy came from a store restored since): "reset", the current
    set, "synced". Then live changes. `snapshot` (meshd.fanout.Snapshots.get)
    shares the current set's read between streams; its objects must not be changed."""
    if from_revision > await store.revision():
        from_revision = 0
    live = None
    if from_revision > 0:
        stream = store.watch(prefix, from_revision)
        try:
            first = await anext(stream)
        except Compacted:
            await stream.aclose()
        else:
            if grouped:  # the history, up to the empty batch that ends it, as one group
                events, batch = [], first
                while batch:
                    events += batch
                    batch = await anext(stream)
                last = events[-1].revision if events else from_revision
                if events:
                    yield ("changes", _changes(decode_fn, events), last)
                del events, batch, first  # held for the stream's life otherwise
                yield ("synced", None, last)
                live = stream
            else:
                batch, last = first, from_revision
                while True:
                    if not batch:
                        yield ("synced", None, last)
                    for e in batch:
                        last = e.revision
                        yield (e.type, _decoded(decode_fn, e), e.revision)
                    batch = await anext(stream)
    if live is None:
        if snapshot is not None:
            items, rev = await snapshot()
        else:
            kvs, rev = await store.range(prefix)
            items = [(decode_fn(kv), kv.mod_revision) for kv in kvs]
        yield ("reset", None, rev)
        if chunk:
            for i in range(0, len(items), chunk):
                part = items[i:i + chunk]
                yield ("batch", part, max(r for _, r in part))
        else:
            for obj, mod_revision in items:
                yield ("put", obj, mod_revision)
        # the set is sent: a stream lives as long as its agent, and would otherwise keep the list
        # of the revision it started at (a fleet joining makes a new one at every join)
        items = part = kvs = None
        yield ("synced", None, rev)
        live = store.watch(prefix, rev)
    if grouped and not store.joins_waiting:
        async for item in _read_ahead(live, decode_fn):
            yield item
        return
    async for batch in live:
        if grouped:
            if batch:
                yield ("changes", _changes(decode_fn, batch), batch[-1].revision)
            continue
        for e in batch:
            yield (e.type, _decoded(decode_fn, e), e.revision)


async def _read_ahead(stream: AsyncIterator[list[Event]], decode_fn) -> AsyncIterator[tuple]:
    """A store watch's live batches as ("changes", ...) groups, for a store that hands over a
    revision at a time (etcd; SQLite's watch joins what waited for a slow reader itself): a task
    of the stream's own reads ahead into a queue (at most WATCH_QUEUE_BATCHES batches; past that
    the store's own bound for a watcher that does not read applies), and whatever arrived while
    the watcher was sending or pausing (meshd.servicers.WatchSlots.pause) goes out as one group."""
    waiting: asyncio.Queue = asyncio.Queue(limits.WATCH_QUEUE_BATCHES)

    async def read() -> None:
        try:
            async for batch in stream:
                if batch:
                    await waiting.put(batch)
            await waiting.put(StopAsyncIteration())
        except Exception as e:  # noqa: BLE001 (handed to the watcher, which raises it)
            await waiting.put(e)

    reader = asyncio.ensure_future(read())
    try:
        while True:
            items = [await waiting.get()]
            while not waiting.empty():
                items.append(waiting.get_nowait())
            end = items[-1] if isinstance(items[-1], BaseException) else None
            events = [e for batch in (items[:-1] if end else items) for e in batch]
            if events:
                yield ("changes", _changes(decode_fn, events), events[-1].revision)
            if isinstance(end, StopAsyncIteration):
                return
            if end is not None:
                raise end
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await stream.aclose()


def _changes(decode_fn, batch: list[Event]) -> list[tuple]:
    return [(e.type, _decoded(decode_fn, e), e.revision) for e in batch]


def _decoded(decode_fn, e: Event):
    obj = decode_fn(e.kv)
    obj.revision = e.revision
    return obj
