"""Simulated agents for the meshd-at-fleet-scale figures, in one or several load processes.

A load process (`python -m bench.fleet`, driven over its stdin/stdout, one JSON
line per step) runs a slice of the fleet; `run_fleet` starts enough of them
for the fleet (AGENTS_PER_PROCESS each: one Python process cannot drive
5,000 mTLS channels and 10,000 streams on its own) and combines what they
measured. Every agent:

1. joins (its own key and CSR, the CA checked against the token's pin, Join
   over TLS; the identity kept in memory; a join meshd refuses for load is
   tried again after the wait meshd suggests, as the agent does) and renews
   its lease from then on as an agent does (every third of the TTL meshd
   grants, which grows with the fleet: meshd.leases), while the rest of the
   fleet is still joining;
2. once every agent of the fleet has joined, arrives: opens both watch
   streams (services, nodes; batch mode) at ARRIVALS_PER_S fleet-wide;
3. renews, exposes a service now and then (the
   catalog changes CHANGES_PER_S times a second fleet-wide, every change to
   every stream) and sometimes lists the catalog.

Agent i talks to replica i % len(coordinators) (its joins and its mTLS
channel), as agents behind a balancer spread over the replicas.

Figures: the latency of the probe's renewals (PROBE_AGENTS agents of the fleet in a
process of their own, renewing PROBE_RPCS_PER_S times a second in all) and, from the same
process at the same rate, of health checks of an idle gRPC server (IDLE_SERVER, the anchor);
apart, the latency of every Renew, Expose and ListServices of the load processes, during a
measurement window that opens 5 s after every stream is synced (or the sync
timed out, SYNC_TIMEOUT_S after the last arrival); for each catalog change made
in the window, the time from its Expose being sent until every services stream of
the fleet that held the whole set when the window opened received it (failures
apart: not everywhere DELIVERY_GRACE_S after the window); the time from the first
arrival until every stream holds the whole set; distinct nodes any stream saw UNREACHABLE (any is meshd's doing:
every agent renews three times per lease); join latencies (from the first
try, suggested waits included), failures (never joined within the phase limit)
and throttled joins (refusals for load that were tried again), apart; the most
frequent reasons joins failed, and those of joins the agent tries again (as it does).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable

import grpc

from mesh.v1 import admission_pb2, admission_pb2_grpc, catalog_pb2, catalog_pb2_grpc, nodes_pb2_grpc, types_pb2
from meshagent.config import AgentConfig
from meshagent.identity import Identity, fetch_pinned_ca
from meshagent.pushback import join_retry
from meshagent.uplink import FIRST_RENEW_S, JITTER, RenewSchedule, channel_options, mtls_channel
from meshcore import pki
from meshcore.backoff import Backoff
from meshcore.jointoken import parse_token

ARRIVALS_PER_S = 50.0  # agents opening their watch streams per second, fleet-wide
CHANGES_PER_S = 2.0  # catalog changes per second, fleet-wide
JOIN_CONCURRENCY = 16  # joins in flight per load process
JOIN_TIMEOUT_S = 60.0
JOIN_PHASE_LIMIT_S = 300.0  # agents not joined by then are failures (they never arrive)
RPC_TIMEOUT_S = 30.0
AGENTS_PER_PROCESS = 1000
#: agents of the fleet in a process of their own that, while measuring, also renew at PROBE_RPCS_PER_S
#: in all: a client whose event loop is idle, as every real agent's is (one per VM), so its
#: latencies are meshd's (and the machine's), not those of a load process driving 1,000 agents
PROBE_AGENTS = 10
PROBE_RPCS_PER_S = 20.0
#: after the measurement window, how long a change made in it may still take to reach every
#: stream before it counts as undelivered
DELIVERY_GRACE_S = 5.0


#: the anchor: a gRPC server with nothing to do (the standard health service), in a process of
#: its own on the same machine, which the probe process calls as often as it renews and in the
#: same window: what an RPC costs on this machine at that moment, meshd's work apart
IDLE_SERVER = """
import grpc, uvloop
from grpc_health.v1 import health, health_pb2_grpc
async def main():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    await server.start()
    await server.wait_for_termination()
