"""The coordinator: wiring the domain objects together, and serving them over gRPC.

Jobs live in their own modules: admission (join tokens), nodes (join, facts,
drain, removal), leases (liveness and the leader's lease loop), catalog,
gossipkeys, mirrors (Consul and Kubernetes), election (which replica leads),
tunnels (admins' TCP connections to services), auth (who is calling) and
servicers (protobuf in, domain calls out). This
module builds them from a MeshdConfig, hands each servicer the collaborators
it uses, and runs the server and the background loops.

Listeners (all one grpc.aio server, same servicers):
- `listen` (default 0.0.0.0:7443): mTLS; the client certificate must come
  from the mesh CA. Everything but Join.
- `join_listen` (default 0.0.0.0:7444): server TLS only, its own gRPC server
  answering Join and nothing else (no health, no reflection, no other
  method): the one door open to callers without a certificate.
- `admin_socket` (default /run/meshd/admin.sock): unix socket, mode 0600, whose
  door admits root only by the peer's credentials (meshcore/localdoor.py), for
  root on the main node (tokens, node removal) without any certificate.
Health checking and reflection are on the mTLS listener and the admin socket.

One clock (meshcore.clock) is injected into every part: durations on its
monotonic time, stored and shown timestamps on its wall time.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.v1 import (admission_pb2, admission_pb2_grpc, catalog_pb2, catalog_pb2_grpc, nodes_pb2, nodes_pb2_grpc,
                     types_pb2)
from meshcore import limits, pki
from meshcore.clock import SYSTEM, Clock
from meshcore.defaults import JOIN_PORT, MESHD_PORT
from meshcore.errors import ConfigError, StateError
from meshcore.localdoor import LocalDoor, prepare_private_dir, private_socket_path, remove_private_dir, root_only
from meshcore.statelock import StateLock, claim_socket
from meshd import metrics
from meshd.addresses import DEFAULT_POOL, AddressPool
from meshd.admincerts import AdminCerts
from meshd.admission import Admission
from meshd.auth import Callers, ErrorInterceptor
from meshd.catalog import Catalog
from meshd.claims import DEFAULT_VPC_RANGES, ClaimRules
from meshd.gossipkeys import CATALOG_KEY_OVERLAP_S, CATALOG_KEY_ROTATE_S, CATALOG_RECORD_TTL_S, GossipKeys
from meshd.joinqueue import MAX_PENDING_JOINS
from meshd.leases import LeaseConfig, LeaseLoop, Liveness
from meshd.mirrors import Mirrors
from meshd.nodes import Nodes
from meshd.servicers import AdmissionServicer, CatalogServicer, NodeServicer, WatchSlots
from meshd.store import open_store, sqlite_path
from meshd.store.base import Store
from meshd.store.sqlite import SQLiteStore
from meshd.storeid import MARK_EVERY_S, StoreMark
from meshd.tunnels import Tunnels

log = logging.getLogger("meshd")


@dataclass
class MeshdConfig:
    #: CA, server key and (with the default store) the SQLite database live here
    state_dir: Path = Path("/var/lib/meshd")
    #: mTLS listener for nodes and admins
    listen: str = f"0.0.0.0:{MESHD_PORT}"
    #: TLS listener for Join only ("" to disable)
    join_listen: str = f"0.0.0.0:{JOIN_PORT}"
    #: root-only unix socket for local admin calls ("" to disable)
    admin_socket: str = "/run/meshd/admin.sock"
    #: Prometheus metrics address ("" to disable)
    metrics: str = "127.0.0.1:9464"
    #: sqlite (default), sqlite:///path.db, etcd://host:2379,... or etcds://host:2379,... (TLS)
    store: str = "sqlite"
    #: etcds:// only: CA bundle that signed etcd's certificate
    etcd_ca: str = ""
    #: etcds:// only: meshd's client certificate for etcd (--client-cert-auth)
    etcd_cert: str = ""
    #: etcds:// only: the key of etcd_cert
    etcd_key: str = ""
    #: wait until `meshd store import` has filled the store before serving (profile switch); never start a new mesh
    await_import: bool = False
    #: where non-AWS nodes get their mesh address
    overlay_pool: str = DEFAULT_POOL
    #: the mesh's AWS address plan: an AWS node's VPC CIDR must lie inside one of these
    vpc_ranges: tuple[str, ...] = DEFAULT_VPC_RANGES
    #: extra ranges accepted as public endpoints besides public unicast (a lab's own "internet")
    endpoint_ranges: tuple[str, ...] = ()
    #: joins that may wait for their turn; one more is refused at once with a suggested wait
    #: (RESOURCE_EXHAUSTED and the grpc-retry-pushback-ms trailer); 0: no bound
    max_pending_joins: int = MAX_PENDING_JOINS
    #: a node must renew within this many seconds or it is marked unreachable
    lease_ttl_s: float = 15.0
    #: renewals a second the fleet may send: a larger fleet gets a longer lease TTL (0: always lease_ttl_s)
    max_renewals_per_s: float = 100.0
    #: live-change messages a second each kind of watch stream (nodes, services) is sent, fleet-wide:
    #: with more streams, each pauses longer after it sent and what changes meanwhile goes out
    #: together (0: no bound)
    max_watch_messages_per_s: float = limits.WATCH_LIVE_MESSAGES_PER_S
    #: an unreachable node's services leave the catalog after this many more seconds
    grace_s: float = 30.0
    #: extra names/addresses for meshd's server certificate
    advertise: list[str] = field(default_factory=list)
    #: K3s server URL handed to agents (e.g. https://100.96.0.1:6443); "" without K3s
    k3s_server_url: str = ""
    #: file holding the K3s agent token
    k3s_token_file: str = ""
    #: lifetime of the node certificates meshd signs; agents renew them over mTLS with a third left
    node_cert_ttl_s: float = 90 * 24 * 3600.0
    #: seconds a catalog signing key signs before the next one takes over
    catalog_key_rotate_s: float = CATALOG_KEY_ROTATE_S
    #: seconds the next catalog key is handed out before it signs, and the previous one accepted after
    catalog_key_overlap_s: float = CATALOG_KEY_OVERLAP_S
    #: seconds a signed catalog record stays valid (signed again a third of this before)
    catalog_record_ttl_s: float = CATALOG_RECORD_TTL_S
    #: file holding a join string registered at start (unlimited uses, revocable); "" for none
    bootstrap_token_file: str = ""
    #: how long a bootstrap join string stays valid after meshd first registers it
    bootstrap_token_ttl_s: float = 2 * 3600.0
    #: keep a short-lived join token published at ssm:<region>:<parameter> (meshd/publish.py); "" for none
    publish_join_token: str = ""
    #: lifetime of each published join token
    publish_join_token_ttl_s: float = 24 * 3600.0
    #: a new token is published when the current one has this long left (the old one works until then)
    publish_join_token_overlap_s: float = 6 * 3600.0
    #: labels of the published join tokens, given to the nodes they admit (e.g. mesh.k3s=agent)
    publish_join_token_labels: dict[str, str] = field(default_factory=dict)
    #: price table file (`meshctl costs --price-table`): cost gauges on /metrics; "" for none
    price_table: str = ""
    #: mirror the catalog into Consul (meshd/sync/consul_client.py: ConsulConfig); None: off
    consul: object | None = None
    #: mirror the catalog into Kubernetes Services (meshd/sync/kube_client.py: KubernetesConfig); None: off
    kubernetes: object | None = None


class Coordinator:
    def __init__(self, config: MeshdConfig, store: Store | None = None, clock: Clock = SYSTEM) -> None:
        self.config = config
        self.clock = clock
        state = Path(config.state_dir)
        try:
            state.mkdir(parents=True, exist_ok=True)
            os.chmod(state, 0o700)
        except OSError as e:
            raise StateError(f"cannot use state directory {state}: {e}") from e
        # One coordinator per state directory and per SQLite file: a second one would judge
        # leases on half the renewals and delete the services of nodes it never hears from.
        self._locks = [StateLock(state / "meshd.lock", "meshd", "stop it first, or give this meshd its own --state-dir")]
        try:
            db = sqlite_path(config.store, state) if store is None else None
            if db is not None and db.parent.resolve() != state.resolve():
                self._locks.append(StateLock(db.with_name(db.name + ".lock"), "meshd",
                                             f"stop it first; two meshd cannot share {db}"))
            self.ca = pki.CertificateAuthority.load_or_create(state)
            self.store = store or open_store(config.store, state, clock, config.etcd_ca, config.etcd_cert,
                                             config.etcd_key)
        except BaseException:
            self._release_locks()
            raise
        self.store_mark = StoreMark(self.store, state, clock)
        self.admission = Admission(self.store, pki.pin(self.ca.pem), clock)
        self.publisher = None  # meshd.publish.Publisher with --publish-join-token, made at start
        self.addresses = AddressPool(self.store, config.overlay_pool)
        self.catalog = Catalog(self.store)
        # a lone meshd on SQLite sees every renewal itself; replicas on etcd share them
        self.liveness = Liveness(self.store, LeaseConfig(config.lease_ttl_s, config.grace_s,
                                                         shared=not isinstance(self.store, SQLiteStore),
                                                         max_renewals_per_s=config.max_renewals_per_s), clock)
        rules = ClaimRules(vpc_ranges=tuple(config.vpc_ranges), overlay_pool=config.overlay_pool,
                           endpoint_ranges=tuple(config.endpoint_ranges))
        rules.nets("vpc"), rules.nets("endpoint")  # a bad range is a start-up error, not a join error
        self.nodes = Nodes(self.store, self.admission, self.addresses, self.ca, self.liveness, clock, rules,
                           cert_ttl_s=config.node_cert_ttl_s, max_pending_joins=config.max_pending_joins)
        self.admin_certs = AdminCerts(self.store, self.ca, clock)
        self.gossip = GossipKeys(self.store, clock, config.catalog_key_rotate_s, config.catalog_key_overlap_s,
                                 config.catalog_record_ttl_s)
        self.leases = LeaseLoop(self.liveness, self.nodes, self.catalog, self.gossip, self.store,
                                is_leader=lambda: self.is_leader)
        self.mirrors = Mirrors(self.store, self.catalog, self.nodes, config.consul, config.kubernetes, clock)
        self.callers = Callers(self.nodes.exists)
        self.tunnels = Tunnels(self.catalog, clock)
        self._server_key, self._server_cert = self._server_identity(state)
        self.server: grpc.aio.Server | None = None
        self.join_server: grpc.aio.Server | None = None
        self.admin_door: LocalDoor | None = None
        self.ports: dict[str, int] = {}
        self._tasks: list[asyncio.Task] = []
        self.election = None
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()

    def _server_identity(self, state: Path) -> tuple[bytes, bytes]:
        # A fresh server certificate each start: cheap, and names follow --advertise.
        # The chain carries the CA so a joining node can check it against its token's pin.
        key = pki.new_key()
        return pki.key_pem(key), self.ca.server_cert(key, self.config.advertise) + self.ca.pem

    def k3s_join(self) -> tuple[str, str] | None:
        if not self.config.k3s_server_url:
            return None
        try:
            token = Path(self.config.k3s_token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the K3s token file {self.config.k3s_token_file}: {e}") from e
        return self.config.k3s_server_url, token

    def _add_servicers(self, server: grpc.aio.Server) -> list[str]:
        self._admission_servicer = AdmissionServicer(
            self.admission, self.nodes, self.catalog, self.gossip, self.callers, self.ca, lambda: self.liveness.ttl,
            self.k3s_join, self.admin_certs)
        admission_pb2_grpc.add_AdmissionServiceServicer_to_server(self._admission_servicer, server)
        self.watch_slots = slots = WatchSlots(live_messages_per_s=self.config.max_watch_messages_per_s)
        # The watch methods send events encoded once for all streams (meshd.fanout): their serializer
        # passes those bytes through.
        _add_with_passthrough(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, CatalogServicer(
            self.catalog, self.nodes, self.gossip, self.callers, self.mirrors.errors, self._store_token, slots,
            self.tunnels),
            server, {"WatchServices": catalog_pb2.ServiceEvent})
        _add_with_passthrough(nodes_pb2_grpc.add_NodeServiceServicer_to_server, NodeServicer(
            self.nodes, self.catalog, self.callers, self.store.describe, str(self.addresses.network),
            self._store_token, self.store_alarms, slots, self.gossip), server, {"WatchNodes": nodes_pb2.NodeEvent})
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return [d.full_name for d in (admission_pb2.DESCRIPTOR.services_by_name["AdmissionService"],
                                      catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
                                      nodes_pb2.DESCRIPTOR.services_by_name["NodeService"])]

    def _store_token(self) -> str:
        return self.store_mark.identity.token

    def store_alarms(self) -> list[str]:
        """Alarms the store raised (etcd's NOSPACE), for Status and metrics."""
        return list(getattr(self.store, "alarms", []))

    async def _mark_store(self) -> None:
        while True:
            await asyncio.sleep(MARK_EVERY_S)
            try:
                await self.store_mark.mark()
                await self._check_alarms()
            except Exception as e:  # the store is away: marked next time
                log.debug("store mark skipped: %s", e)

    async def _check_alarms(self) -> None:
        check = getattr(self.store, "check_alarms", None)
        if check is None:
            return
        before = set(self.store_alarms())
        now = await check()
        from meshd import metrics
        for alarm in before | set(now):
            metrics.STORE_ALARMS.labels(alarm.split(":")[0]).set(1 if alarm in now else 0)
        for alarm in set(now) - before:
            log.error("store alarm: %s", alarm)

    def _server_options(self) -> list[tuple[str, object]]:
        # no SO_REUSEPORT: a second meshd on the same port must fail, not share the connections
        return [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", limits.GRPC_MAX_REQUEST_BYTES),
                ("grpc.max_concurrent_streams", limits.GRPC_MAX_CONCURRENT_STREAMS),
                ("grpc.keepalive_time_ms", 20000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10000)]

    def _join_server(self, pair) -> grpc.aio.Server:
        """The join port's own server: Join and nothing else."""
        server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=self._server_options())
        join = grpc.unary_unary_rpc_method_handler(
            self._admission_servicer.Join, request_deserializer=admission_pb2.JoinRequest.FromString,
            response_serializer=admission_pb2.JoinResponse.SerializeToString)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("mesh.v1.AdmissionService",
                                                                              {"Join": join}),))
        self.ports["join"] = _bind(server, self.config.join_listen, "--join-listen", grpc.ssl_server_credentials(pair))
        return server

    async def start(self) -> None:
        if self.config.await_import:
            await self._await_import()
        await self.store_mark.load()
        await self._check_alarms()
        await self.gossip.load()
        if self.config.bootstrap_token_file:
            await self._bootstrap_token(Path(self.config.bootstrap_token_file))
        if self.config.publish_join_token:
            from meshd.publish import from_config
            self.publisher = from_config(self.config.publish_join_token, self.admission,
                                         ttl_s=self.config.publish_join_token_ttl_s,
                                         overlap_s=self.config.publish_join_token_overlap_s,
                                         labels=dict(self.config.publish_join_token_labels), clock=self.clock,
                                         is_leader=lambda: self.is_leader)
        for what, addr in (("--listen", self.config.listen), ("--join-listen", self.config.join_listen)):
            if addr:
                check_port_free(addr, what)
        server = grpc.aio.server(interceptors=[ErrorInterceptor(self.admin_certs.revoked)],
                                 options=self._server_options())
        names = self._add_servicers(server)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        pair = [(self._server_key, self._server_cert)]
        if self.config.listen:
            self.ports["listen"] = _bind(server, self.config.listen, "--listen",
                                         grpc.ssl_server_credentials(pair, self.ca.pem, require_client_auth=True))
        if self.config.admin_socket:
            # The admin socket is a door that checks the peer's credentials (root only) and splices
            # admitted connections to the server's own socket in a 0700 directory (meshcore.localdoor).
            sock = Path(self.config.admin_socket)
            sock.parent.mkdir(parents=True, exist_ok=True)
            claim_socket(sock, "meshd", "--admin-socket")
            private = private_socket_path(sock)
            prepare_private_dir(private)
            old = os.umask(0o177)
            try:
                server.add_insecure_port(f"unix:{private}")
                await server.start()
            finally:
                os.umask(old)
            self.admin_door = LocalDoor(sock, private, root_only(), lambda c: metrics.ADMIN_SOCKET_REFUSED.inc(),
                                        "meshd admin socket")
            await self.admin_door.start(0o600)
        else:
            await server.start()
        self.server = server
        if self.config.join_listen:  # last: every refusal above leaves nothing serving behind
            self.join_server = self._join_server(pair)
            await self.join_server.start()
        for name in names + [""]:
            await _maybe_await(self.health.set(name, health_pb2.HealthCheckResponse.SERVING))
        if self.config.metrics:
            self.ports["metrics"] = self._serve_metrics()
        self._tasks.append(asyncio.create_task(self.leases.run(), name="leases"))
        self._tasks.append(asyncio.create_task(self._mark_store(), name="store-mark"))
        self._start_election()
        if self.publisher is not None:
            self._tasks.append(asyncio.create_task(self.publisher.run(), name="publish-join-token"))
        log.info("meshd serving: %s", ", ".join(f"{k}={v}" for k, v in self.ports.items()))

    async def _await_import(self, every_s: float = 2.0) -> None:
        """Until the store holds an imported mesh (meshd.store.snapshot): no identity of our own meanwhile."""
        from meshd.store.snapshot import importing
        waited = False
        while True:
            try:
                if not await importing(self.store):
                    return
            except Exception as e:  # etcd members still starting: keep waiting
                log.debug("store not ready yet: %s", e)
            if not waited:
                log.info("waiting for `meshd store import` into %s (--await-import)", self.store.describe)
                waited = True
            await asyncio.sleep(every_s)  # until imported or stopped (a signal cancels start-up)

    async def _bootstrap_token(self, path: Path) -> None:
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read bootstrap token file {path}: {e.strerror}") from None
        if await self.admission.ensure(token, ttl_s=self.config.bootstrap_token_ttl_s):
            log.info("registered the bootstrap join token from %s", path)

    # -- leadership -------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.election is None or self.election.is_leader

    def _start_election(self) -> None:
        """Replicas on etcd elect one leader for lease checks, key rotation and the catalog
        mirrors; a single meshd on SQLite leads alone, at once."""
        if isinstance(self.store, SQLiteStore):
            self.mirrors.start()
            return
        import socket
        import uuid
        from meshd.election import Election, ElectionConfig

        def changed(leading: bool) -> None:
            metrics.ELECTION_TRANSITIONS.inc()
            task = asyncio.create_task(self._mirror() if leading else self.mirrors.stop())
            self._tasks.append(task)
        self.election = Election(self.store, f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
                                 ElectionConfig(key="/election/meshd"), on_change=changed, clock=self.clock)
        self.election.start()

    # -- metrics and Prometheus discovery -------------------------------------------
    def _serve_metrics(self) -> int:
        from prometheus_client import REGISTRY

        from meshcore.metrics import build_info, serve_metrics
        build_info("meshd")
        global _current, _collector
        _current = self  # the process-wide registry reads the coordinator that serves it
        if _collector is None:
            _collector = metrics.CoordinatorCollector(lambda: _current)
            REGISTRY.register(_collector)
        loop = asyncio.get_running_loop()
        global _cost_collector
        if self.config.price_table and _cost_collector is None:
            async def both() -> tuple[list, list]:
                return (await _current.nodes.list())[0], (await _current.catalog.list())[0]

            _cost_collector = metrics.CostCollector(
                self.config.price_table, lambda: asyncio.run_coroutine_threadsafe(both(), loop).result(timeout=5))
            REGISTRY.register(_cost_collector)

        def http_sd(host: str) -> list[dict]:
            nodes = asyncio.run_coroutine_threadsafe(self.nodes.list(), loop).result(timeout=5)[0]
            return http_sd_targets(host, nodes)
        return serve_metrics(self.config.metrics, http_sd=http_sd)

    async def _mirror(self) -> None:
        self.mirrors.start()

    async def stop(self, grace: float = 1.0) -> None:
        if self.election is not None:
            await self.election.resign()
        await self.mirrors.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.join_server:
            await self.join_server.stop(grace)
            self.join_server = None
        door, self.admin_door = self.admin_door, None
        if door is not None:
            await door.stop()
        if self.server:
            await self.server.stop(grace)
            self.server = None
        if door is not None:
            remove_private_dir(door.private)
        try:
            await self.store_mark.mark(force=True)
        except Exception as e:
            log.debug("store mark at stop skipped: %s", e)
        await self.store.close()
        self._release_locks()

    def _release_locks(self) -> None:
        for lock in getattr(self, "_locks", []):
            lock.release()


