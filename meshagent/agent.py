"""meshagent: the daemon on every VM.

Start-up: load the identity from the state directory, or join with the
token (retrying with backoff while meshd is unreachable). Then, at once:
- the local API on a unix socket (meshctl on this VM),
- the DNS responder, answering from the live catalog copy,
- two watch streams (services, nodes) that resume from the last revision
  after any disconnect, with capped, jittered backoff,
- lease renewal every third of the lease TTL,
- anti-entropy: the services this node exposed are kept in the state
  directory and re-asserted whenever the catalog lacks them (meshd restarted
  on an old backup, or removed them while the node was unreachable).
The connection to meshd is logged once per change of state, not per retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from pathlib import Path

import grpc
from google.protobuf import json_format

from mesh.v1 import (admission_pb2, admission_pb2_grpc, agent_pb2_grpc, catalog_pb2, catalog_pb2_grpc,
                     nodes_pb2_grpc, types_pb2)
from meshagent.config import AgentConfig
from meshagent.identity import Identity, fetch_pinned_ca
from meshagent import metrics
from meshagent.gossip import AgentGossip, facts_of, load_config, save_config
from meshagent.localapi import AgentServicer
from meshagent.view import Catalog
from meshcore import pki
from meshcore.errors import StateError, Unauthenticated, Unavailable, from_code
from meshcore.jointoken import parse_token

log = logging.getLogger("meshagent")

# Codes after which retrying the same request cannot help.
FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
         grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.RESOURCE_EXHAUSTED}


def channel_options() -> list[tuple[str, object]]:
    return [("grpc.ssl_target_name_override", pki.SERVER_NAME),
            ("grpc.keepalive_time_ms", 15000), ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.max_reconnect_backoff_ms", 5000)]


def mtls_channel(target: str, ident: Identity) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(ident.ca_pem, ident.key_pem, ident.cert_pem)
    return grpc.aio.secure_channel(target, creds, options=channel_options())


class Backoff:
    def __init__(self, lo: float, hi: float, rng: random.Random) -> None:
        self.lo, self.hi, self.rng, self.cur = lo, hi, rng, lo

    def next(self) -> float:
        delay = self.cur * (0.5 + self.rng.random())  # jitter: reconnecting agents do not stampede
        self.cur = min(self.hi, self.cur * 2)
        return delay

    def reset(self) -> None:
        self.cur = self.lo


class Agent:
    def __init__(self, config: AgentConfig, rng: random.Random | None = None) -> None:
        self.config = config.validate()
        self.rng = rng or random.Random()
        self.catalog = Catalog()
        self.identity: Identity | None = None
        self.connected = False
        self.last_contact = 0.0
        self.dns_address = ""
        self.dns = None
        self._channel: grpc.aio.Channel | None = None
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task] = []
        self._tasks_early: list[asyncio.Task] = []  # started before the meshd connection
        self._reconnects = 0
        self._desired: dict[str, types_pb2.Service] = {}
        self.gossip: AgentGossip | None = None
        self.k3s = None
        self.health = None
        self.dataplane = None
        if self.config.wireguard:
            from meshagent.dataplane import DataPlane
            self.dataplane = DataPlane(self.state_dir, self.config.wireguard, self.config.wireguard_port,
                                       self.config.hub, self.config.mtu)
        self.left = False  # after a spot notice: no renewals, no re-asserting services
        self.catalog_stub: catalog_pb2_grpc.CatalogServiceStub | None = None
        self.catalog.services.listeners.append(self._gauge)

    def _gauge(self) -> None:
        metrics.CATALOG_SERVICES.set(len(self.catalog.services.items))
        metrics.CATALOG_REVISION.set(self.catalog.services.revision)

    # -- identity -------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return Path(self.config.state_dir)

    def facts(self) -> types_pb2.Node:
        c = self.config
        return types_pb2.Node(name=c.name, hostname=c.name, cloud=c.cloud, region=c.region, vpc_id=c.vpc_id,
                              vpc_cidr=c.vpc_cidr, private_address=c.private_address,
                              public_address=c.public_address, labels=c.labels,
                              gossip_port=self.gossip.node.port if self.gossip else 0,
                              wireguard_public_key=self.dataplane.public_key if self.dataplane else "",
                              wireguard_port=self.config.wireguard_port if self.dataplane else 0)

    async def join(self) -> Identity:
        token = self.config.token
        if not token:
            raise StateError(f"no identity in {self.state_dir} and no join token: "
                             f"start meshagent once with --token (from `meshctl token create` on the main node)")
        _, _, pin = parse_token(token)
        if pin is None:
            raise Unauthenticated("the join token has no CA pin: use the full token printed by `meshctl token create`")
        host, port = self.config.join_target()
        backoff = Backoff(self.config.backoff_min_s, self.config.backoff_max_s, self.rng)
        warned = False
        while True:
            try:
                ca_pem = await asyncio.to_thread(fetch_pinned_ca, host, port, pin)
                key = pki.new_key()
                csr = pki.make_csr(key, self.config.name)
                creds = grpc.ssl_channel_credentials(ca_pem)
                async with grpc.aio.secure_channel(f"{host}:{port}", creds, options=channel_options()) as ch:
                    resp = await admission_pb2_grpc.AdmissionServiceStub(ch).Join(
                        admission_pb2.JoinRequest(token=token, node=self.facts(), csr_pem=csr.decode()), timeout=10)
                break
            except (Unavailable, grpc.aio.AioRpcError) as e:
                if isinstance(e, grpc.aio.AioRpcError) and e.code() in FATAL:
                    raise from_code(e.code().name, f"join refused by meshd: {e.details()}") from None
                if not warned:
                    if isinstance(e, Unavailable) or e.code() == grpc.StatusCode.UNAVAILABLE:
                        log.warning("meshd at %s:%d is unreachable (%s); retrying until it answers", host, port,
                                    e if isinstance(e, Unavailable) else e.details())
                    else:
                        log.warning("join attempt failed (%s: %s); retrying", e.code().name, e.details())
                    warned = True
                await asyncio.sleep(backoff.next())
        ident = Identity(resp.node.id, resp.node.name, resp.node.mesh_address, self.config.coordinator,
                         pki.key_pem(key), resp.certificate_pem.encode(), resp.ca_pem.encode())
        ident.save(self.state_dir)
        save_config(self.state_dir / "gossip.json", resp.gossip)
        log.info("joined the mesh as %s (%s), mesh address %s", ident.name, ident.node_id, ident.mesh_address)
        return ident

    # -- desired services (anti-entropy) -----------------------------------------
    def _services_file(self) -> Path:
        return self.state_dir / "services.json"

    def _load_desired(self) -> None:
        path = self._services_file()
        if not path.exists():
            return
        try:
            items = json.loads(path.read_text())
            self._desired = {d["name"]: json_format.ParseDict(d, types_pb2.Service()) for d in items}
        except (OSError, ValueError, KeyError, json_format.ParseError) as e:
            raise StateError(f"{path} is unreadable ({e}): fix or remove it, then expose the services again") from e

    def _save_desired(self) -> None:
        data = [json_format.MessageToDict(s) for s in self._desired.values()]
        pki.write_file(self._services_file(), json.dumps(data, indent=2).encode(), private=True)

    def remember(self, svc: types_pb2.Service) -> None:
        want = types_pb2.Service(name=svc.name, port=svc.port, protocol=svc.protocol, tags=svc.tags)
        want.health.CopyFrom(svc.health)
        self._desired[svc.name] = want
        self._save_desired()

    async def _report_health(self, svc: types_pb2.Service, state: int) -> None:
        if self.left:
            return
        report = types_pb2.Service()
        report.CopyFrom(svc)
        report.health_state = state
        await self.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=report), timeout=10)

    def forget(self, name: str) -> None:
        if self._desired.pop(name, None) is not None:
            self._save_desired()

    async def reassert(self) -> None:
        """Expose again every desired service the catalog lacks or holds differently."""
        if self.left:
            return
        for name, want in list(self._desired.items()):
            have = self.catalog.services.items.get(name)
            if have is not None and have.node_id == self.identity.node_id and have.port == want.port \
                    and have.protocol == (want.protocol or types_pb2.PROTOCOL_TCP) and have.health == want.health:
                continue
            again = types_pb2.Service()
            again.CopyFrom(want)
            if want.health.WhichOneof("kind"):
                states = self.health.states if self.health else {}
                again.health_state = states.get(name, types_pb2.HEALTH_STATE_CRITICAL)
            try:
                await self.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=again), timeout=10)
                log.info("re-asserted service %s", name)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.ALREADY_EXISTS:
                    log.error("cannot re-assert service %s: %s", name, e.details())
                else:
                    raise

    # -- connection state -----------------------------------------------------------
    def _set_connected(self, up: bool, why: str = "") -> None:
        if up:
            self.last_contact = time.time()
        if up != self.connected:
            self.connected = up
            metrics.CONNECTED.set(1 if up else 0)
            if up:
                log.info("connected to meshd at %s", self.config.coordinator)
            else:
                self._reconnects += 1
                metrics.RECONNECTS.inc()
                log.warning("lost meshd at %s (%s); serving names from the local copy and reconnecting",
                            self.config.coordinator, why)

    async def _watch(self, kind: str) -> None:
        view = self.catalog.services if kind == "services" else self.catalog.nodes
        backoff = Backoff(self.config.backoff_min_s, self.config.backoff_max_s, self.rng)
        while True:
            try:
                request = types_pb2.WatchRequest(from_revision=view.revision, batch=True)
                if kind == "services":
                    stream = self.catalog_stub.WatchServices(request)
                else:
                    stream = self.node_stub.WatchNodes(request)
                async for ev in stream:
                    self._set_connected(True)
                    backoff.reset()
                    many = ev.services if kind == "services" else ev.nodes
                    if many:  # a batch of the current set
                        for obj in many:
                            view.apply(ev.type, obj, obj.revision)
                        if kind == "services" and self.gossip:
                            for record in ev.records:
                                self.gossip.publish(record)
                        continue
                    obj = ev.service if kind == "services" else ev.node
                    view.apply(ev.type, obj, ev.revision)
                    if kind == "services" and ev.record and self.gossip:
                        self.gossip.publish(ev.record)
                    if ev.type == types_pb2.EVENT_TYPE_SYNCED:
                        if kind == "services":
                            await self.reassert()
                        elif self.gossip:
                            await self.gossip.join_peers(list(view.items.values()), self.identity.node_id)
                why = "stream ended"
            except grpc.aio.AioRpcError as e:
                why = f"{e.code().name}: {e.details()}"
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("meshd refuses this node: %s", e.details())
            self._set_connected(False, why)
            await asyncio.sleep(backoff.next())

    async def _renew(self) -> None:
        interval = 5.0
        while not self.left:
            try:
                resp = await self.admission_stub.Renew(admission_pb2.RenewRequest(node=self.facts()), timeout=10)
                interval = max(0.2, resp.lease_ttl_s / 3)
                self.last_contact = time.time()
                if self.gossip and resp.gossip.keys and list(resp.gossip.keys) != list(self.gossip.cfg.keys):
                    self.gossip.update_keys(resp.gossip)
                    save_config(self.state_dir / "gossip.json", resp.gossip)
                if self.gossip:
                    await self.gossip.join_peers(list(self.catalog.nodes.items.values()), self.identity.node_id)
                    self.gossip.save_peers(self.state_dir / "peers.json")
            except grpc.aio.AioRpcError as e:
                log.debug("renew failed: %s", e.code().name)
                interval = min(interval, 2.0)
            await asyncio.sleep(interval)

    def counters(self) -> dict[str, int]:
        out = {"meshd_reconnects": self._reconnects, "desired_services": len(self._desired)}
        if self.dataplane is not None:
            out["dataplane_applies"] = self.dataplane.applied
            for kind in ("direct", "tunnel", "relay"):
                out[f"paths_{kind}"] = sum(1 for k in self.dataplane.paths.values() if k == kind)
        if self.gossip:
            out.update(self.gossip.stats())
        if self.dns is not None and hasattr(self.dns, "stats"):
            out.update({f"dns_{k}": int(v) for k, v in self.dns.stats().items()})
        return out

    def lookup(self, name: str):
        """DNS lookup: meshd's view, minus services of nodes gossip declared dead; before the
        first sync with meshd (it is away), what peers told us by push-pull."""
        svc = self.catalog.services.items.get(name)
        if svc is not None and svc.health_state == types_pb2.HEALTH_STATE_CRITICAL:
            return []  # failing its check: left out, as Consul's DNS leaves out critical instances
        if self.gossip is not None:
            if not self.catalog.services.synced:
                svc = self.gossip.services().get(name)
            elif svc is not None and svc.node_id in self.gossip.down():
                return []
        if svc is None or svc.health_state == types_pb2.HEALTH_STATE_CRITICAL:
            return []
        return self.catalog.targets(svc)

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        if Identity.exists(self.state_dir):
            self.identity = Identity.load(self.state_dir)
            if self.config.token:
                log.info("identity found in %s: the join token is not needed and was ignored", self.state_dir)
        else:
            self.identity = await self.join()
        self._load_desired()
        await self._start_gossip()
        self._channel = mtls_channel(self.config.coordinator, self.identity)
        self.catalog_stub = catalog_pb2_grpc.CatalogServiceStub(self._channel)
        self.node_stub = nodes_pb2_grpc.NodeServiceStub(self._channel)
        self.admission_stub = admission_pb2_grpc.AdmissionServiceStub(self._channel)
        if self.dataplane is not None:
            await self.dataplane.start(self.identity.node_id)
            self.catalog.nodes.listeners.append(
                lambda: self.dataplane.update(list(self.catalog.nodes.items.values())))
        await self._start_local_api()
        await self._start_dns()
        if self.config.metrics:
            from meshcore.metrics import serve_metrics
            serve_metrics(self.config.metrics)
        self._tasks = [asyncio.create_task(self._watch("services"), name="watch-services"),
                       asyncio.create_task(self._watch("nodes"), name="watch-nodes"),
                       asyncio.create_task(self._renew(), name="renew")]
        from meshagent.health import HealthChecker
        self.health = HealthChecker(lambda: dict(self._desired), self.identity.mesh_address, self._report_health)
        self._tasks.append(asyncio.create_task(self.health.run(), name="health"))
        if self.config.spot:
            from meshagent.spot import SpotConfig, SpotWatcher
            watcher = SpotWatcher(self._spot_notice, SpotConfig(endpoint=self.config.imds))
            self._tasks.append(asyncio.create_task(watcher.run(), name="spot-watch"))
        if self.config.k3s:
            await self._start_k3s()

    async def _start_k3s(self) -> None:
        from meshagent.k3s import K3sAgent, K3sConfig
        self.k3s = K3sAgent(self.identity.name, self.identity.mesh_address, self.config.labels,
                            K3sConfig(binary=self.config.k3s_binary))
        try:
            await self.k3s.start(self._channel)
        except Exception as e:  # the mesh works without K3s: say why, keep serving
            log.error("cannot join K3s: %s", e)
            self.k3s = None

    async def _spot_notice(self, notice) -> None:
        """The VM is about to be stopped or terminated: take our names away now.

        A stopped VM keeps its identity and desired services on disk and comes
        back under the same name when it starts again (its agent re-asserts them)."""
        self.left = True
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
        from meshcore.metrics import split_hostport
        host, port = split_hostport(self.config.gossip, "gossip address")
        profile = getattr(profiles, self.config.gossip_profile)()
        node = types_pb2.Node(mesh_address=self.identity.mesh_address, region=self.config.region,
                              cloud=self.config.cloud, labels=self.config.labels)
        self.gossip = AgentGossip(self.identity.node_id, self.identity.name, host, port, self.identity.mesh_address,
                                  cfg, facts_of(node), profile, self.rng)
        await self.gossip.start()
        self._tasks_early = [asyncio.create_task(self.gossip.join_saved_peers(self.state_dir / "peers.json"))]

    async def _start_local_api(self) -> None:
        import os
        sock = Path(self.config.socket)
        sock.parent.mkdir(parents=True, exist_ok=True)
        if sock.exists():
            sock.unlink()
        server = grpc.aio.server()
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(self), server)
        server.add_insecure_port(f"unix:{sock}")
        old = os.umask(0o117)
        try:
            await server.start()
        finally:
            os.umask(old)
        self._server = server

    async def _start_dns(self) -> None:
        if not self.config.dns:
            return
        from meshagent.dns import DnsConfig, DnsServer
        from meshcore.metrics import split_hostport
        from meshcore.hostdns import upstream_nameservers
        host, port = split_hostport(self.config.dns, "DNS address")
        # The host's resolvers as they were before `meshctl dns install` pointed them at us.
        upstreams = self.config.dns_upstreams
        if upstreams is None:
            upstreams = tuple(upstream_nameservers())
        # DNS metrics go to the process-wide registry the exporter serves (one agent per process).
        from prometheus_client import REGISTRY
        registry = REGISTRY if self.config.metrics else None
        self.dns = DnsServer(DnsConfig(host=host, port=port, upstreams=upstreams), self.lookup, registry)
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
        if self._server:
            await self._server.stop(0.5)
        if self._channel:
            await self._channel.close()

    async def leave(self) -> None:
        """Leave gracefully: this node's services leave the catalog at once."""
        await self.admission_stub.Leave(admission_pb2.LeaveRequest(), timeout=5)
        if self.gossip:
            await self.gossip.stop(leave=True)
            self.gossip = None
