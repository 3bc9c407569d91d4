"""Control-plane benchmark: joins, expose → resolvable, DNS, meshd under 1,000 agents, agent memory.

- join latency: sequential joins (CA fetch with pin check, CSR, Join over TLS)
  against a meshd process on loopback.
- expose → resolvable: 50 real meshagent processes; a service is exposed
  through one agent's local API and timed until another agent's DNS answers.
- DNS: bench/dns_bench.py (responder on one core, dnsmasq side by side).
- meshd with 1,000 simulated agents in this one load process: each joined
  with its own key and certificate, holding both watch streams over its own
  mTLS channel and renewing its lease; p99 latency of the RPCs they make
  (Renew, Expose, ListServices) and meshd's RSS.
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
from meshagent.agent import Agent, mtls_channel
from meshagent.config import AgentConfig
from meshctl.localmesh import LocalMesh, resolve

B = "control"
JOINS = 100
AGENTS = 50
EXPOSES = 40
SIM_AGENTS = 1000
LOAD_SECONDS = 20


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _config(mesh: LocalMesh, root: Path, name: str, token: str) -> AgentConfig:
    return AgentConfig(state_dir=root / name, coordinator=mesh.coordinator, join_address=mesh.join_address,
                       token=token, name=name, socket=str(root / f"{name}.sock"), dns="", metrics="")


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
        samples = []
        for k in range(EXPOSES):
            owner, observer = rng.sample(names, 2)
            with grpc.insecure_channel(f"unix:{mesh.socket(owner)}") as ch:
                stub = agent_pb2_grpc.AgentServiceStub(ch)
                t0 = time.perf_counter()
                stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name=f"svc-{k}", port=8000)))
                for _ in range(4000):  # bounded: ~4 s at most
                    if resolve(f"svc-{k}.default.svc.cluster.local", mesh.dns(observer), timeout=0.5):
                        break
                    time.sleep(0.001)
                samples.append((time.perf_counter() - t0) * 1000)
    anchor = {"name": "Consul anti-entropy interval (s→ms)", "value": 60000}
    return [record(B, "expose_to_resolvable_p50_ms", percentile(samples, 50), "ms", agents=AGENTS, anchor=anchor),
            record(B, "expose_to_resolvable_p99_ms", percentile(samples, 99), "ms", goal=200, agents=AGENTS,
                   anchor=anchor),
            record(B, "agent_rss_mb", max(agent_rss), "MB", goal=60,
                   anchor={"name": "python+uvloop+grpc.aio+cryptography baseline (FACTS)", "value": 47})]


async def _load(mesh: LocalMesh, root: Path) -> tuple[list[float], int]:
    token = mesh.token(uses=0)
    joined = await _joins(mesh, root, token, SIM_AGENTS, 16)
    idents = [ident for _, ident in joined]
    channels = [mtls_channel(mesh.coordinator, ident) for ident in idents]
    latencies: list[float] = []
    stop = asyncio.Event()

    async def timed(call):
        t0 = time.perf_counter()
        await call
        if not stop.is_set():
            latencies.append((time.perf_counter() - t0) * 1000)

    async def watch(stream):
        try:
            async for _ in stream:
                pass
        except grpc.aio.AioRpcError:
            pass

    async def agent(i: int, ch: grpc.aio.Channel):
        adm = admission_pb2_grpc.AdmissionServiceStub(ch)
        cat = catalog_pb2_grpc.CatalogServiceStub(ch)
        nodes = nodes_pb2_grpc.NodeServiceStub(ch)
        streams = [cat.WatchServices(types_pb2.WatchRequest()), nodes.WatchNodes(types_pb2.WatchRequest())]
        watchers = [asyncio.create_task(watch(s)) for s in streams]
        rng = random.Random(i)
        await asyncio.sleep(rng.random() * 5)  # spread renewals as real agents do
        try:
            n = 0
            while not stop.is_set():
                await timed(adm.Renew(admission_pb2.RenewRequest(node=types_pb2.Node()), timeout=30))
                if rng.random() < 0.1:
                    n += 1
                    await timed(cat.Expose(catalog_pb2.ExposeRequest(
                        service=types_pb2.Service(name=f"load-{i}-{n % 3}", port=8000 + n % 3)), timeout=30))
                if rng.random() < 0.02:
                    await timed(cat.ListServices(catalog_pb2.ListServicesRequest(), timeout=30))
                await asyncio.sleep(5)  # lease TTL 15 s: renew every third
        finally:
            for s in streams:
                s.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    tasks = [asyncio.create_task(agent(i, ch)) for i, ch in enumerate(channels)]
    await asyncio.sleep(5)  # everyone connected and watching
    latencies.clear()
    await asyncio.sleep(LOAD_SECONDS)
    rss = rss_mb(mesh.meshd.popen.pid)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    return latencies, rss


def bench_1000_agents() -> list[dict]:
    import uvloop
    with LocalMesh(pool="127.80.0.0/16") as mesh, tempfile.TemporaryDirectory() as tmp:
        mesh.start_meshd()
        latencies, rss = uvloop.run(_load(mesh, Path(tmp)))
    return [record(B, "meshd_rpc_p99_ms_1000_agents", percentile(latencies, 99), "ms", goal=50,
                   agents=SIM_AGENTS, rpcs=len(latencies), seconds=LOAD_SECONDS,
                   anchor={"name": "K3s server agents per 2 cores (approx.)", "value": 350}),
            record(B, "meshd_rss_mb_1000_agents", rss, "MB", agents=SIM_AGENTS)]


def run() -> list[dict]:
    from bench.dns_bench import run_dns
    return bench_joins() + bench_expose_to_resolvable() + run_dns() + bench_1000_agents()