uvloop.run(main())
"""


def arrival_span_s(n: int) -> float:
    """Seconds from the first agent's arrival to the last's."""
    return (n - 1) / ARRIVALS_PER_S


def _reason(e: BaseException) -> str:
    """Why a join failed, as one bounded line: the gRPC status and its message."""
    why = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else repr(e)
    return why[:160]


async def join_in_memory(join_address: str, coordinator: str, token: str, name: str,
                         slot: asyncio.Semaphore | None = None, rng: random.Random | None = None,
                         throttled: Callable[[float], None] = lambda wait_s: None,
                         retried: Callable[[str], None] = lambda why: None) -> Identity:
    """A simulated agent's join, as meshagent's uplink does it, with the identity kept in memory: a
    real agent writes it to its own disk, and thousands of fsyncs in one load process would stall
    every other agent there (late renewals that would be the load generator's, not meshd's).
    A failed join is answered as the agent answers it (`meshagent.pushback.join_retry`): a join
    meshd refuses for load is tried again after the wait it suggests (`throttled(wait_s)` is told
    each time), one that failed otherwise but not for good (lost its races with concurrent joins)
    after the agent's backoff (`retried(why)`). `slot`, held by the caller, is let go while waiting."""
    host, port = join_address.rsplit(":", 1)
    _, _, pin = parse_token(token)
    backoff = Backoff(AgentConfig.backoff_min_s, AgentConfig.backoff_max_s, JITTER, rng or random.Random())
    ca_pem = await asyncio.to_thread(fetch_pinned_ca, host, int(port), pin)
    key = pki.new_key()
    csr = pki.make_csr(key, name)
    request = admission_pb2.JoinRequest(token=token, node=types_pb2.Node(name=name, hostname=name),
                                        csr_pem=csr.decode())
    async with grpc.aio.secure_channel(join_address, grpc.ssl_channel_credentials(ca_pem),
                                       options=channel_options()) as ch:
        stub = admission_pb2_grpc.AdmissionServiceStub(ch)
        while True:  # bounded by the join phase's limit, which cancels agents still joining
            try:
                resp = await stub.Join(request, timeout=JOIN_TIMEOUT_S)
                break
            except grpc.aio.AioRpcError as e:
                decided = join_retry(e, backoff)
                if decided is None:
                    raise
                wait, pushed = decided
                if pushed:
                    throttled(wait)
                else:
                    retried(_reason(e))
                if slot is not None:
                    slot.release()
                try:
                    await asyncio.sleep(wait)
                finally:
                    if slot is not None:
                        await slot.acquire()
    return Identity(resp.node.id, resp.node.name, resp.node.mesh_address, coordinator, pki.key_pem(key),
                    resp.certificate_pem.encode(), resp.ca_pem.encode())


