"""gRPC servicers: thin translations between protobuf and the domain objects.

Each servicer is handed the collaborators it uses (built by meshd.server),
never the coordinator: what a servicer can touch is what its constructor
names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator

from mesh.v1 import admission_pb2, admission_pb2_grpc, catalog_pb2, catalog_pb2_grpc, nodes_pb2, nodes_pb2_grpc, types_pb2
from meshcore import __version__, limits, pki
from meshcore.errors import (
    FailedPrecondition, MeshError, PermissionDenied, ResourceExhausted, Unauthenticated,
)
from meshd import metrics
from meshd.admincerts import AdminCertRecord, AdminCerts
from meshd.admission import Admission, TokenRecord
from meshd.auth import Caller, Callers, caller_of, require_admin
from meshd import catalog as catalog_mod
from meshd.catalog import Catalog
from meshd.fanout import ENTRIES, Encoded, Snapshots, batch
from meshd.gossipkeys import GossipKeys
from meshd.nodes import Nodes
from meshd.tunnels import Tunnels

#: the token label that lets the nodes it admits fetch the K3s agent token
K3S_LABEL = "mesh.k3s"

EVENT = {"put": types_pb2.EVENT_TYPE_PUT, "delete": types_pb2.EVENT_TYPE_DELETE,
         "reset": types_pb2.EVENT_TYPE_RESET, "synced": types_pb2.EVENT_TYPE_SYNCED}
#: objects per PUT while sending the current set (WatchRequest.batch)
BATCH = 256
#: a node watch stream (batch mode) sends live changes at most this often: the first change after
#: a quiet spell at once, those that follow it within this time together (each node once); longer
#: with many streams (WatchSlots.pause)
NODE_EVENTS_EVERY_S = 0.25
#: pauses that end within this of each other share one timer (WatchSlots.wait)
PAUSE_GRAIN_S = 0.01


def runs(changes: list[tuple], key: Callable) -> list[tuple[str, list, int, int]]:
    """Changes (kind, object, revision) as runs of one kind, each object once per run with its
    last change, in the order of those changes: [(kind, objects, first revision, last
    revision), ...]. A node that flapped three times while its watcher was behind is sent once,
    as it is now."""
    out: list[list] = []
    for kind, obj, rev in changes:
        if not out or out[-1][0] != kind:
            out.append([kind, {}, rev, rev])
        run = out[-1]
        run[1].pop(key(obj), None)
        run[1][key(obj)] = obj
        run[3] = rev
    return [(kind, list(objs.values()), first, last) for kind, objs, first, last in out]


def chunks(objs: list) -> list[list]:
    """A run's objects (in the order of their last change, as `runs` lists them) in messages of
    at most BATCH, each message's revision its last object's: an agent applies each message's
    objects as of their own revisions and resumes after the highest, so one cut off between two
    messages misses none of the rest."""
    return [objs[i:i + BATCH] for i in range(0, len(objs), BATCH)]


log = logging.getLogger("meshd")


def _turn(sem: asyncio.Semaphore, turn_s: float, expired) -> Callable[[], None]:
    """A turn of `sem` (already acquired): its release, which also comes by itself after
    `turn_s` (counted in `expired`)."""
    done = False

    def release() -> None:
        nonlocal done
        if not done:
            done = True
            timer.cancel()
            sem.release()

    def expire() -> None:
        expired.inc()
        release()
    timer = asyncio.get_running_loop().call_later(turn_s, expire)
    return release


class WatchSlots:
    """Open watch streams per caller, bounded (meshcore.limits.WATCHES_PER_CALLER): one
    member cannot hold meshd's memory with streams it never reads. And turns: for sending
    the initial set (`sync_turn`: at most WATCH_SYNCS_AT_ONCE streams at once, each for at
    most WATCH_SYNC_TURN_S), and for writing any message (`send_turn`: WATCH_SENDS_AT_ONCE,
    WATCH_SEND_TURN_S each). A change goes to every stream at once; without turns every
    stream would write it in the same pass of the event loop and a renewal arriving
    meanwhile would wait for all of them. And pauses (`pause`): the more streams of a kind are
    open, the longer each waits after it sent live changes, so that a fleet's streams are sent
    a bounded number of messages a second however often things change."""

    def __init__(self, syncs_at_once: int | None = None, turn_s: float | None = None,
                 sends_at_once: int | None = None, send_turn_s: float | None = None,
                 live_messages_per_s: float | None = None) -> None:
        self._open: dict[str, int] = {}
        self.streams = {"nodes": 0, "services": 0}  # streams open, by kind
        self.live_messages_per_s = limits.WATCH_LIVE_MESSAGES_PER_S if live_messages_per_s is None \
            else live_messages_per_s
        self._syncing = asyncio.Semaphore(syncs_at_once or limits.WATCH_SYNCS_AT_ONCE)
        self.turn_s = turn_s or limits.WATCH_SYNC_TURN_S
        self._sending = asyncio.Semaphore(sends_at_once or limits.WATCH_SENDS_AT_ONCE)
        self.send_turn_s = send_turn_s or limits.WATCH_SEND_TURN_S
        self._waking: dict[int, list[asyncio.Future]] = {}  # grain -> the pauses that end in it

    async def sync_turn(self) -> Callable[[], None]:
        """Wait for a turn to send the initial set; returns its release (call it once the set
        is sent; calling it again does nothing). A turn ends by itself after `turn_s`."""
        metrics.WATCH_SYNCS_WAITING.inc()
        try:
            await self._syncing.acquire()
        finally:
            metrics.WATCH_SYNCS_WAITING.dec()
        return _turn(self._syncing, self.turn_s, metrics.WATCH_SYNC_TURNS_EXPIRED)

    async def send_turn(self) -> Callable[[], None]:
        """Wait for a turn to write one message; returns its release, as `sync_turn`."""
        await self._sending.acquire()
        return _turn(self._sending, self.send_turn_s, metrics.WATCH_SEND_TURNS_EXPIRED)

    def pause(self, kind: str, floor: float = 0.0) -> float:
        """Seconds a batch watch stream of `kind` waits after it sent live changes: `floor`, or
        longer when the streams of its kind open would otherwise be sent more than
        `live_messages_per_s` messages a second between them (0: no bound). Every change goes to
        every stream; what changes during the pause goes out together, each object once."""
        if self.live_messages_per_s <= 0:
            return floor
        return max(floor, self.streams[kind] / self.live_messages_per_s)

    def wait(self, seconds: float) -> asyncio.Future:
        """A future done `seconds` from now (later by less than PAUSE_GRAIN_S): a paused stream
        holds this future alone, and the pauses that end in the same grain share one timer. A
        timer of its own (asyncio.sleep) is a handle, a context and two coroutines more per
        paused stream; at 5,000 agents most of the 5,000 services streams are pausing at any
        moment, and every young-generation collection walks what they hold."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if seconds <= 0:
            fut.set_result(None)
            return fut
        grain = math.ceil((loop.time() + seconds) / PAUSE_GRAIN_S)
        waiting = self._waking.get(grain)
        if waiting is None:
            waiting = self._waking[grain] = []
            loop.call_at(grain * PAUSE_GRAIN_S, self._wake, grain)
        waiting.append(fut)
        return fut

    def _wake(self, grain: int) -> None:
        for fut in self._waking.pop(grain, ()):
            if not fut.done():  # a stream that ended meanwhile cancelled its own
                fut.set_result(None)

    @contextlib.contextmanager
    def stream(self, kind: str):
        """Count a stream of `kind` while it is open."""
        self.streams[kind] += 1
        metrics.WATCH_STREAMS.labels(kind).inc()
        try:
            yield
        finally:
            self.streams[kind] -= 1
            metrics.WATCH_STREAMS.labels(kind).dec()

    async def paced(self, messages) -> AsyncIterator:
        """A watch stream's messages, each written in a send turn."""
        async with contextlib.aclosing(messages):
            async for message in messages:
                release = await self.send_turn()
                try:
                    yield message  # gRPC writes it before asking for the next
                finally:
                    release()
                # not held while the stream waits for its next message (the turn's closures and
                # timer, the message): most of a fleet's streams are waiting at any moment
                del message, release

    @contextlib.contextmanager
    def hold(self, caller: Caller):
        key = str(caller)
        limit = limits.WATCHES_PER_LOCAL_CALLER if caller.kind == "local" else limits.WATCHES_PER_CALLER
        if self._open.get(key, 0) >= limit:
            metrics.WATCHES_REFUSED.inc()
            raise ResourceExhausted(f"{caller} already has {limit} watch streams open: at most {limit} per caller")
        self._open[key] = self._open.get(key, 0) + 1
        try:
            yield
        finally:
            self._open[key] -= 1
            if not self._open[key]:
                del self._open[key]


