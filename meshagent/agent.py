"""meshagent: the daemon on every VM, wired from parts with one job each.

    uplink.py     meshd: join, the two watch streams, lease renewal, connected state
    view.py       the catalog copy the watches feed, and the DNS lookup policy
    desired.py    this node's own services: services.json, re-asserted after SYNCED
    health.py     checks of this node's services; results exposed again
    gossip.py     SWIM membership and signed records among agents
    dataplane.py  WireGuard and routes from the node list (--wireguard)
    dns/          the DNS responder (answers from view.Catalog.lookup)
    localapi.py   meshctl on this VM (unix socket)
    spot.py, k3s.py  the spot interruption watch; K3s agent (--k3s)

Start-up: load the identity from the state directory, or join with the
token (retrying with backoff while meshd is unreachable). Then gossip, the
mTLS channel, the data plane, the local API, the DNS responder, and the
loops: the watches, renewal, health checks, and the spot watch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import replace
from pathlib import Path

import grpc

from mesh.v1 import admission_pb2, agent_pb2_grpc, types_pb2
from meshagent import metrics
from meshagent.config import AgentConfig
from meshagent.desired import Desired
from meshagent.facts import Facts, describe, discover, observed
from meshagent.gossip import AgentGossip, facts_of, load_config, save_config
from meshagent.health import HealthChecker
from meshagent.identity import Identity
from meshagent.localapi import AgentServicer
from meshagent.paths import path_health
from meshagent.uplink import Uplink
from meshagent.uplink import channel_options  # noqa: F401  (tests/integration/test_control.py imports it from here)
from meshagent.view import Catalog
from meshcore.clock import SYSTEM, Clock
from meshcore.errors import StateError, Unavailable
from meshcore import limits
from meshcore.jointoken import parse_token
from meshcore.metrics import split_hostport
from meshcore.localdoor import (
    LocalDoor, prepare_private_dir, private_socket_path, remove_private_dir, root_or_group,
)
from meshcore.statelock import StateLock, claim_socket
from meshcore.supervise import Supervisor

log = logging.getLogger("meshagent")


class Agent:
    def __init__(self, config: AgentConfig, rng: random.Random | None = None, clock: Clock = SYSTEM) -> None:
        self.config = config.validate()
        self.rng = rng or random.Random()
        self.clock = clock
        self.catalog = Catalog()
        #: what the machine says about itself, with the flags' overrides (see meshagent/facts)
        self.node_facts = Facts()
        self.identity: Identity | None = None
        self.dns_address = ""
        self.dns = None
        self._gossip: AgentGossip | None = None
        # facts through the instance: renewals carry the current ones (gossip port, WireGuard key)
        self.uplink = Uplink(self.config, self.catalog, lambda: self.facts(), self.rng, clock)
        self.uplink.on_record = self._gossip_record
        self.uplink.on_synced = self._synced
        self.uplink.on_renewed = self._renewed
        self.uplink.on_observed = self._observed
        self.health: HealthChecker | None = None
        self.desired = Desired(self.state_dir, self.catalog, self.uplink,
                               lambda: self.health.states if self.health else {})
        self._server: grpc.aio.Server | None = None
        self._door: LocalDoor | None = None
        self._tasks: list[asyncio.Task] = []
        self._tasks_early: list[asyncio.Task] = []  # started before the meshd connection
        # an unexpected error in a loop restarts it (and says so), never ends it silently
        self.supervisor = Supervisor(clock, self.config.backoff_min_s, self.config.backoff_max_s, rng=self.rng,
                                     on_failure=lambda name, _e: metrics.LOOP_FAILURES.labels(name).inc())
        self._lock: StateLock | None = None
        metrics.HEALTHY.set_function(lambda: 0.0 if self.supervisor.degraded() else 1.0)
        self.k3s = None
        self.dataplane = None
        if self.config.wireguard:
            from meshagent.dataplane import DataPlane
            self.dataplane = DataPlane(self.state_dir, self.config.wireguard, self.config.wireguard_port,
                                       self.config.hub, self.config.mtu)
        self.catalog.services.listeners.append(self._gauge)
        #: the port of the metrics endpoint on the mesh address (0: not served there), in the node's facts
        self.metrics_port = 0
        #: WireGuard counters by peer key and peer names by key, refreshed by the "wg-stats" loop
        self.wg_stats: dict[str, object] = {}
        self.wg_names: dict[str, str] = {}
        #: WireGuard key → when the data plane first had it as a peer (a new peer is not "down" yet)
        self._peer_since: dict[str, float] = {}

    def _serve_metrics(self) -> None:
        from prometheus_client import REGISTRY

        from meshcore.metrics import build_info, is_wildcard, serve_metrics, split_hostport
        global _current, _collector
        build_info("meshagent")
        _current = self  # the process-wide registry reads the agent that serves it
        if _collector is None:
            _collector = metrics.AgentCollector(lambda: _current)
            REGISTRY.register(_collector)
        port = serve_metrics(self.config.metrics)
        host, _ = split_hostport(self.config.metrics, "metrics address")
        # Prometheus finds the agent through meshd at <mesh address>:<port>: only when it listens there
        if is_wildcard(host) or host.strip("[]") == self.identity.mesh_address:
            self.metrics_port = port

    async def _read_wg_stats(self, interval_s: float = 5.0) -> None:
        while True:
            stats = await self.dataplane.peer_stats()
            names = {n.wireguard_public_key: n.name for n in self.catalog.nodes.items.values()}
            self.wg_stats, self.wg_names = stats, names
            await asyncio.sleep(interval_s)

    def _gauge(self) -> None:
        metrics.CATALOG_SERVICES.set(len(self.catalog.services.items))
        metrics.CATALOG_REVISION.set(self.catalog.services.revision)

    @property
    def gossip(self) -> AgentGossip | None:
        return self._gossip

    @gossip.setter
    def gossip(self, gossip: AgentGossip | None) -> None:
        self._gossip = gossip
        self.catalog.peers = gossip  # the lookup policy follows whatever gossip the agent has

    # The parts' state under the names in-process callers (control-plane tests, bench) use.
    @property
    def catalog_stub(self):
        return self.uplink.catalog_stub

    @property
    def admission_stub(self):
        return self.uplink.admission_stub

    @property
    def _channel(self) -> grpc.aio.Channel | None:
        return self.uplink.channel

    @property
    def _reconnects(self) -> int:
        return self.uplink.reconnects

    def remember(self, svc: types_pb2.Service) -> None:
        self.desired.remember(svc)

    @property
    def state_dir(self) -> Path:
        return Path(self.config.state_dir)

    def labels(self) -> dict[str, str]:
        """Labels from the facts (GPUs, instance type, zone), then the user's, which win."""
        return {**self.node_facts.labels(), **self.config.labels}

    def facts(self) -> types_pb2.Node:
        f = self.node_facts
        return types_pb2.Node(name=self.config.name, hostname=self.config.name, cloud=f.cloud, region=f.region,
                              vpc_id=f.vpc_id, vpc_cidr=f.vpc_cidr, private_address=f.private_address,
                              public_address=f.public_address, labels=self.labels(),
                              gossip_port=self.gossip.node.port if self.gossip else 0,
                              metrics_port=self.metrics_port,
                              wireguard_public_key=self.dataplane.public_key if self.dataplane else "",
                              wireguard_port=self.config.wireguard_port if self.dataplane else 0,
                              path_report=self.path_report())

    def path_report(self) -> types_pb2.PathReport | None:
        """The data plane's path kinds and how many peers of each are down (None without one)."""
        dp = self.dataplane
        if dp is None or not dp.applied:
            return None
        now = self.clock.wall()
        keys = {key for _, key in dp.routes_to.values() if key}
        self._peer_since = {k: self._peer_since.get(k, now) for k in keys}  # forget peers that went away
        handshakes = {k: float(getattr(st, "last_handshake_s", 0) or 0) for k, st in self.wg_stats.items()}
        health = path_health(dp.routes_to, handshakes, self._peer_since, now)
        return types_pb2.PathReport(kinds=[types_pb2.PathReport.Kind(kind=k, down=d) for k, d in sorted(health.items())])

    async def discover_facts(self, gpus: bool = True) -> Facts:
        c = self.config
        found = await asyncio.to_thread(discover, c.imds, c.facts_timeout_s, gpus=gpus and c.gpus,
                                        nvidia_smi=c.nvidia_smi)
        if not gpus and self.node_facts.gpus is not None:  # GPUs do not come and go; keep what start found
            found = replace(found, gpus=self.node_facts.gpus,
                            sources={**found.sources, "gpus": self.node_facts.sources.get("gpus", "")})
        return found.with_overrides(cloud=c.cloud, region=c.region, vpc_id=c.vpc_id, vpc_cidr=c.vpc_cidr,
                                    private_address=c.private_address, public_address=c.public_address)

    async def refresh_facts(self) -> None:
        """Look again, now and then, at what can change while the VM runs (a new public address)."""
        while True:
            await asyncio.sleep(self.config.facts_refresh_s)
            try:
                found = await self.discover_facts(gpus=False)
            except Exception as e:  # discovery must never end the agent
                log.warning("facts refresh failed: %s", e)
                continue
            found = observed(found, self.node_facts.observed_address)
            if found != self.node_facts:
                log.info("facts changed: %s (was %s); the next renewal carries them",
                         describe(found), describe(self.node_facts))
                self.node_facts = found

    def _observed(self, addr: str) -> None:
        before = self.node_facts
        self.node_facts = observed(before, addr)
        if before.observed_address and addr and before.observed_address.rsplit(":", 1)[0] != addr.rsplit(":", 1)[0]:
            log.warning("meshd now sees this node at %s (was %s): its public address or NAT mapping changed",
                        addr, before.observed_address)
        elif not before.observed_address and self.node_facts.nat == "yes":
            log.info("meshd sees this node at %s, an address it does not have: it sits behind NAT", addr)

    async def join(self) -> Identity:
        ident, gossip = await self.uplink.join()
        save_config(self.state_dir / "gossip.json", gossip)
        return ident

    # -- what the uplink hears, passed on -------------------------------------------
    def _gossip_record(self, raw: bytes) -> None:
        if self.gossip:
            self.gossip.publish(raw)

    async def _synced(self, kind: str) -> None:
        if kind == "services":
            await self.desired.reassert(self.identity.node_id)
        elif self.gossip:
            await self.gossip.join_peers(list(self.catalog.nodes.items.values()), self.identity.node_id)

    async def _renewed(self, resp: admission_pb2.RenewResponse) -> None:
        # meshd's view may lack our services without any reconnect (it judged the node gone
        # past its grace period, or lost them): compare at every renewal, not only after SYNCED
        if self.catalog.services.synced:
            await self.desired.reassert(self.identity.node_id)
        if not self.gossip:
            return
        if resp.gossip.keys and (list(resp.gossip.keys) != list(self.gossip.cfg.keys)
                                 or list(resp.gossip.catalog_keys) != list(self.gossip.cfg.catalog_keys)):
            self.gossip.update_keys(resp.gossip)
            save_config(self.state_dir / "gossip.json", resp.gossip)
        self.gossip.publish_resigned(resp.records)  # after the keys: they may be signed with a new one
        await self.gossip.join_peers(list(self.catalog.nodes.items.values()), self.identity.node_id)
        self.gossip.save_peers(self.state_dir / "peers.json")

    def counters(self) -> dict[str, int]:
        out = {"meshd_reconnects": self.uplink.reconnects, "desired_services": len(self.desired.services),
               "loop_failures": sum(self.supervisor.failures.values())}
        if self.dataplane is not None:
            out["dataplane_applies"] = self.dataplane.applied
            for kind in ("direct", "tunnel", "relay"):
                out[f"paths_{kind}"] = sum(1 for k in self.dataplane.paths.values() if k == kind)
        if self.gossip:
            out.update(self.gossip.stats())
        if self.dns is not None and hasattr(self.dns, "stats"):
            out.update({f"dns_{k}": int(v) for k, v in self.dns.stats().items()})
        return out

    # -- lifecycle ------------------------------------------------------------------
    def health_line(self) -> str:
        """"ok", or "degraded: ..." while a background loop restarts after an unexpected error."""
        return self.supervisor.health()

    def _forget_token(self) -> None:
        """Once joined, the join token is of no more use here: drop it (and its file, when asked)."""
        self.config.token = ""
        path = Path(self.config.token_file) if self.config.token_file else None
        if self.config.remove_token_file and path is not None and path.exists():
            try:
                path.unlink()
                log.info("joined: removed the join token file %s", path)
            except OSError as e:
                log.warning("cannot remove the join token file %s: %s", path, e.strerror)

    async def start(self) -> None:
        self._lock = StateLock(self.state_dir / "agent.lock", "meshagent",
                               "stop it first, or give this agent its own --state-dir")
        claim_socket(Path(self.config.socket), "meshagent", "--socket")  # before joining, not after
        if Identity.exists(self.state_dir):
            self.identity = Identity.load(self.state_dir)
            if self.config.token:
                log.info("identity found in %s: the join token is not needed and was ignored", self.state_dir)
            await self._check_same_mesh()
            if self.identity.coordinator and self.identity.coordinator != self.config.coordinator:
                log.warning("--coordinator %s differs from %s, where this node joined (%s): using %s",
                            self.config.coordinator, self.identity.coordinator, self.state_dir / "node.json",
                            self.config.coordinator)
        elif self.config.token:
            parse_token(self.config.token)  # a mistyped token is said before anything else happens
        self.node_facts = await self.discover_facts()
        if self.identity is None:
            self.identity = await self.join()
        self._forget_token()
        self.desired.load()
        await self._start_gossip()
        self.uplink.connect(self.identity)
        if self.dataplane is not None:
            await self.dataplane.start(self.identity.node_id)
            self.catalog.nodes.listeners.append(
                lambda: self.dataplane.update(list(self.catalog.nodes.items.values())))
        self.health = HealthChecker(lambda: dict(self.desired.services), self.identity.mesh_address,
                                    self.desired.report_health, self.clock)
        await self._start_local_api()
        await self._start_dns()
        if self.config.metrics:
            self._serve_metrics()
        spawn = self.supervisor.spawn
        self._tasks = [spawn("watch-services", lambda: self.uplink.watch("services")),
                       spawn("watch-nodes", lambda: self.uplink.watch("nodes")),
                       spawn("renew", self.uplink.renew),
                       spawn("health", self.health.run),
                       spawn("facts", self.refresh_facts)]
        if self.dataplane is not None:
            self._tasks.append(spawn("wg-stats", self._read_wg_stats))
        if self.config.spot and self.config.imds:
            from meshagent.spot import SpotConfig, SpotWatcher
            watcher = SpotWatcher(self._spot_notice, SpotConfig(endpoint=self.config.imds))
            self._tasks.append(spawn("spot-watch", watcher.run))
        if self.config.k3s:
            await self._start_k3s()

    async def _check_same_mesh(self) -> None:
        """Refuse an identity from another mesh: meshd would refuse every call, and the agent
        would serve an empty copy without a word. Unknown while meshd is away (checked later)."""
        from meshagent.identity import server_ca_pins
        from meshcore import pki
        host, port = self.config.join_target()
        try:
            pins = await asyncio.to_thread(server_ca_pins, host, port, 3.0)
        except Unavailable as e:
            log.debug("cannot check meshd's CA at start: %s", e)
            return
        if pins and pki.pin(self.identity.ca_pem) not in pins:
            raise StateError(
                f"the identity in {self.state_dir} belongs to another mesh: meshd at {host}:{port} has another CA. "
                f"Remove {self.state_dir} and join with a token from this mesh, or point --coordinator at the mesh "
                f"this node joined ({self.identity.coordinator})")

    async def _start_k3s(self) -> None:
        from meshagent.k3s import K3sAgent, K3sConfig
        self.k3s = K3sAgent(self.identity.name, self.identity.mesh_address, self.labels(),
                            K3sConfig(binary=self.config.k3s_binary))
        try:
            await self.k3s.start(self.uplink.channel)
        except Exception as e:  # the mesh works without K3s: say why, keep serving
            log.error("cannot join K3s: %s", e)
            self.k3s = None

    async def _spot_notice(self, notice) -> None:
        """The VM is about to be stopped or terminated: take our names away now.

        A stopped VM keeps its identity and desired services on disk and comes
        back under the same name when it starts again (its agent re-asserts them)."""
        self.uplink.left = True
        try:
            await self.leave()
        except grpc.aio.AioRpcError as e:
            log.error("spot leave could not reach meshd (%s); peers will detect the node's end", e.code().name)

    async def _start_gossip(self) -> None:
        if not self.config.gossip:
            return
        cfg = load_config(self.state_dir / "gossip.json")
        if cfg is None or not cfg.keys:
            log.warning("no gossip keyring in %s (joined with an older meshd?): gossip is off", self.state_dir)
            return
        from meshcore.gossip import profiles
        host, port = split_hostport(self.config.gossip, "gossip address")
        profile = getattr(profiles, self.config.gossip_profile)()
        node = types_pb2.Node(mesh_address=self.identity.mesh_address, region=self.node_facts.region,
                              cloud=self.node_facts.cloud, labels=self.labels())
        self.gossip = AgentGossip(self.identity.node_id, self.identity.name, host, port, self.identity.mesh_address,
                                  cfg, facts_of(node), profile, self.rng, self.clock, identity=self.identity)
        await self.gossip.start()
        self._tasks_early = [asyncio.create_task(self.gossip.join_saved_peers(self.state_dir / "peers.json"))]

    async def _start_local_api(self) -> None:
        sock = Path(self.config.socket)
        sock.parent.mkdir(parents=True, exist_ok=True)
        claim_socket(sock, "meshagent", "--socket")
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", limits.LOCAL_API_MAX_REQUEST_BYTES)])
        servicer = AgentServicer(self.uplink, self.desired, self.catalog, self.health,
                                 node_id=lambda: self.identity.node_id if self.identity else "",
                                 dns_address=lambda: self.dns_address, counters=self.counters,
                                 facts=lambda: self.node_facts, dataplane=lambda: self.dataplane,
                                 health_line=self.health_line)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
        # The server listens on a private socket in a 0700 directory; the public socket is a door
        # that admits root and the `mesh` group by the peer's credentials (SO_PEERCRED) and splices
        # (meshcore.localdoor). Its mode is in place when it is bound, not after: 0660, group `mesh`.
        private = private_socket_path(sock)
        prepare_private_dir(private)
        old = os.umask(0o177)
        try:
            server.add_insecure_port(f"unix:{private}")
        finally:
            os.umask(old)
        await server.start()
        self._server = server
        self._door = LocalDoor(sock, private, root_or_group(SOCKET_GROUP), lambda c: metrics.LOCAL_API_REFUSED.inc(),
                               "agent socket")
        await self._door.start(0o660)
        restrict_socket(sock)

    async def _start_dns(self) -> None:
        if not self.config.dns:
            return
        from meshagent.dns import DnsConfig, DnsServer
        from meshcore.hostdns import upstream_nameservers
        host, port = split_hostport(self.config.dns, "DNS address")
        # The host's resolvers as they were before `meshctl dns install` pointed them at us.
        upstreams = self.config.dns_upstreams
        if upstreams is None:
            upstreams = tuple(upstream_nameservers())
        # DNS metrics go to the process-wide registry the exporter serves (one agent per process).
        registry = None
        if self.config.metrics:
            from prometheus_client import REGISTRY
            registry = REGISTRY
        self.dns = DnsServer(DnsConfig(host=host, port=port, upstreams=upstreams), self.catalog.lookup, registry,
                             clock=self.clock)
        await self.dns.start()
        self.dns_address = f"{host}:{self.dns.port}"
        self.catalog.services.listeners.append(self.dns.invalidate)
        if self.gossip:
            self.gossip.listeners.append(self.dns.invalidate)

    async def stop(self) -> None:
        if self.k3s is not None:
            await self.k3s.stop()
        if self.dataplane is not None:
            await self.dataplane.stop()
        for t in self._tasks + self._tasks_early:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._tasks_early, return_exceptions=True)
        if self.dns:
            await self.dns.stop()
        if self.gossip:
            await self.gossip.stop(leave=False)  # a restart keeps the names; a dead node is detected
        door, self._door = self._door, None
        if door is not None:
            await door.stop()
        if self._server:
            await self._server.stop(0.5)
        if door is not None:
            remove_private_dir(door.private)
        await self.uplink.close()
        if self._lock is not None:
            self._lock.release()

    async def leave(self) -> None:
        """Leave gracefully: this node's services leave the catalog at once."""
        await self.uplink.leave()
        if self.gossip:
            await self.gossip.stop(leave=True)
            self.gossip = None


#: the group whose members (besides root) may use the agent's local API
SOCKET_GROUP = "mesh"


def restrict_socket(path: Path) -> None:
    """Mode 0660, group `mesh` when that group exists (else root's only)."""
    import grp
    try:
        gid = grp.getgrnam(SOCKET_GROUP).gr_gid
    except KeyError:
        gid = -1
    if gid >= 0 and os.geteuid() == 0:
        os.chown(path, -1, gid)
    os.chmod(path, 0o660)


_current: Agent | None = None
_collector: metrics.AgentCollector | None = None