class Slice:
    """Agents first..first+count-1 of a fleet of n, in this process."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.n = spec["n"]
        self.first, self.count = spec["first"], spec["count"]
        self.latencies: list[float] = []
        self.errors = 0
        self.measuring = False
        self.stop = asyncio.Event()
        self.go = asyncio.Event()
        self.arrive_at = 0.0
        self.synced = 0
        self.all_synced = asyncio.Event()
        self.unreachable: set[str] = set()
        self.join_ms: list[float] = []
        self.ids: list[str] = []  # node ids of the agents that joined
        self.join_failures = 0
        self.join_errors: collections.Counter[str] = collections.Counter()  # why joins failed
        self.join_retries: collections.Counter[str] = collections.Counter()  # joins tried again, and why
        self.join_throttled = 0  # joins meshd refused for load, each tried again after its suggested wait
        self.agents_throttled = 0  # agents refused for load at least once
        self.joined = 0
        self.joined_ids: set[int] = set()  # joined, or refused (done either way)
        self.late = False  # the join phase hit its limit
        self.all_joined = asyncio.Event()
        self.channels: list[grpc.aio.Channel] = []
        self.lease_ttl_s = 0  # the TTL meshd granted in the last renewal answer
        self.renewers: list = []  # each joined agent's AdmissionService stub
        self.probe_latencies: list[float] = []
        self.probe_errors = 0
        self.idle_latencies: list[float] = []  # the probe's calls to the idle server (IDLE_SERVER)
        self.idle_errors = 0
        self.opened = False  # the measurement window has opened
        self.service_streams = 0  # services streams of this slice that held the whole set when it opened
        self.exposed: list[tuple[int, float]] = []  # (revision, wall time the Expose was sent) while measuring
        self.receipts: dict[int, list] = {}  # revision of a live change -> [streams, first, last wall time]
        self.newest = 0  # the newest revision any services stream of the slice received

    async def timed(self, call):
        """The call's answer (None if it failed), its latency and failure counted while measuring."""
        t0 = time.perf_counter()
        try:
            resp = await call
        except grpc.aio.AioRpcError:
            if self.measuring:
                self.errors += 1
            return None
        if self.measuring:
            self.latencies.append((time.perf_counter() - t0) * 1000)
        return resp

    async def watch(self, stream, services: bool) -> None:
        counted = False  # a services stream that held the whole set before the window opened
        try:
            async for ev in stream:
                if counted and ev.type == types_pb2.EVENT_TYPE_PUT:  # live changes: one, or what waited
                    now = time.time()
                    for rev in [ev.revision] if ev.HasField("service") else [s.revision for s in ev.services]:
                        r = self.receipts.setdefault(rev, [0, now, now])
                        r[0] += 1
                        r[2] = now
                if services:
                    self.newest = max(self.newest, ev.revision)
                if ev.type == types_pb2.EVENT_TYPE_PUT and hasattr(ev, "nodes"):
                    for node in list(ev.nodes) + ([ev.node] if ev.HasField("node") else []):
                        if node.state == types_pb2.NODE_STATE_UNREACHABLE:
                            self.unreachable.add(node.id)
                if ev.type == types_pb2.EVENT_TYPE_SYNCED:
                    self.synced += 1
                    if services and not self.opened:
                        counted = True
                        self.service_streams += 1
                    if self.synced == 2 * (self.count - self.join_failures):
                        self.all_synced.set()
        except grpc.aio.AioRpcError:
            pass

    def _joined_one(self, i: int) -> None:
        self.joined_ids.add(i)
        self.joined += 1
        if self.joined == self.count:
            self.all_joined.set()

    async def agent(self, i: int, sem: asyncio.Semaphore) -> None:
        coords, joins = self.spec["coordinators"], self.spec["join_addresses"]
        target = i % len(coords)
        refused = 0

        def throttled(_wait_s: float) -> None:
            nonlocal refused
            refused += 1
            self.join_throttled += 1
            if refused == 1:
                self.agents_throttled += 1

        def retried(why: str) -> None:
            self.join_retries[why] += 1
        async with sem:
            t0 = time.perf_counter()
            try:
                ident = await join_in_memory(joins[target], coords[target], self.spec["token"], f"sim-{i:05d}",
                                             sem, random.Random(i), throttled, retried)
            except Exception as e:  # refused or timed out: counted; this agent never arrives
                self.join_failures += 1
                self.join_errors[_reason(e)] += 1
                self._joined_one(i)
                return
            self.join_ms.append((time.perf_counter() - t0) * 1000)
            self.ids.append(ident.node_id)
        self._joined_one(i)
        ch = mtls_channel(coords[target], ident)
        self.channels.append(ch)
        adm = admission_pb2_grpc.AdmissionServiceStub(ch)
        self.renewers.append(adm)
        cat = catalog_pb2_grpc.CatalogServiceStub(ch)
        nodes = nodes_pb2_grpc.NodeServiceStub(ch)
        rng = random.Random(i)
        renewing = asyncio.create_task(self.renew(i, rng, adm, cat))
        streams, watchers = [], []
        try:
            await self.go.wait()
            await asyncio.sleep(max(0.0, self.arrive_at + i / ARRIVALS_PER_S - time.time()))
            streams = [cat.WatchServices(types_pb2.WatchRequest(batch=True)),
                       nodes.WatchNodes(types_pb2.WatchRequest(batch=True))]
            watchers = [asyncio.create_task(self.watch(s, k == 0)) for k, s in enumerate(streams)]
            await self.stop.wait()
        finally:
            renewing.cancel()
            for s in streams:
                s.cancel()
            await asyncio.gather(renewing, *watchers, return_exceptions=True)

    async def renew(self, i: int, rng: random.Random, adm, cat) -> None:
        """Renew as the agent does: every third of the TTL meshd granted last (less a little at
        random); the first renewal comes within FIRST_RENEW_S of the join."""
        interval, schedule = FIRST_RENEW_S, RenewSchedule()
        await asyncio.sleep(rng.random() * interval)
        changes = 0
        while not self.stop.is_set():
            resp = await self.timed(adm.Renew(admission_pb2.RenewRequest(node=types_pb2.Node()),
                                              timeout=RPC_TIMEOUT_S))
            if resp is not None:
                self.lease_ttl_s = resp.lease_ttl_s
                interval = schedule.renewed(resp.lease_ttl_s)
            else:
                interval = schedule.failed()
            if self.go.is_set() and rng.random() < CHANGES_PER_S * interval / self.n:
                changes += 1
                sent, newest = time.time(), self.newest
                resp = await self.timed(cat.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(
                    name=f"load-{i}-{changes % 3}", port=8000 + changes % 3)), timeout=RPC_TIMEOUT_S))
                # a change is newer than anything received before it was sent; the same service
                # exposed again changes nothing and answers with its old revision
                if resp is not None and self.measuring and resp.service.revision > newest:
                    self.exposed.append((resp.service.revision, sent))
            if self.go.is_set() and rng.random() < 0.02:
                await self.timed(cat.ListServices(catalog_pb2.ListServicesRequest(), timeout=RPC_TIMEOUT_S))
            await asyncio.sleep(interval)