def token_pb(rec: TokenRecord) -> admission_pb2.Token:
    return admission_pb2.Token(id=rec.id, expires_at=int(rec.expires_at), max_uses=rec.max_uses, uses=rec.uses,
                               revoked=rec.revoked, labels=rec.labels, created_at=int(rec.created_at),
                               description=rec.description)


def admin_cert_pb(rec: AdminCertRecord) -> admission_pb2.AdminCert:
    return admission_pb2.AdminCert(serial=rec.serial, name=rec.name, expires_at=int(rec.expires_at),
                                   may_issue=rec.may_issue, revoked=rec.revoked, issued_at=int(rec.issued_at))


class AdmissionServicer(admission_pb2_grpc.AdmissionServiceServicer):
    def __init__(self, admission: Admission, nodes: Nodes, catalog: Catalog, gossip: GossipKeys, callers: Callers,
                 ca: pki.CertificateAuthority, lease_ttl: Callable[[], float],
                 k3s_join: Callable[[], tuple[str, str] | None], admin_certs: AdminCerts) -> None:
        self.admission = admission
        self.nodes = nodes
        self.catalog = catalog
        self.gossip = gossip
        self.callers = callers
        self.ca = ca
        self.lease_ttl = lease_ttl  # the TTL granted now (meshd.leases: grows with the fleet)
        self.k3s_join = k3s_join
        self.admin_certs = admin_certs
        self._resigned_epoch: dict[str, tuple[str, int]] = {}  # node id -> epoch of the records last sent

    async def CreateToken(self, request, context):
        require_admin(caller_of(context))
        max_uses = request.max_uses if request.HasField("max_uses") else 1
        rec, secret = await self.admission.create(request.ttl_s, max_uses, dict(request.labels), request.description)
        return admission_pb2.CreateTokenResponse(token=token_pb(rec), secret=secret)

    async def ListTokens(self, request, context):
        require_admin(caller_of(context))
        return admission_pb2.ListTokensResponse(tokens=[token_pb(t) for t in await self.admission.list()])

    async def RevokeToken(self, request, context):
        require_admin(caller_of(context))
        return admission_pb2.RevokeTokenResponse(token=token_pb(await self.admission.revoke(request.id)))

    async def Join(self, request, context):
        try:
            node, cert = await self.nodes.join(request.token, request.node, request.csr_pem)
        except Exception as e:
            # a refusal for load (it carries a suggested wait) is not a refusal of this node
            throttled = getattr(e, "retry_pushback_ms", None) is not None and e.retry_pushback_ms >= 0
            metrics.JOINS.labels("throttled" if throttled else getattr(e, "code", "INTERNAL").lower()).inc()
            raise
        metrics.JOINS.labels("ok").inc()
        return admission_pb2.JoinResponse(node=node, certificate_pem=cert.decode(), ca_pem=self.ca.pem.decode(),
                                          lease_ttl_s=math.ceil(self.lease_ttl()), gossip=self.gossip.config(),
                                          observed_address=observed(context))

    async def Renew(self, request, context):
        node_id = await self.callers.node_caller(context)
        # a new certificate first: a refused CSR renews nothing
        cert = self.nodes.renew_certificate(node_id, request.csr_pem) if request.csr_pem else b""
        node = await self.nodes.renew(node_id, request.node)
        return admission_pb2.RenewResponse(node=node, lease_ttl_s=math.ceil(self.lease_ttl()),
                                           gossip=self.gossip.config(), observed_address=observed(context),
                                           certificate_pem=cert.decode(), records=await self._resigned(node_id))

    async def _resigned(self, node_id: str) -> list[bytes]:
        """The caller's services signed again, once per signing key and expiry period (this
        replica remembers which it sent; another replica sends them once more, harmlessly)."""
        epoch = self.gossip.epoch()
        if self._resigned_epoch.get(node_id) == epoch:
            return []
        services, _ = await self.catalog.list()
        out = []
        for svc in services:
            if svc.node_id != node_id:
                continue
            try:
                out.append(self.gossip.sign(svc, svc.revision, False))
            except MeshError as e:
                metrics.RECORDS_SKIPPED.inc()
                log.error("catalog record %r left out of a renewal: %s", svc.name, e)
        self._resigned_epoch[node_id] = epoch
        return out

    async def Leave(self, request, context):
        node_id = await self.callers.node_caller(context)
        # graceful leave (shutdown, spot interruption): services go at once; the node keeps its name
        await self.catalog.remove_node_services(node_id)
        await self.nodes.set_state(node_id, types_pb2.NODE_STATE_LEFT)
        return admission_pb2.LeaveResponse()

    async def IssueAdminCert(self, request, context):
        caller = caller_of(context)
        require_admin(caller)
        if request.may_issue and not caller.may_issue:
            raise PermissionDenied(f"{caller} may not grant the right to issue admin certificates")
        cert, rec = await self.admin_certs.issue(caller, request.csr_pem, request.ttl_s, request.may_issue)
        return admission_pb2.IssueAdminCertResponse(certificate_pem=cert.decode(), ca_pem=self.ca.pem.decode(),
                                                    serial=rec.serial, expires_at=int(rec.expires_at))

    async def ListAdminCerts(self, request, context):
        require_admin(caller_of(context))
        return admission_pb2.ListAdminCertsResponse(certs=[admin_cert_pb(r) for r in await self.admin_certs.list()])

    async def RevokeAdminCert(self, request, context):
        require_admin(caller_of(context))
        recs = await self.admin_certs.revoke(request.serial_or_name)
        return admission_pb2.RevokeAdminCertResponse(certs=[admin_cert_pb(r) for r in recs])

    async def K3sJoin(self, request, context):
        node_id = await self.callers.node_caller(context)
        # The K3s agent token lets a machine into the Kubernetes cluster: only nodes whose
        # join token said so (label K3S_LABEL=agent, bound at join) get it.
        if (await self.nodes.bound_labels(node_id)).get(K3S_LABEL) != "agent":
            raise PermissionDenied(f"this node's join token does not allow K3s: join with a token made by "
                                   f"`meshctl token create --label {K3S_LABEL}=agent`")
        k3s = self.k3s_join()
        if k3s is None:
            raise FailedPrecondition("meshd runs without K3s: start it with --k3s-server-url and --k3s-token-file")
        return admission_pb2.K3sJoinResponse(server_url=k3s[0], token=k3s[1])

    async def RotateGossipKey(self, request, context):
        require_admin(caller_of(context))
        key_id, stage = await self.gossip.rotate()
        return admission_pb2.RotateGossipKeyResponse(key_id=key_id, stage=stage)


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, catalog: Catalog, nodes: Nodes, gossip: GossipKeys, callers: Callers,
                 sync_errors: Callable[[], dict[str, str]], store_token: Callable[[], str] = str,
                 slots: WatchSlots | None = None, tunnels: Tunnels | None = None) -> None:
        self.slots = slots or WatchSlots()
        self.tunnels = tunnels
        self.catalog = catalog
        self.store_token = store_token
        self.nodes = nodes
        self.gossip = gossip
        self.callers = callers
        self.sync_errors = sync_errors
        # each event encoded and signed once for all streams; the current set read once per revision
        self.encoded = Encoded()
        self.entries = Encoded(ENTRIES)  # each object's encoding as a batch entry
        self.snapshots = Snapshots(catalog.store, catalog_mod.PREFIX, catalog_mod.decode)

    async def Expose(self, request, context):
        node_id = await self.callers.node_caller(context)
        node = await self.nodes.get(node_id)
        return catalog_pb2.ExposeResponse(service=await self.catalog.expose(node, request.service))

    async def Unexpose(self, request, context):
        caller = caller_of(context)
        node_id = None if caller.is_admin else await self.callers.node_caller(context)
        return catalog_pb2.UnexposeResponse(service=await self.catalog.unexpose(request.name, node_id))

    async def ListServices(self, request, context):
        await self.callers.any_member(context)
        services, rev = await self.catalog.list()
        return catalog_pb2.ListServicesResponse(services=services, revision=rev, sync_errors=self.sync_errors())

    async def Tunnel(self, request_iterator, context):
        caller = caller_of(context)
        require_admin(caller)
        if self.tunnels is None:
            raise FailedPrecondition("this meshd opens no tunnels")
        await self.tunnels.serve(caller, context)

    def _signed(self, svc: types_pb2.Service, rev: int, deleted: bool) -> bytes | None:
        """The signed record of a change, or None (counted and logged) if it cannot be signed:
        one bad record is left out of the stream, never an abort for every watcher."""
        try:
            return self.gossip.sign(svc, rev, deleted)
        except MeshError as e:
            metrics.RECORDS_SKIPPED.inc()
            log.error("catalog record %r at revision %d left out of watch streams: %s", svc.name, rev, e)
            return None

    def _batch_event(self, store: str, items: list, rev: int, epoch) -> bytes:
        """A PUT of part of the current set: each service with its signed record, each encoded
        and signed once per version (and signing epoch), whichever batches carry it."""
        return batch(catalog_pb2.ServiceEvent(type=types_pb2.EVENT_TYPE_PUT, revision=rev).SerializeToString(),
                     [self.entries.get((store, s.name, r, epoch), lambda s=s, r=r: self._entry(s, r))
                      for s, r in items])

    def _entry(self, svc: types_pb2.Service, rev: int, deleted: bool = False) -> catalog_pb2.ServiceEvent | None:
        record = self._signed(svc, rev, deleted)
        return None if record is None else catalog_pb2.ServiceEvent(services=[svc], records=[record])

    def _runs(self, store: str, changes: list, epoch) -> Iterator[bytes | None]:
        """Grouped live changes as messages: each run of one kind (each service once, as it is now)
        in messages of at most BATCH services; a change alone is the message an ungrouped stream
        sends. A run's bytes are shared by every stream that got the same changes: the store's
        events from its first revision to its last under the prefix, all of one kind."""
        for kind, objs, first, last in runs(changes, lambda s: s.name):
            if len(objs) == 1:
                only = objs[0]
                yield self.encoded.get((store, kind, only.revision, only.name, epoch),
                                       lambda: self._change_event(kind, only, only.revision))
                continue
            deleted = kind == "delete"
            for i, part in enumerate(chunks(objs)):
                header = catalog_pb2.ServiceEvent(type=EVENT[kind], revision=part[-1].revision)
                yield self.encoded.get(
                    (store, "run", kind, first, last, len(objs), i, epoch),
                    lambda: batch(header.SerializeToString(),
                                  [self.entries.get((store, "delete", s.name, s.revision, epoch) if deleted else
                                                    (store, s.name, s.revision, epoch),  # as in a set's batches
                                                    lambda s=s: self._entry(s, s.revision, deleted)) for s in part]))

    def _change_event(self, kind: str, svc: types_pb2.Service, rev: int) -> catalog_pb2.ServiceEvent | None:
        record = self._signed(svc, rev, kind == "delete")
        if record is None:
            return None
        return catalog_pb2.ServiceEvent(type=EVENT[kind], service=svc, revision=rev, record=record)

    async def WatchServices(self, request, context):
        async for message in self.slots.paced(self._watch_services(request, context)):
            yield message

    async def _watch_services(self, request, context):
        caller = await self.callers.any_member(context)
        with self.slots.hold(caller), self.slots.stream("services"):
            done = None
            try:
                store = self.store_token()
                start = resume_point(request, store)
                reset_rev, index = 0, 0
                done = await self.slots.sync_turn()
                # live changes come grouped (what waited for this stream since it last sent) when the
                # caller takes batches: a stream that fell behind a busy meshd catches up in one message
                events = self.catalog.watch(start, self.snapshots.get, grouped=request.batch,
                                            chunk=BATCH if request.batch else 0)
                async for kind, svc, rev in events:
                    if kind == "synced":
                        done()
                    if kind == "reset":
                        reset_rev, index = rev, 0
                    epoch = self.gossip.epoch()  # records signed with another key or expiry are new bytes
                    if kind == "changes":
                        for data in self._runs(store, svc, epoch):
                            if data is not None:
                                yield data
                        svc = data = None  # not held through the pause
                        await self.slots.wait(self.slots.pause("services"))  # what changes meanwhile goes out together
                        continue
                    if kind == "batch":
                        index += 1
                        data = self.encoded.get((store, "batch", reset_rev, index, rev, len(svc), epoch),
                                                lambda: self._batch_event(store, svc, rev, epoch))
                        if data is not None:
                            yield data
                        continue
                    if kind in ("reset", "synced"):
                        yield catalog_pb2.ServiceEvent(type=EVENT[kind], revision=rev, store=store)
                        continue
                    if kind == "put" and reset_rev and rev <= reset_rev:  # a PUT of the set, unbatched
                        key = (store, "set", reset_rev, svc.name, rev, epoch)
                    else:
                        key = (store, kind, rev, svc.name, epoch)
                    data = self.encoded.get(key, lambda: self._change_event(kind, svc, rev))
                    if data is not None:
                        yield data
            finally:
                if done is not None:
                    done()