def check_port_free(addr: str, what: str) -> None:
    """Refuse a listen address whose port another program holds, naming it (gRPC's own bind
    error is a traceback and a log line about "add_port")."""
    import socket

    from meshcore.metrics import split_hostport
    host, port = split_hostport(addr, f"{what} address")
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise ConfigError(f"cannot listen on {addr} ({what}): {e.strerror or e}") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"cannot listen on {addr} ({what}): port {port} is in use by another program "
                                  f"(another meshd?); stop it or choose another port") from None
            raise ConfigError(f"cannot listen on {addr} ({what}): {e.strerror}") from None


def _bind(server: grpc.aio.Server, addr: str, what: str, creds) -> int:
    try:
        return server.add_secure_port(addr, creds)
    except RuntimeError:
        raise ConfigError(f"cannot listen on {addr} ({what}): the address is in use or not on this machine") from None


async def _maybe_await(x):
    if asyncio.iscoroutine(x):
        await x


_current: Coordinator | None = None
_collector: metrics.CoordinatorCollector | None = None
_cost_collector: metrics.CostCollector | None = None


def http_sd_targets(meshd_host: str, nodes) -> list[dict]:
    """Prometheus HTTP service discovery: meshd itself (at the address Prometheus asked it
    on), then every node that is not gone and serves its agent's metrics on its mesh address."""
    from meshcore.defaults import NODE_STATE_NAMES
    groups = []
    if meshd_host:
        groups.append({"targets": [meshd_host], "labels": {"mesh_component": "meshd"}})
    for n in sorted(nodes, key=lambda n: n.name):
        if not n.metrics_port or not n.mesh_address or n.state == types_pb2.NODE_STATE_LEFT:
            continue
        host = f"[{n.mesh_address}]" if ":" in n.mesh_address else n.mesh_address
        groups.append({"targets": [f"{host}:{n.metrics_port}"],
                       "labels": {"mesh_component": "meshagent", "mesh_node": n.name,
                                  "mesh_node_state": NODE_STATE_NAMES.get(n.state, "unknown"),
                                  "mesh_cloud": n.cloud, "mesh_region": n.region}})
    return groups


class _Capture:
    """Stands in for the server while a generated add_*_to_server names its handlers."""

    def __init__(self) -> None:
        self.registered: dict[str, dict] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.registered[service] = handlers


def _add_with_passthrough(add, servicer, server: grpc.aio.Server, methods: dict) -> None:
    """add(servicer, server), except that `methods` (name -> response message class) also accept
    already encoded responses (bytes) and send them as they are."""
    from meshd.fanout import passthrough
    capture = _Capture()
    add(servicer, capture)
    for service, handlers in capture.registered.items():
        handlers = dict(handlers)
        for name, cls in methods.items():
            handlers[name] = handlers[name]._replace(response_serializer=passthrough(cls))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        server.add_registered_method_handlers(service, handlers)