def _say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _line() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


async def probe(s: Slice, rate: float, idle_server: str | None = None) -> None:
    """Renewals at `rate` a second, round the slice's agents, each timed on its own (one in
    flight at a time per agent; a late answer delays only that agent's next probe); and as many
    health checks of `idle_server` (IDLE_SERVER), over a channel of their own per agent, beside."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    period = len(s.renewers) / rate

    async def paced(k: float, call, latencies: list[float]) -> int:
        await asyncio.sleep(k / rate)
        errors = 0
        while s.measuring:
            t0 = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError:
                errors += 1
            else:
                latencies.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(max(0.0, t0 + period - time.perf_counter()))
        return errors

    def renew(adm):
        return lambda: adm.Renew(admission_pb2.RenewRequest(node=types_pb2.Node()), timeout=RPC_TIMEOUT_S)

    def check(stub):
        return lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S)
    channels = [grpc.aio.insecure_channel(idle_server) for _ in s.renewers] if idle_server else []
    try:
        errors = await asyncio.gather(
            *(paced(k, renew(adm), s.probe_latencies) for k, adm in enumerate(s.renewers)),
            # each half-way between two renewals: the probe's calls do not wait for each other
            *(paced(k + 0.5, check(health_pb2_grpc.HealthStub(ch)), s.idle_latencies)
              for k, ch in enumerate(channels)))
    finally:
        for ch in channels:
            await ch.close()
    s.probe_errors += sum(errors[:len(s.renewers)])
    s.idle_errors += sum(errors[len(s.renewers):])


async def worker() -> None:
    """One load process: a slice of the fleet, driven step by step over stdin/stdout."""
    spec = json.loads(await _line())
    s = Slice(spec)
    sem = asyncio.Semaphore(JOIN_CONCURRENCY)
    tasks = {i: asyncio.create_task(s.agent(i, sem)) for i in range(s.first, s.first + s.count)}
    try:
        await asyncio.wait_for(asyncio.shield(s.all_joined.wait()), spec["join_phase_limit_s"])
    except TimeoutError:  # agents still joining are failures: they never arrive
        for i, t in tasks.items():
            if i not in s.joined_ids:
                t.cancel()
                s.join_failures += 1
        s.late = True
    _say({"joined": len(s.join_ms), "join_failures": s.join_failures, "join_ms": s.join_ms, "late": s.late,
          "ids": s.ids, "join_throttled": s.join_throttled, "agents_throttled": s.agents_throttled,
          "join_errors": s.join_errors, "join_retries": s.join_retries})
    cmd = (await _line()).split()  # "go <epoch>"
    s.arrive_at = float(cmd[1])
    s.go.set()
    # the last agent arrives n / ARRIVALS_PER_S after the first: the timeout runs from then
    deadline = s.arrive_at + arrival_span_s(s.n) + spec["sync_timeout_s"]
    try:
        await asyncio.wait_for(s.all_synced.wait(), max(1.0, deadline - time.time()))
        sync_s = time.time() - s.arrive_at
    except TimeoutError:
        sync_s = None
    _say({"sync_s": sync_s, "synced": s.synced})
    await _line()  # "measure"
    s.measuring = s.opened = True
    probing = asyncio.create_task(probe(s, spec["probe_rate"], spec.get("idle_server"))) \
        if spec.get("probe_rate") else None
    await asyncio.sleep(spec["load_s"])
    s.measuring = False
    if probing is not None:
        await probing
    await asyncio.sleep(DELIVERY_GRACE_S)  # the window's last changes on their way to every stream
    _say({"latencies": s.latencies, "errors": s.errors, "probe_latencies": s.probe_latencies,
          "probe_errors": s.probe_errors, "idle_latencies": s.idle_latencies, "idle_errors": s.idle_errors,
          "unreachable": sorted(s.unreachable),
          "synced": s.synced, "lease_ttl_s": s.lease_ttl_s, "exposed": s.exposed,
          "receipts": s.receipts, "service_streams": s.service_streams})
    await _line()  # "stop"
    s.stop.set()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    for ch in s.channels:
        await ch.close()


def change_delivery(results: list[dict]) -> tuple[list[float], int]:
    """From the load processes' reports: for each catalog change made in the measurement window,
    the time from its Expose being sent until the last services stream of the fleet received it
    (ms; the streams that held the whole set when the window opened: one still syncing gets the
    change in its set); and the changes that had not reached every stream DELIVERY_GRACE_S after the window
    (failures, not latencies). An Expose that changed nothing (the same service again) has no
    event of its own and is left out: its revision was received before it was sent."""
    streams = sum(r["service_streams"] for r in results)
    seen: dict[int, list] = {}
    for r in results:
        for rev, (count, first, last) in r["receipts"].items():
            m = seen.setdefault(int(rev), [0, first, last])
            m[0], m[1], m[2] = m[0] + count, min(m[1], first), max(m[2], last)
    delivery, undelivered = [], 0
    for rev, sent in (e for r in results for e in r["exposed"]):
        got = seen.get(rev)
        if got is not None and got[1] < sent:
            continue  # an earlier change's revision: this Expose changed nothing
        if got is None or got[0] < streams:
            undelivered += 1
        else:
            delivery.append((got[2] - sent) * 1000)
    return delivery, undelivered


def _most_common(counts, k: int = 5) -> dict[str, int]:
    """The k most frequent reasons over the load processes' counts of them."""
    return dict(sum((collections.Counter(c) for c in counts), collections.Counter()).most_common(k))


