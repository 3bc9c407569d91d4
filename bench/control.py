"""Control-plane benchmark: joins, expose → resolvable, DNS, meshd under 1,000 agents, agent memory.

- join latency: sequential joins (CA fetch with pin check, CSR, Join over TLS)
  against a meshd process on loopback.
- expose → resolvable: 50 real meshagent processes; a service is exposed
  through one agent's local API and timed until another agent's DNS answers.
- DNS: bench/dns_bench.py (responder on one core, dnsmasq side by side).
- meshd with 1,000 simulated agents in this one load process: each joined
  with its own key and certificate, holding both watch streams over its own
  mTLS channel and renewing its lease every 5 s, while the catalog changes
  CHANGES_PER_S times a second mesh-wide (every change reaches all 2,000
  streams); p99 latency of the RPCs they make (Renew, Expose, ListServices)
  and meshd's RSS, measured once every agent holds the full node list.
- idle meshagent RSS.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import percentile, record
from mesh.v1 import admission_pb2, admission_pb2_grpc, agent_pb2_grpc, catalog_pb2, catalog_pb2_grpc, nodes_pb2_grpc, types_pb2
from meshagent.agent import Agent
from meshagent.config import AgentConfig
from meshagent.uplink import mtls_channel
from testbed.localmesh import LocalMesh, resolve

B = "control"
JOINS = 100
AGENTS = 50
EXPOSES = 40
LOAD_SECONDS = 20
SYNC_TIMEOUT_S = 90
ARRIVALS_PER_S = 50.0  # agents opening their watch streams per second
CHANGES_PER_S = 2.0
EXPOSE_TIMEOUT_S = 4.0  # a busy mesh: a service exposed or moved somewhere every half second


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


_SERF_RSS: list[float | None] = []


def _serf_rss_mb() -> float | None:
    """RSS of one idle real serf agent, started here (None when serf is not installed)."""
    if _SERF_RSS:
        return _SERF_RSS[0]
    import shutil
    import subprocess
    value = None
    if shutil.which("serf"):
        p = subprocess.Popen(["serf", "agent", "-node", "rss-probe", "-bind", "127.0.0.1:0",
                              "-rpc-addr", "127.0.0.1:0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2.0)
            if p.poll() is None:
                value = round(rss_mb(p.pid), 1)
        finally:
            p.kill()
            p.wait()
    _SERF_RSS.append(value)
    return value


def _config(mesh: LocalMesh, root: Path, name: str, token: str) -> AgentConfig:
    return AgentConfig(state_dir=root / name, coordinator=mesh.coordinator, join_address=mesh.join_address,
                       token=token, name=name, socket=str(root / f"{name}.sock"), dns="", metrics="", imds="",
                       gpus=False, spot=False)


async def _joins(mesh: LocalMesh, root: Path, token: str, n: int, concurrency: int) -> list[tuple[float, object]]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int):
        async with sem:
            agent = Agent(_config(mesh, root, f"sim-{i:04d}", token))
            t0 = time.perf_counter()
            ident = await agent.join()
            return time.perf_counter() - t0, ident
    return await asyncio.gather(*(one(i) for i in range(n)))


def bench_joins() -> list[dict]:
    with LocalMesh() as mesh, tempfile.TemporaryDirectory() as tmp:
        mesh.start_meshd()
        token = mesh.token(uses=0)
        samples = [t * 1000 for t, _ in asyncio.run(_joins(mesh, Path(tmp), token, JOINS, 1))]
    return [record(B, "join_latency_p50_ms", percentile(samples, 50), "ms", joins=JOINS),
            record(B, "join_latency_p99_ms", percentile(samples, 99), "ms", joins=JOINS)]


def bench_expose_to_resolvable() -> list[dict]:
    rng = random.Random(1)
    with LocalMesh(lease_ttl_s=30) as mesh:
        mesh.start_meshd()
        token = mesh.token(uses=0)
        names = [f"vm-{i:02d}" for i in range(AGENTS)]
        for n in names:
            mesh.start_agent(n, token)
        time.sleep(2)  # let every agent settle into its watch streams
        agent_rss = [rss_mb(mesh.agents[n].popen.pid) for n in names[:5]]
        samples, failures = [], 0
        for k in range(EXPOSES):
            owner, observer = rng.sample(names, 2)
            with grpc.insecure_channel(f"unix:{mesh.socket(owner)}") as ch:
                stub = agent_pb2_grpc.AgentServiceStub(ch)
                t0 = time.perf_counter()
                stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name=f"svc-{k}", port=8000)))
                deadline = t0 + EXPOSE_TIMEOUT_S
                resolved = False
                while time.perf_counter() < deadline:  # bounded
                    if resolve(f"svc-{k}.default.svc.cluster.local", mesh.dns(observer), timeout=0.5):
                        resolved = True
                        break
                    time.sleep(0.001)
                if resolved:
                    samples.append((time.perf_counter() - t0) * 1000)
                else:  # never resolved: a failure, not a latency
                    failures += 1
    anchor = {"name": "Consul agent anti-entropy interval (ms), documented default", "value": 60000,
              "measured": False, "source": "Consul docs (no Consul installable here)"}
    info = {"agents": AGENTS, "exposes": EXPOSES, "failures": failures, "timeout_s": EXPOSE_TIMEOUT_S}
    return [record(B, "expose_to_resolvable_p50_ms", percentile(samples, 50) if samples else None, "ms",
                   anchor=anchor, **info),
            record(B, "expose_to_resolvable_p99_ms", percentile(samples, 99) if samples else None, "ms", goal=200,
                   anchor=anchor, **info),
            record(B, "expose_to_resolvable_failures", failures, "exposes", goal=0, **info),
            record(B, "agent_rss_mb", max(agent_rss), "MB", goal=55, agents_sampled=len(agent_rss),
                   statistic="max over sampled idle agents", measured_at="2 s after the last agent started",
                   agent_flags="--metrics '' --wireguard '' --imds '' --no-gpus (metrics off: no prometheus_client)",
                   anchor={"name": "serf agent RSS, same run (idle, 1 node)", "value": _serf_rss_mb()}
                   if _serf_rss_mb() is not None else
                   {"name": "Serf agent RSS (FACTS.md)", "value": 14, "measured": False,
                    "source": "shared/FACTS.md (serf not installed)"})]


async def _load(mesh: LocalMesh, root: Path, n: int) -> tuple[list[float], float, float]:
    token = mesh.token(uses=0)
    joined = await _joins(mesh, root, token, n, 16)
    idents = [ident for _, ident in joined]
    channels = [mtls_channel(mesh.coordinator, ident) for ident in idents]
    latencies: list[float] = []
    stop = asyncio.Event()
    synced = [0]
    all_synced = asyncio.Event()

    errors = [0]

    async def timed(call):
        t0 = time.perf_counter()
        try:
            await call
        except grpc.aio.AioRpcError:
            errors[0] += 1
            return
        if not stop.is_set():
            latencies.append((time.perf_counter() - t0) * 1000)

    unreachable: set[str] = set()  # nodes meshd marked unreachable (lease expired), as the streams told

    async def watch(stream):
        try:
            async for ev in stream:
                if ev.type == types_pb2.EVENT_TYPE_PUT and hasattr(ev, "nodes"):
                    for node in list(ev.nodes) + ([ev.node] if ev.HasField("node") else []):
                        if node.state == types_pb2.NODE_STATE_UNREACHABLE:
                            unreachable.add(node.id)
                if ev.type == types_pb2.EVENT_TYPE_SYNCED:
                    synced[0] += 1
                    if synced[0] == 2 * n:
                        all_synced.set()
        except grpc.aio.AioRpcError:
            pass

    async def agent(i: int, ch: grpc.aio.Channel):
        adm = admission_pb2_grpc.AdmissionServiceStub(ch)
        cat = catalog_pb2_grpc.CatalogServiceStub(ch)
        nodes = nodes_pb2_grpc.NodeServiceStub(ch)
        await asyncio.sleep(i / ARRIVALS_PER_S)  # the fleet comes up over time, as VMs boot
        streams = [cat.WatchServices(types_pb2.WatchRequest(batch=True)),
                   nodes.WatchNodes(types_pb2.WatchRequest(batch=True))]
        watchers = [asyncio.create_task(watch(s)) for s in streams]
        rng = random.Random(i)
        await asyncio.sleep(rng.random() * 5)  # spread renewals as real agents do (they renew while syncing too)
        try:
            changes = 0
            while not stop.is_set():
                await timed(adm.Renew(admission_pb2.RenewRequest(node=types_pb2.Node()), timeout=30))
                if rng.random() < CHANGES_PER_S * 5 / n:
                    changes += 1
                    await timed(cat.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(
                        name=f"load-{i}-{changes % 3}", port=8000 + changes % 3)), timeout=30))
                if rng.random() < 0.02:
                    await timed(cat.ListServices(catalog_pb2.ListServicesRequest(), timeout=30))
                await asyncio.sleep(5)  # lease TTL 15 s: renew every third
        finally:
            for s in streams:
                s.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(agent(i, ch)) for i, ch in enumerate(channels)]
    try:  # until every agent holds the whole node list (bounded: meshd may not get there)
        await asyncio.wait_for(all_synced.wait(), SYNC_TIMEOUT_S)
        sync_s = time.perf_counter() - t0
    except TimeoutError:
        sync_s = None  # never synced: no time to report (the synced fraction says how far it got)
    synced_fraction = synced[0] / (2 * n)
    await asyncio.sleep(5)  # renewals spread out
    latencies.clear()
    errors[0] = 0
    await asyncio.sleep(LOAD_SECONDS)
    rss = rss_mb(mesh.meshd.popen.pid)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    return latencies, rss, sync_s, errors[0], synced_fraction, len(unreachable)


def bench_agents(n: int) -> list[dict]:
    """meshd under n simulated agents; metric names carry n."""
    import uvloop
    with LocalMesh(pool="127.80.0.0/16") as mesh, tempfile.TemporaryDirectory() as tmp:
        mesh.start_meshd()
        latencies, rss, sync_s, errors, synced, expiries = uvloop.run(_load(mesh, Path(tmp), n))
    return [record(B, f"meshd_rpc_p99_ms_{n}_agents", percentile(latencies, 99) if latencies else None, "ms",
                   goal=50, agents=n, rpcs=len(latencies), rpc_errors=errors, seconds=LOAD_SECONDS,
                   changes_per_s=CHANGES_PER_S, arrivals_per_s=ARRIVALS_PER_S, synced_fraction=round(synced, 3),
                   failures=errors,
                   anchor={"name": "K3s server: RPC latency at this agent count (no K3s installable here)",
                           "value": None, "measured": False,
                           "source": "K3s sizing docs put ~350 agents on 2 cores; no latency figure published"}),
            record(B, f"meshd_lease_expiries_{n}_agents", expiries, "nodes", goal=0, agents=n,
                   how="distinct nodes seen UNREACHABLE in the agents' node watch streams (every agent renews "
                       "every 5 s on a 15 s lease, so any is meshd's doing)"),
            record(B, f"meshd_rpc_errors_{n}_agents", errors, "rpcs", goal=0, agents=n, seconds=LOAD_SECONDS),
            record(B, f"meshd_rss_mb_{n}_agents", rss, "MB", agents=n, goal=300 if n == 1000 else None),
            # Until every agent, arriving at ARRIVALS_PER_S, holds the whole node list.
            # null when not every stream synced within SYNC_TIMEOUT_S (a failure, not a time)
            record(B, f"meshd_initial_sync_s_{n}_agents", sync_s, "s", agents=n, goal=20 if n == 1000 else None,
                   arrivals_per_s=ARRIVALS_PER_S, synced_fraction=round(synced, 3), timeout_s=SYNC_TIMEOUT_S,
                   failures=0 if sync_s is not None else 1),
            record(B, f"meshd_watch_streams_synced_fraction_{n}_agents", synced, "ratio", better="higher", goal=1.0,
                   agents=n)]


def run() -> list[dict]:
    from bench.dns_bench import run_dns
    return bench_joins() + bench_expose_to_resolvable() + run_dns() + bench_agents(200) + bench_agents(1000)