class NodeServicer(nodes_pb2_grpc.NodeServiceServicer):
    def __init__(self, nodes: Nodes, catalog: Catalog, callers: Callers, store_name: str, overlay_pool: str,
                 store_token: Callable[[], str] = str, store_alarms: Callable[[], list[str]] = list,
                 slots: WatchSlots | None = None, gossip: GossipKeys | None = None) -> None:
        self.store_token = store_token
        self.store_alarms = store_alarms
        self.slots = slots or WatchSlots()
        self.gossip = gossip
        self.nodes = nodes
        self.catalog = catalog
        self.callers = callers
        self.store_name = store_name
        self.overlay_pool = overlay_pool
        self.encoded = Encoded()
        self.entries = Encoded(ENTRIES)  # each object's encoding as a batch entry
        self.snapshots = nodes.snapshots

    def _batch_event(self, store: str, items: list, rev: int) -> bytes:
        """A PUT of part of the current set, each node encoded once per version."""
        return batch(nodes_pb2.NodeEvent(type=types_pb2.EVENT_TYPE_PUT, revision=rev).SerializeToString(),
                     [self.entries.get((store, n.id, r), lambda n=n: nodes_pb2.NodeEvent(nodes=[n]))
                      for n, r in items])

    async def ListNodes(self, request, context):
        await self.callers.any_member(context)
        nodes, rev = await self.nodes.list()
        return nodes_pb2.ListNodesResponse(nodes=nodes, revision=rev)

    async def GetNode(self, request, context):
        await self.callers.any_member(context)
        return nodes_pb2.GetNodeResponse(node=await self.nodes.get(request.id_or_name))

    async def DrainNode(self, request, context):
        require_admin(caller_of(context))
        return nodes_pb2.DrainNodeResponse(node=await self.nodes.drain(request.id_or_name, request.drain))

    async def RemoveNode(self, request, context):
        require_admin(caller_of(context))
        services, _ = await self.catalog.list()
        node = await self.nodes.remove(request.id_or_name, services)
        if self.gossip is not None:
            # The removed node still holds the gossip key: roll a new one through the mesh
            # (it never gets it: keys travel only over mTLS to nodes still in the mesh).
            try:
                await self.gossip.rotate()
            except FailedPrecondition:  # a rotation under way: the key it installs is new too
                log.info("node %s removed during a gossip key rotation: no second rotation", node.name)
        return nodes_pb2.RemoveNodeResponse(node=node)

    async def WatchNodes(self, request, context):
        async for message in self.slots.paced(self._watch_nodes(request, context)):
            yield message

    async def _watch_nodes(self, request, context):
        caller = await self.callers.any_member(context)
        with self.slots.hold(caller), self.slots.stream("nodes"):
            done = None
            try:
                store = self.store_token()
                start = resume_point(request, store)
                reset_rev, index = 0, 0
                done = await self.slots.sync_turn()
                # live changes come grouped (what waited for this stream since it last sent) when the
                # caller takes batches: one message per run, each node once, as it is now
                events = self.nodes.watch(start, self.snapshots.get, grouped=request.batch,
                                          chunk=BATCH if request.batch else 0)
                async for kind, node, rev in events:
                    if kind == "synced":
                        done()
                    if kind == "reset":
                        reset_rev, index = rev, 0
                    if kind == "changes":
                        for run_kind, objs, first, last in runs(node, lambda n: n.id):
                            if len(objs) == 1:
                                only = objs[0]
                                yield self.encoded.get((store, run_kind, only.revision, only.id),
                                                       lambda: nodes_pb2.NodeEvent(type=EVENT[run_kind], node=only,
                                                                                   revision=only.revision))
                                continue
                            for i, part in enumerate(chunks(objs)):
                                yield self.encoded.get((store, "run", run_kind, first, last, len(objs), i),
                                                       lambda: nodes_pb2.NodeEvent(type=EVENT[run_kind], nodes=part,
                                                                                   revision=part[-1].revision))
                        # what changes meanwhile waits, and goes out as one message: a fleet joining at
                        # 50 nodes a second costs each stream a few messages a second, not 50
                        node = objs = part = only = None  # not held through the pause
                        await self.slots.wait(self.slots.pause("nodes", NODE_EVENTS_EVERY_S))
                        continue
                    if kind == "batch":
                        index += 1
                        yield self.encoded.get((store, "batch", reset_rev, index, rev, len(node)),
                                               lambda: self._batch_event(store, node, rev))
                        continue
                    if kind in ("reset", "synced"):
                        yield nodes_pb2.NodeEvent(type=EVENT[kind], revision=rev, store=store)
                        continue
                    if kind == "put" and reset_rev and rev <= reset_rev:  # a PUT of the set, unbatched
                        key = (store, "set", reset_rev, node.id, rev)
                    else:
                        key = (store, kind, rev, node.id)
                    yield self.encoded.get(key, lambda: nodes_pb2.NodeEvent(type=EVENT[kind], node=node,
                                                                           revision=rev))
            finally:
                if done is not None:
                    done()

    async def Status(self, request, context):
        caller = caller_of(context)
        if caller.kind == "anonymous":
            raise Unauthenticated("Status needs a mesh certificate or meshd's admin socket")
        nodes, rev = await self.nodes.list()
        services, _ = await self.catalog.list()
        return nodes_pb2.StatusResponse(version=__version__, revision=rev, nodes=len(nodes), services=len(services),
                                        caller=str(caller), store=self.store_name,
                                        overlay_pool=self.overlay_pool, store_id=self.store_token(),
                                        alarms=self.store_alarms())


def observed(context) -> str:
    """'ip:port' of the caller from gRPC's peer string ('ipv4:1.2.3.4:5678', 'ipv6:[::1]:5678'); '' otherwise."""
    peer = context.peer() or ""
    kind, _, addr = peer.partition(":")
    return addr if kind in ("ipv4", "ipv6") else ""


def resume_point(request: types_pb2.WatchRequest, store: str) -> int:
    """Where a watch starts: the caller's revision, unless its copy belongs to another store (or one
    restored from an older backup), which gets the full current set instead."""
    return request.from_revision if request.store in ("", store) else 0