def _read(p: subprocess.Popen) -> dict:
    """The next JSON line of a load process (each of its steps bounds itself: join and sync timeouts)."""
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"load process {p.pid} ended early (exit {p.poll()})")
    return json.loads(line)


def _port(p: subprocess.Popen, timeout: float = 30) -> int:
    """The port the idle server printed (bounded: a server that never says is an error)."""
    import selectors
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError(f"the idle gRPC server printed no port within {timeout:g} s")
    line = p.stdout.readline().strip()
    if not line.isdigit():
        raise RuntimeError(f"the idle gRPC server ended without a port (exit {p.poll()})")
    return int(line)


def run_fleet(n: int, coordinators: list[str], join_addresses: list[str], token: str, sync_timeout_s: float,
              load_s: float, rss: Callable[[], float],
              renew_buckets: Callable[[], dict[float, float]] | None = None) -> dict:
    """n simulated agents over ceil(n / AGENTS_PER_PROCESS) load processes; returns the combined figures
    (`rss()` is read at the end of the measurement window). `renew_buckets()`: meshd's own
    histogram of its Renew handling (upper bound in seconds -> renewals at most that long, as
    Prometheus counts them), read as the window opens and once the load processes reported;
    the difference is returned as "renew_buckets"."""
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    idle = subprocess.Popen([sys.executable, "-c", IDLE_SERVER], stdout=subprocess.PIPE, text=True, env=env)
    try:
        idle_server = f"127.0.0.1:{_port(idle)}"
        # the probe's agents are the fleet's last ones; the load processes take the rest
        load = n - PROBE_AGENTS
        slices = [(first, min(AGENTS_PER_PROCESS, load - first), 0.0) for first in range(0, load, AGENTS_PER_PROCESS)]
        for first, count, rate in slices + [(load, PROBE_AGENTS, PROBE_RPCS_PER_S)]:
            p = subprocess.Popen([sys.executable, "-m", "bench.fleet"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env)
            procs.append(p)
            p.stdin.write(json.dumps({"n": n, "first": first, "count": count, "probe_rate": rate,
                                      "coordinators": coordinators, "join_addresses": join_addresses,
                                      "token": token, "sync_timeout_s": sync_timeout_s, "load_s": load_s,
                                      "idle_server": idle_server if rate else None,
                                      "join_phase_limit_s": JOIN_PHASE_LIMIT_S}) + "\n")
            p.stdin.flush()
        t_join = time.time()
        joined = [_read(p) for p in procs]
        join_phase_s = time.time() - t_join
        arrive_at = time.time() + 0.5
        for p in procs:
            p.stdin.write(f"go {arrive_at}\n")
            p.stdin.flush()
        synced = [_read(p) for p in procs]
        time.sleep(5)  # renewals spread out again
        before = renew_buckets() if renew_buckets else {}
        for p in procs:
            p.stdin.write("measure\n")
            p.stdin.flush()
        results = [_read(p) for p in procs]
        rss_mb = rss()
        after = renew_buckets() if renew_buckets else {}
        for p in procs:
            p.stdin.write("stop\n")
            p.stdin.flush()
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in [*procs, idle]:
            if p.poll() is None:
                p.kill()
                p.wait()
    syncs = [s["sync_s"] for s in synced]
    delivery_ms, undelivered = change_delivery(results)
    return {"latencies": [x for r in results for x in r["latencies"]],
            "errors": sum(r["errors"] for r in results),
            "probe_latencies": [x for r in results for x in r["probe_latencies"]],
            "probe_errors": sum(r["probe_errors"] for r in results),
            "idle_latencies": [x for r in results for x in r["idle_latencies"]],
            "idle_errors": sum(r["idle_errors"] for r in results),
            # nodes of this fleet's agents only: a join cut off by the join phase's limit may have
            # got through without its agent ever renewing
            "unreachable": len({u for r in results for u in r["unreachable"]} & {i for j in joined for i in j["ids"]}),
            "sync_s": None if any(s is None for s in syncs) else max(syncs),
            "synced_fraction": sum(s["synced"] for s in synced) / (2 * n),
            "join_ms": [x for j in joined for x in j["join_ms"]],
            "join_failures": sum(j["join_failures"] for j in joined),
            "join_errors": _most_common(j["join_errors"] for j in joined),
            # joins that failed not for good (lost their races with concurrent joins) and were tried
            # again after the agent's backoff, as the agent does: not failures
            "join_retries": _most_common(j["join_retries"] for j in joined),
            # refusals for load, each followed by the suggested wait and another try: not failures
            "join_throttled": sum(j["join_throttled"] for j in joined),
            "agents_throttled": sum(j["agents_throttled"] for j in joined),
            "join_phase_s": join_phase_s, "join_phase_cut": any(j["late"] for j in joined),
            "delivery_ms": delivery_ms, "undelivered": undelivered,
            "renew_buckets": {le: after[le] - before.get(le, 0) for le in after},
            "rss_mb": rss_mb, "processes": len(procs) - 1,  # load processes (the probe's apart)
            "lease_ttl_s": max(r["lease_ttl_s"] for r in results)}


if __name__ == "__main__":
    import uvloop
    uvloop.run(worker())
