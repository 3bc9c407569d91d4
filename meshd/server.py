"""The coordinator: domain objects, background loops and the gRPC server.

Listeners (all one grpc.aio server, same servicers):
- `listen` (default 0.0.0.0:7443): mTLS; the client certificate must come
  from the mesh CA. Everything but Join.
- `join_listen` (default 0.0.0.0:7444): server TLS only, for Join.
- `admin_socket` (default /run/meshd/admin.sock): unix socket, mode 0600, for
  root on the main node (tokens, node removal) without any certificate.
Health checking and reflection are on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.v1 import admission_pb2, admission_pb2_grpc, catalog_pb2, catalog_pb2_grpc, nodes_pb2, nodes_pb2_grpc, types_pb2
from meshcore import pki
from meshcore.errors import ConfigError, StateError, Unauthenticated
from meshd import metrics
from meshd.addresses import DEFAULT_POOL, AddressPool
from meshd.admission import Admission
from meshd.auth import ErrorInterceptor, caller_of, require_node
from meshd.catalog import Catalog
from meshd.gossipkeys import GossipKeys
from meshd.nodes import Nodes, NodesConfig
from meshd.servicers import AdmissionServicer, CatalogServicer, NodeServicer
from meshd.store import open_store
from meshd.store.base import Store

log = logging.getLogger("meshd")


@dataclass
class MeshdConfig:
    #: CA, server key and (with the default store) the SQLite database live here
    state_dir: Path = Path("/var/lib/meshd")
    #: mTLS listener for nodes and admins
    listen: str = "0.0.0.0:7443"
    #: TLS listener for Join only ("" to disable)
    join_listen: str = "0.0.0.0:7444"
    #: root-only unix socket for local admin calls ("" to disable)
    admin_socket: str = "/run/meshd/admin.sock"
    #: Prometheus metrics address ("" to disable)
    metrics: str = "127.0.0.1:9464"
    #: sqlite (default), sqlite:///path.db or etcd://host:2379,...
    store: str = "sqlite"
    #: where non-AWS nodes get their mesh address
    overlay_pool: str = DEFAULT_POOL
    #: a node must renew within this many seconds or it is marked unreachable
    lease_ttl_s: float = 15.0
    #: an unreachable node's services leave the catalog after this many more seconds
    grace_s: float = 30.0
    #: extra names/addresses for meshd's server certificate
    advertise: list[str] = field(default_factory=list)
    #: K3s server URL handed to agents (e.g. https://100.96.0.1:6443); "" without K3s
    k3s_server_url: str = ""
    #: file holding the K3s agent token
    k3s_token_file: str = ""
    #: file holding a join string registered at start (unlimited uses, revocable); "" for none
    bootstrap_token_file: str = ""
    #: mirror the catalog into Consul (meshd/sync/consul_client.py: ConsulConfig); None: off
    consul: object | None = None
    #: mirror the catalog into Kubernetes Services (meshd/sync/kube_client.py: KubernetesConfig); None: off
    kubernetes: object | None = None


class Coordinator:
    def __init__(self, config: MeshdConfig, store: Store | None = None, clock=time.time) -> None:
        self.config = config
        self.clock = clock
        state = Path(config.state_dir)
        try:
            state.mkdir(parents=True, exist_ok=True)
            os.chmod(state, 0o700)
        except OSError as e:
            raise StateError(f"cannot use state directory {state}: {e}") from e
        self.ca = pki.CertificateAuthority.load_or_create(state)
        self.store = store or open_store(config.store, state)
        self.admission = Admission(self.store, pki.pin(self.ca.pem), clock)
        self.addresses = AddressPool(self.store, config.overlay_pool)
        self.catalog = Catalog(self.store)
        from meshd.store.sqlite import SQLiteStore
        self.nodes = Nodes(self.store, self.admission, self.addresses, self.ca,
                           NodesConfig(config.lease_ttl_s, config.grace_s,
                                       shared_heartbeats=not isinstance(self.store, SQLiteStore)), clock)
        self.gossip = GossipKeys(self.store, clock)
        self._server_key, self._server_cert = self._server_identity(state)
        self.server: grpc.aio.Server | None = None
        self.ports: dict[str, int] = {}
        self._tasks: list[asyncio.Task] = []
        self.sync_loops: list = []
        self.election = None
        self._sync_feed: asyncio.Task | None = None
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()

    def _server_identity(self, state: Path) -> tuple[bytes, bytes]:
        # A fresh server certificate each start: cheap, and names follow --advertise.
        # The chain carries the CA so a joining node can check it against its token's pin.
        key = pki.new_key()
        return pki.key_pem(key), self.ca.server_cert(key, self.config.advertise) + self.ca.pem

    # -- callers --------------------------------------------------------------
    async def node_caller(self, context) -> str:
        """The calling node's id; Unauthenticated if it was removed."""
        node_id = require_node(caller_of(context))
        if await self.store.get("/nodes/" + node_id) is None:
            raise Unauthenticated(f"node {node_id} was removed from the mesh: join again with a new token")
        return node_id

    async def any_member(self, context) -> None:
        caller = caller_of(context)
        if caller.kind == "anonymous":
            raise Unauthenticated("this call needs a mesh certificate (join first) or meshd's admin socket")
        if caller.kind == "node":
            await self.node_caller(context)

    def k3s_join(self) -> tuple[str, str] | None:
        if not self.config.k3s_server_url:
            return None
        try:
            token = Path(self.config.k3s_token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the K3s token file {self.config.k3s_token_file}: {e}") from e
        return self.config.k3s_server_url, token

    # -- node lifecycle -------------------------------------------------------
    async def remove_node(self, id_or_name: str) -> types_pb2.Node:
        node = await self.nodes.get(id_or_name)
        services, _ = await self.catalog.list()
        return await self.nodes.remove(node.id, services)

    async def leave(self, node_id: str) -> None:
        """Graceful leave (shutdown, spot interruption): services go at once; the node keeps its name."""
        await self.catalog.remove_node_services(node_id)
        await self.nodes.set_state(node_id, types_pb2.NODE_STATE_LEFT)

    async def check_leases(self) -> None:
        await self.nodes.load_heartbeats()
        nodes, _ = await self.nodes.list()
        expired, gone = self.nodes.overdue(nodes)
        for n in expired:
            log.warning("node %s (%s) missed its lease: unreachable", n.name, n.id)
            metrics.LEASE_EXPIRIES.inc()
            await self.nodes.set_state(n.id, types_pb2.NODE_STATE_UNREACHABLE)
        for n in gone:
            removed = await self.catalog.remove_node_services(n.id)
            if removed:
                log.warning("node %s unreachable past the grace period: removed %s", n.name,
                            ", ".join(s.name for s in removed))
        counts: dict[int, int] = {}
        for n in nodes:
            counts[n.state] = counts.get(n.state, 0) + 1
        for state, name in ((1, "ready"), (2, "unreachable"), (3, "left")):
            metrics.NODES.labels(name).set(counts.get(state, 0))

    async def _lease_loop(self) -> None:
        interval = max(0.2, min(1.0, self.config.lease_ttl_s / 5))
        while True:
            try:
                services, rev = await self.catalog.list()
                metrics.CATALOG_SERVICES.set(len(services))
                metrics.REVISION.set(rev)
                if self.is_leader:
                    await self.check_leases()
                    stage = await self.gossip.advance(self.all_renewed_since)
                    if stage:
                        log.info("gossip key rotation: %s", stage)
                await self.store.expire_leases()
            except Exception:  # never let the loop die; it is retried next tick
                log.exception("lease check failed")
            await asyncio.sleep(interval)

    # -- server ---------------------------------------------------------------
    def all_renewed_since(self, t: float) -> bool:
        """Every live node (renewed within its lease) has renewed since `t`."""
        now, ttl = self.clock(), self.config.lease_ttl_s
        return all(seen >= t for seen in self.nodes.last_seen.values() if now - seen <= ttl)

    async def start(self) -> None:
        await self.gossip.load()
        if self.config.bootstrap_token_file:
            await self._bootstrap_token(Path(self.config.bootstrap_token_file))
        server = grpc.aio.server(interceptors=[ErrorInterceptor()],
                                 options=[("grpc.keepalive_time_ms", 20000),
                                          ("grpc.keepalive_permit_without_calls", 1),
                                          ("grpc.http2.min_ping_interval_without_data_ms", 10000)])
        admission_pb2_grpc.add_AdmissionServiceServicer_to_server(AdmissionServicer(self), server)
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(self), server)
        nodes_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [d.full_name for d in (admission_pb2.DESCRIPTOR.services_by_name["AdmissionService"],
                                       catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
                                       nodes_pb2.DESCRIPTOR.services_by_name["NodeService"])]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        pair = [(self._server_key, self._server_cert)]
        if self.config.listen:
            self.ports["listen"] = server.add_secure_port(
                self.config.listen, grpc.ssl_server_credentials(pair, self.ca.pem, require_client_auth=True))
        if self.config.join_listen:
            self.ports["join"] = server.add_secure_port(self.config.join_listen, grpc.ssl_server_credentials(pair))
        if self.config.admin_socket:
            sock = Path(self.config.admin_socket)
            sock.parent.mkdir(parents=True, exist_ok=True)
            if sock.exists():
                sock.unlink()
            old = os.umask(0o177)
            try:
                server.add_insecure_port(f"unix:{sock}")
                await server.start()
            finally:
                os.umask(old)
            os.chmod(sock, 0o600)
        else:
            await server.start()
        self.server = server
        for name in names + [""]:
            await _maybe_await(self.health.set(name, health_pb2.HealthCheckResponse.SERVING))
        if self.config.metrics:
            from meshcore.metrics import serve_metrics
            self.ports["metrics"] = serve_metrics(self.config.metrics)
        self._tasks.append(asyncio.create_task(self._lease_loop(), name="leases"))
        self._start_election()
        log.info("meshd serving: %s", ", ".join(f"{k}={v}" for k, v in self.ports.items()))

    async def _bootstrap_token(self, path: Path) -> None:
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read bootstrap token file {path}: {e.strerror}") from None
        if await self.admission.ensure(token):
            log.info("registered the bootstrap join token from %s", path)

    # -- leadership -------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.election is None or self.election.is_leader

    def _start_election(self) -> None:
        """Replicas on etcd elect one leader for lease checks, key rotation and the catalog
        mirrors; a single meshd on SQLite leads alone, at once."""
        from meshd.store.sqlite import SQLiteStore
        if isinstance(self.store, SQLiteStore):
            self._start_sync()
            return
        import socket
        import uuid
        from meshd.election import Election, ElectionConfig

        def changed(leading: bool) -> None:
            task = asyncio.create_task(self._start_sync_async() if leading else self._stop_sync())
            self._tasks.append(task)
        self.election = Election(self.store, f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
                                 ElectionConfig(key="/election/meshd"), on_change=changed)
        self.election.start()

    async def _start_sync_async(self) -> None:
        self._start_sync()

    async def _stop_sync(self) -> None:
        if self._sync_feed is not None:
            self._sync_feed.cancel()
            await asyncio.gather(self._sync_feed, return_exceptions=True)
            self._sync_feed = None
        for loop in self.sync_loops:
            await loop.stop()
        self.sync_loops.clear()

    # -- catalog mirrors (Consul, Kubernetes) -----------------------------------
    def _start_sync(self) -> None:
        """One SyncLoop per configured registry, fed the whole catalog on every change."""
        from meshd.sync.base import SyncLoop
        if self.config.consul is not None:
            from meshd.sync.consul import ConsulTarget
            self.sync_loops.append(SyncLoop(ConsulTarget(self.config.consul)))
        if self.config.kubernetes is not None:
            from meshd.sync.kubernetes import KubernetesTarget
            self.sync_loops.append(SyncLoop(KubernetesTarget(self.config.kubernetes)))
        if not self.sync_loops:
            return
        for loop in self.sync_loops:
            loop.start()
        self._sync_feed = asyncio.create_task(self._feed_sync(), name="sync-feed")

    async def _feed_sync(self) -> None:
        changed = asyncio.Event()
        changed.set()

        async def watch(prefix: str) -> None:
            while True:
                try:
                    async for _ in self.store.watch(prefix, await self.store.revision()):
                        changed.set()
                except Exception:  # compaction or a store hiccup: start over from now
                    log.exception("catalog watch for sync failed; restarting it")
                    changed.set()
                    await asyncio.sleep(1)
        watchers = [asyncio.create_task(watch(p)) for p in ("/services/", "/nodes/")]
        try:
            while True:
                await changed.wait()
                changed.clear()
                services, _ = await self.catalog.list()
                nodes, _ = await self.nodes.list()
                by_id = {n.id: n for n in nodes}
                for loop in self.sync_loops:
                    loop.update(services, by_id)
        finally:
            for w in watchers:
                w.cancel()

    def sync_errors(self) -> dict[str, str]:
        errors: dict[str, str] = {}
        for loop in self.sync_loops:
            for name, why in loop.errors().items():
                errors[name] = f"{errors[name]}; {why}" if name in errors else why
        return errors

    async def stop(self, grace: float = 1.0) -> None:
        if self.election is not None:
            await self.election.resign()
        await self._stop_sync()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.server:
            await self.server.stop(grace)
            self.server = None
        await self.store.close()


async def _maybe_await(x):
    if asyncio.iscoroutine(x):
        await x
