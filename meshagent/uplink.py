"""The agent's connection to meshd: join, the two watch streams, lease renewal.

Join: with no identity on disk, the agent fetches meshd's CA (checked against
the pin in the join token) from the join listener, sends a CSR and its facts,
and keeps the certificate it gets back. While meshd is unreachable it retries
with capped, jittered backoff; a refusal that retrying cannot change (bad
token, bad facts) is raised at once. A join meshd refuses for load
(RESOURCE_EXHAUSTED: too many joins already wait) is tried again after the
wait meshd suggests in its `grpc-retry-pushback-ms` trailer (capped and
jittered, meshagent/pushback.py), said once at INFO. Every wait is capped
(backoff_max_s, or PUSHBACK_CAP_S for a suggested one) and every attempt has a
deadline; attempts go on until meshd admits or refuses the node, as a VM that
boots before meshd waits for it.

After join, one mTLS channel carries everything:
- two watch streams (services, nodes) feed the catalog copy (`view.Catalog`).
  Each resumes from the last revision it applied after any disconnect, so a
  reconnect costs only the events missed; batched PUTs of the current set
  arrive first, then one event per change;
- renewal every third of the lease TTL, carrying the node's current facts;
  once less than a third of the certificate's life is left, a renewal also
  carries a CSR for a new key. The new key and certificate replace the old
  ones in the state directory and in the shared `Identity`, and the channel
  is reopened with them (the watch streams resume on it from their revision).

The uplink does not know what the rest of the agent does with what it hears;
the agent wires that in with hooks: `on_record` (a signed catalog record, for
gossip), `on_synced(kind)` (a stream caught up: re-assert services, find
gossip peers) and `on_renewed(response)` (key rotations, peer snapshots).

The connection is logged once per change of state, not per retry, and
`connected`, `last_contact` (wall clock, for people) and `reconnects` are
what `meshctl status` shows.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from mesh.v1 import admission_pb2, admission_pb2_grpc, catalog_pb2, catalog_pb2_grpc, nodes_pb2_grpc, types_pb2
from meshagent import metrics
from meshagent.config import AgentConfig
from meshagent.identity import Identity, fetch_pinned_ca
from meshagent.pushback import join_retry
from meshagent.view import Catalog
from meshcore import pki
from meshcore.backoff import Backoff
from meshcore.clock import SYSTEM, Clock
from meshcore.errors import StateError, Unauthenticated, Unavailable, from_code
from meshcore.jointoken import parse_token

log = logging.getLogger("meshagent")

# Jitter of the reconnect backoff: each delay is spread over [0.5, 1.5) of its base,
# so agents reconnecting after the same outage do not stampede.
JITTER = 0.5
RPC_TIMEOUT_S = 10
# Renewal interval before the first answer tells the lease TTL, and after a failed renewal at most.
FIRST_RENEW_S, RETRY_RENEW_S = 5.0, 2.0


def renew_interval(lease_ttl_s: float) -> float:
    """When to renew a lease of `lease_ttl_s` again: a third of it, less up to a fifth of that at
    random, so that a fleet that joined together does not renew in step."""
    return max(0.2, lease_ttl_s / 3 * random.uniform(0.8, 1.0))


class RenewSchedule:
    """The seconds until the next renewal: `renew_interval` of the TTL last granted after a
    renewal; after a failed one, a retry from RETRY_RENEW_S doubling (with jitter) up to a
    sixth of that TTL, so that a fleet whose coordinator is overloaded backs off instead of
    renewing every 2 s, yet tries at least twice more before its lease runs out."""

    def __init__(self, lease_ttl_s: float = 3 * FIRST_RENEW_S) -> None:
        self.lease_ttl_s = 0.0
        self.retry = self._retry(lease_ttl_s)

    def _retry(self, lease_ttl_s: float) -> Backoff:
        self.lease_ttl_s = lease_ttl_s
        return Backoff(RETRY_RENEW_S, max(RETRY_RENEW_S, lease_ttl_s / 6))

    def renewed(self, lease_ttl_s: float) -> float:
        if lease_ttl_s != self.lease_ttl_s:
            self.retry = self._retry(lease_ttl_s)
        self.retry.reset()
        return renew_interval(lease_ttl_s)

    def failed(self) -> float:
        return self.retry.next()


def channel_options() -> list[tuple[str, object]]:
    return [("grpc.ssl_target_name_override", pki.SERVER_NAME),
            ("grpc.keepalive_time_ms", 15000), ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.max_reconnect_backoff_ms", 5000)]


def mtls_channel(target: str, ident: Identity) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(ident.ca_pem, ident.key_pem, ident.cert_pem)
    return grpc.aio.secure_channel(target, creds, options=channel_options())


async def _nothing(*_args) -> None:
    return None


class Uplink:
    """meshd as this agent sees it: one channel, its stubs, and whether it answers."""

    def __init__(self, config: AgentConfig, catalog: Catalog, facts: Callable[[], types_pb2.Node],
                 rng: random.Random | None = None, clock: Clock = SYSTEM) -> None:
        self.config = config
        self.catalog = catalog
        self._facts = facts
        self.rng = rng or random.Random()
        self.clock = clock
        self.connected = False
        self.last_contact = 0.0  # wall clock: shown by `meshctl status`
        self.reconnects = 0
        self.join_throttled = 0  # joins meshd refused for load (RESOURCE_EXHAUSTED with a suggested wait)
        self.left = False  # after a spot notice: no renewals, no re-asserting services
        self.channel: grpc.aio.Channel | None = None
        self.identity: Identity | None = None
        self.catalog_stub: catalog_pb2_grpc.CatalogServiceStub | None = None
        self.node_stub: nodes_pb2_grpc.NodeServiceStub | None = None
        self.admission_stub: admission_pb2_grpc.AdmissionServiceStub | None = None
        self.on_record: Callable[[bytes], None] = lambda raw: None
        self.on_synced: Callable[[str], Awaitable[None]] = _nothing
        self.on_renewed: Callable[[admission_pb2.RenewResponse], Awaitable[None]] = _nothing
        #: meshd's view of where this node's calls come from ("ip:port"), after each join and renewal
        self.on_observed: Callable[[str], None] = lambda _addr: None

    def _backoff(self) -> Backoff:
        return Backoff(self.config.backoff_min_s, self.config.backoff_max_s, JITTER, self.rng)

    # -- join -------------------------------------------------------------------------
    async def join(self) -> tuple[Identity, admission_pb2.GossipConfig]:
        """Join with the configured token; the identity is saved in the state directory and
        returned with the gossip keyring meshd handed out."""
        token = self.config.token
        state_dir = Path(self.config.state_dir)
        if not token:
            raise StateError(f"no identity in {state_dir} and no join token: "
                             f"start meshagent once with --token-file PATH or MESH_JOIN_TOKEN "
                             f"(a token from `meshctl token create` on the main node)")
        _, _, pin = parse_token(token)
        if pin is None:
            raise Unauthenticated("the join token has no CA pin: use the full token printed by `meshctl token create`")
        host, port = self.config.join_target()
        backoff = self._backoff()
        warned = False
        ca_pem = key = csr = None
        while True:
            try:
                if ca_pem is None:  # once: a retry after meshd pushed back costs it one call, not three
                    ca_pem = await asyncio.to_thread(fetch_pinned_ca, host, port, pin)
                    key = pki.new_key()
                    csr = pki.make_csr(key, self.config.name)
                creds = grpc.ssl_channel_credentials(ca_pem)
                async with grpc.aio.secure_channel(f"{host}:{port}", creds, options=channel_options()) as ch:
                    resp = await admission_pb2_grpc.AdmissionServiceStub(ch).Join(
                        admission_pb2.JoinRequest(token=token, node=self._facts(), csr_pem=csr.decode()),
                        timeout=RPC_TIMEOUT_S)
                self.on_observed(resp.observed_address)
                break
            except (Unavailable, grpc.aio.AioRpcError) as e:
                decided = join_retry(e, backoff) if isinstance(e, grpc.aio.AioRpcError) else (backoff.next(), False)
                if decided is None:
                    raise from_code(e.code().name, f"join refused by meshd: {e.details()}") from None
                wait, pushed = decided
                if pushed:  # meshd pushes back: not a failure
                    self.join_throttled += 1
                    if self.join_throttled == 1:
                        log.info("meshd is busy admitting other nodes: retrying in %.1f s (and again as long "
                                 "as meshd asks)", wait)
                    await asyncio.sleep(wait)
                    continue
                if not warned:
                    if isinstance(e, Unavailable) or e.code() == grpc.StatusCode.UNAVAILABLE:
                        log.warning("meshd at %s:%d is unreachable (%s); retrying until it answers", host, port,
                                    e if isinstance(e, Unavailable) else e.details())
                    else:
                        log.warning("join attempt failed (%s: %s); retrying", e.code().name, e.details())
                    warned = True
                await asyncio.sleep(wait)
        ident = Identity(resp.node.id, resp.node.name, resp.node.mesh_address, self.config.coordinator,
                         pki.key_pem(key), resp.certificate_pem.encode(), resp.ca_pem.encode())
        ident.save(state_dir)
        log.info("joined the mesh as %s (%s), mesh address %s", ident.name, ident.node_id, ident.mesh_address)
        return ident, resp.gossip

    # -- the mTLS channel ---------------------------------------------------------------
    def connect(self, identity: Identity) -> None:
        """Open the channel (it connects lazily and reconnects by itself) and its stubs."""
        self.identity = identity
        self.channel = mtls_channel(self.config.coordinator, identity)
        self.catalog_stub = catalog_pb2_grpc.CatalogServiceStub(self.channel)
        self.node_stub = nodes_pb2_grpc.NodeServiceStub(self.channel)
        self.admission_stub = admission_pb2_grpc.AdmissionServiceStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    def _set_connected(self, up: bool, why: str = "") -> None:
        if up:
            self.last_contact = self.clock.wall()
        if up != self.connected:
            self.connected = up
            metrics.CONNECTED.set(1 if up else 0)
            if up:
                log.info("connected to meshd at %s", self.config.coordinator)
            else:
                self.reconnects += 1
                metrics.RECONNECTS.inc()
                log.warning("lost meshd at %s (%s); serving names from the local copy and reconnecting",
                            self.config.coordinator, why)

    # -- the watch streams ----------------------------------------------------------------
    async def watch(self, kind: str) -> None:
        """Follow meshd's services or nodes into the catalog copy, forever."""
        services = kind == "services"
        view = self.catalog.services if services else self.catalog.nodes
        backoff = self._backoff()
        while True:
            try:
                request = types_pb2.WatchRequest(from_revision=view.revision, batch=True, store=view.store)
                stream = self.catalog_stub.WatchServices(request) if services else self.node_stub.WatchNodes(request)
                async for ev in stream:
                    self._set_connected(True)
                    backoff.reset()
                    many = ev.services if services else ev.nodes
                    if many:  # a batch of the current set
                        for obj in many:
                            view.apply(ev.type, obj, obj.revision)
                        if services:
                            for record in ev.records:
                                self.on_record(record)
                        continue
                    obj = ev.service if services else ev.node
                    if ev.type == types_pb2.EVENT_TYPE_RESET and view.revision:
                        self._resync_said(kind, view, ev)
                    if ev.type == types_pb2.EVENT_TYPE_SYNCED and ev.store:
                        view.store = ev.store
                    view.apply(ev.type, obj, ev.revision)
                    if services and ev.record:
                        self.on_record(ev.record)
                    if ev.type == types_pb2.EVENT_TYPE_SYNCED:
                        await self.on_synced(kind)
                why = "stream ended"
            except grpc.aio.AioRpcError as e:
                why = f"{e.code().name}: {e.details()}"
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("meshd refuses this node: %s", e.details())
            self._set_connected(False, why)
            await asyncio.sleep(backoff.next())

    @staticmethod
    def _resync_said(kind: str, view, ev) -> None:
        """Say why the copy is replaced in full (once per replacement)."""
        if view.store and ev.store and ev.store != view.store:
            log.warning("meshd's store is not the one the %s copy came from (%s, now %s: another store, or one "
                        "restored from a backup): resyncing in full", kind, view.store, ev.store)
        elif view.revision > ev.revision:
            log.warning("meshd's store is behind the %s copy (revision %d > %d: restored from a backup?): "
                        "resyncing in full", kind, view.revision, ev.revision)
        else:
            log.info("meshd's history no longer reaches revision %d of the %s copy (compacted): resyncing in full",
                     view.revision, kind)

    # -- the lease ------------------------------------------------------------------------
    async def renew(self) -> None:
        """Renew the lease every third of its TTL until the node leaves."""
        interval, schedule = FIRST_RENEW_S, RenewSchedule()
        while not self.left:
            try:
                key, csr = self._new_key_if_due()
                resp = await self.admission_stub.Renew(admission_pb2.RenewRequest(node=self._facts(), csr_pem=csr),
                                                       timeout=RPC_TIMEOUT_S)
                interval = schedule.renewed(resp.lease_ttl_s)
                self.last_contact = self.clock.wall()
                self.on_observed(resp.observed_address)
                if key is not None and resp.certificate_pem:
                    await self._replace_certificate(key, resp.certificate_pem.encode())
                await self.on_renewed(resp)
            except grpc.aio.AioRpcError as e:
                log.debug("renew failed: %s", e.code().name)
                interval = schedule.failed()
            await asyncio.sleep(interval)

    def _new_key_if_due(self) -> tuple[object | None, str]:
        """(new key, its CSR) when the certificate has less than a third of its life left."""
        if self.identity is None or not pki.renew_due(pki.load_cert(self.identity.cert_pem, "node certificate")):
            return None, ""
        key = pki.new_key()
        return key, pki.make_csr(key, self.identity.name).decode()

    async def _replace_certificate(self, key, cert_pem: bytes) -> None:
        cert = pki.load_cert(cert_pem, "renewed certificate")
        if pki.identity(cert)[1] != self.identity.node_id:
            log.error("meshd renewed the certificate for another node (%s): keeping ours", pki.identity(cert)[1])
            return
        self.identity.key_pem, self.identity.cert_pem = pki.key_pem(key), cert_pem
        self.identity.save(Path(self.config.state_dir))
        old = self.channel
        self.connect(self.identity)
        log.info("node certificate renewed: valid until %s",
                 cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"))
        # the watch streams on the old channel end and resume on the new one from their revision
        asyncio.get_running_loop().call_later(1.0, lambda: asyncio.ensure_future(old.close(grace=1.0)))

    async def leave(self) -> None:
        """Tell meshd this node leaves: its services leave the catalog at once."""
        await self.admission_stub.Leave(admission_pb2.LeaveRequest(), timeout=5)

    async def expose(self, service: types_pb2.Service) -> catalog_pb2.ExposeResponse:
        return await self.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=service), timeout=RPC_TIMEOUT_S)
