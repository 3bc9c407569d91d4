"""Control-plane benchmark: joins, expose → resolvable, DNS, meshd under 1,000 agents, agent memory.

- join latency: sequential joins (CA fetch with pin check, CSR, Join over TLS)
  against a meshd process on loopback.
- expose → resolvable: 50 real meshagent processes; a service is exposed
  through one agent's local API and timed until another agent's DNS answers.
- DNS: bench/dns_bench.py (responder on one core, dnsmasq side by side).
- meshd under a fleet of simulated agents (bench/fleet.py: several per load
  process, 1,000 to a process): 200, 1,000 and 5,000 agents on one meshd
  (SQLite), and 2,000 over three replicas on one real etcd next to the same
  fleet on one replica. Each agent joins and renews from then on as agents
  do (every third of the lease TTL meshd grants: 15 s, longer as the fleet
  grows past 500, keeping renewals to 100 a second);
  once the fleet has joined, agents arrive at 50/s opening both watch
  streams, while the catalog changes twice a second (every change reaching
  every stream); p99 latency of the RPCs they make (Renew, Expose,
  ListServices), lease expiries, the time until every stream holds the whole
  set, and meshd's RSS. Beside the renewal p99 the agents see, two figures
  that say where it goes: meshd's own histogram of its Renew handling in the
  same window (`in_meshd`), and the anchor, an idle gRPC server on the same
  machine called as often from the same probe process (what an RPC costs on
  these two cores at that moment, meshd's work apart).
- idle meshagent RSS, beside the runtime floor (the libraries it needs, none
  of its code) and where the largest agent's RSS is: anonymous memory against
  the pages of mapped files, and the largest files.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import grpc

from bench import fleet
from bench.common import percentile, record
from mesh.v1 import agent_pb2_grpc, catalog_pb2, types_pb2
from meshagent.agent import Agent
from meshagent.config import AgentConfig
from testbed.localmesh import LocalMesh, resolve, rss_mb, samples, scrape

B = "control"
JOINS = 100
AGENTS = 50
EXPOSES = 40
LOAD_SECONDS = 20
SYNC_TIMEOUT_S = 90
EXPOSE_TIMEOUT_S = 4.0  # a busy mesh: a service exposed or moved somewhere every half second


def rss_breakdown(pid: int, top: int = 6) -> dict:
    """Where a process's RSS is (/proc/PID/smaps): anonymous memory (the Python heap, the C
    libraries' allocations, stacks) and the pages of mapped files (the interpreter and native
    libraries), with the files mapped most (all their resident pages, written ones included)."""
    by_file: dict[str, int] = {}
    anon = total = 0
    name = ""  # the file of the mapping the lines are about ("" for anonymous ones and [heap])
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if not head[0].endswith(":"):  # a mapping: address perms offset dev inode [path]
            name = Path(head[5]).name if len(head) > 5 and head[5].startswith("/") else ""
        elif head[0] == "Rss:":
            total += int(head[1])
            if name:
                by_file[name] = by_file.get(name, 0) + int(head[1])
        elif head[0] == "Anonymous:":
            anon += int(head[1])
    largest = sorted(by_file.items(), key=lambda kv: -kv[1])[:top]
    return {"rss_mb": round(total / 1024, 1), "anonymous_mb": round(anon / 1024, 1),
            "file_backed_mb": round((total - anon) / 1024, 1),
            "largest_files_mb": {f: round(kb / 1024, 1) for f, kb in largest}}


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


#: The runtime an agent cannot do without, and nothing of ours: uvloop, a gRPC server on a unix
#: socket (the local API) with a client holding a stream open to it (the watch), AES-GCM (gossip)
#: and a UDP socket, idle. Prints its RSS in MB.
_FLOOR = """
import asyncio, os, re, tempfile, uvloop, grpc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
async def main():
    sock = "unix:" + os.path.join(tempfile.mkdtemp(), "s")
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(sock)
    await server.start()
    stub = health_pb2_grpc.HealthStub(grpc.aio.insecure_channel(sock))
    for _ in range(20):
        await stub.Check(health_pb2.HealthCheckRequest())
    watch = stub.Watch(health_pb2.HealthCheckRequest())
    await watch.read()
    AESGCM(AESGCM.generate_key(128)).encrypt(os.urandom(12), bytes(1000), None)
    await asyncio.get_running_loop().create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    await asyncio.sleep(2)
    print(int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024)
uvloop.run(main())
"""


def _runtime_floor_mb() -> float:
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _FLOOR], capture_output=True, text=True, timeout=60, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


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
        breakdown = rss_breakdown(mesh.agents[names[agent_rss.index(max(agent_rss))]].popen.pid)
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
                   runtime_floor_mb=_runtime_floor_mb(), breakdown=breakdown,
                   runtime_floor="the same Python with uvloop, a gRPC server on a unix socket and a client "
                                 "stream to it, AES-GCM and a UDP socket, none of the agent's code, idle",
                   anchor={"name": "serf agent RSS, same run (idle, 1 node)", "value": _serf_rss_mb()}
                   if _serf_rss_mb() is not None else
                   {"name": "Serf agent RSS (FACTS.md)", "value": 14, "measured": False,
                    "source": "shared/FACTS.md (serf not installed)"})]


def _agents_records(n: int, out: dict, suffix: str = "", **extra) -> list[dict]:
    """The records of one fleet run (bench.fleet.run_fleet); metric names carry n (and `suffix`)."""
    name = f"{n}_agents{suffix}"
    probe, probe_errors, idle = out["probe_latencies"], out["probe_errors"], out["idle_latencies"]
    latencies, errors, synced = out["latencies"], out["errors"] + probe_errors, out["synced_fraction"]
    info = {"agents": n, "load_processes": out["processes"], "lease_ttl_s": out["lease_ttl_s"], **extra}
    # The latency an agent sees: the probe's renewals, from a process whose event loop is idle as
    # a real agent's is (one per VM). The load processes' own figure (every Renew, Expose and
    # ListServices of 990 agents driven by one process on the same two cores) is beside it: it
    # adds that process's own delays.
    return [record(B, f"meshd_rpc_p99_ms_{name}", percentile(probe, 99) if probe else None, "ms",
                   goal=GOALS.get(name, {}).get("rpc"), rpcs=len(probe), rpc_errors=probe_errors,
                   seconds=LOAD_SECONDS, measured_by=f"probe: {fleet.PROBE_AGENTS} agents of the fleet in a "
                   f"process of their own renewing {fleet.PROBE_RPCS_PER_S:g} times a second in all",
                   probe_p50_ms=percentile(probe, 50) if probe else None,
                   in_meshd=in_meshd(out["renew_buckets"]),
                   load_clients_p99_ms=percentile(latencies, 99) if latencies else None,
                   load_clients_p50_ms=percentile(latencies, 50) if latencies else None,
                   load_clients_rpcs=len(latencies), load_clients_rpc_errors=out["errors"],
                   changes_per_s=fleet.CHANGES_PER_S, arrivals_per_s=fleet.ARRIVALS_PER_S,
                   synced_fraction=round(synced, 3), failures=probe_errors, machine=MACHINE, **info,
                   ratio_vs_anchor=round(percentile(probe, 99) / percentile(idle, 99), 2) if probe and idle else None,
                   anchor={"name": "gRPC health checks of an idle server, same machine and window, from the "
                                   "probe's process at the same rate (insecure channels: no TLS)",
                           "value": percentile(idle, 99) if idle else None, "p50_ms": percentile(idle, 50)
                           if idle else None, "rpcs": len(idle), "rpc_errors": out["idle_errors"]},
                   k3s="no K3s installable here; its sizing docs put ~350 agents on 2 cores and publish no "
                       "latency figure"),
            record(B, f"meshd_lease_expiries_{name}", out["unreachable"], "nodes", goal=0, **info,
                   how="distinct nodes seen UNREACHABLE in the agents' node watch streams (every agent renews "
                       "three times per lease TTL granted, from its join on, so any is meshd's doing)"),
            record(B, f"meshd_rpc_errors_{name}", errors, "rpcs", goal=0, seconds=LOAD_SECONDS, **info),
            record(B, f"meshd_rss_mb_{name}", out["rss_mb"], "MB", goal=GOALS.get(name, {}).get("rss"),
                   statistic="sum over replicas" if extra.get("replicas", 1) > 1 else "meshd process", **info),
            # Until every agent, arriving at ARRIVALS_PER_S after the fleet joined, holds the whole set.
            # null when not every stream synced within SYNC_TIMEOUT_S of the last arrival (a failure,
            # not a time). It cannot be below the arrival span: the last agent arrives (n-1)/50 s in.
            record(B, f"meshd_initial_sync_s_{name}", out["sync_s"], "s", goal=GOALS.get(name, {}).get("sync"),
                   arrivals_per_s=fleet.ARRIVALS_PER_S, synced_fraction=round(synced, 3),
                   timeout_s=SYNC_TIMEOUT_S, timeout_from="the last arrival",
                   arrival_span_s=round(fleet.arrival_span_s(n), 2),
                   failures=0 if out["sync_s"] is not None else 1, **info),
            record(B, f"meshd_watch_streams_synced_fraction_{name}", synced, "ratio", better="higher", goal=1.0,
                   **info),
            # a catalog change reaching every agent: from its Expose being sent until the last services
            # stream of the fleet received it; changes that never reached every stream are failures
            record(B, f"meshd_change_to_every_stream_p99_ms_{name}",
                   percentile(out["delivery_ms"], 99) if out["delivery_ms"] else None, "ms",
                   p50_ms=percentile(out["delivery_ms"], 50) if out["delivery_ms"] else None,
                   changes=len(out["delivery_ms"]) + out["undelivered"], failures=out["undelivered"],
                   grace_s=fleet.DELIVERY_GRACE_S, seconds=LOAD_SECONDS, **info),
            # joins while the fleet already in the mesh renews (JOIN_CONCURRENCY per load process)
            record(B, f"meshd_join_p99_ms_{name}", percentile(out["join_ms"], 99) if out["join_ms"] else None, "ms",
                   joins=len(out["join_ms"]), failures=out["join_failures"], failure_reasons=out["join_errors"],
                   retried=out["join_retries"],
                   throttled=out["join_throttled"], agents_throttled=out["agents_throttled"],
                   join_phase_s=round(out["join_phase_s"], 1), join_phase_cut_at_s=fleet.JOIN_PHASE_LIMIT_S
                   if out["join_phase_cut"] else None, **info)]


#: goals by fleet (issue 17)
GOALS = {"1000_agents": {"rpc": 50, "sync": 20, "rss": 300}, "5000_agents": {"rpc": 200}}
MACHINE = "2 cores shared with other work: figures move with the machine's load (see load_avg)"


def _fleet(n: int, meshes: list[LocalMesh], token: str) -> dict:
    """n simulated agents spread over the meshd replicas of `meshes` (RSS: summed over them)."""
    return fleet.run_fleet(n, [m.coordinator for m in meshes], [m.join_address for m in meshes], token,
                           SYNC_TIMEOUT_S, LOAD_SECONDS, lambda: sum(rss_mb(m.meshd.popen.pid) for m in meshes),
                           lambda: renew_buckets([m.meshd.ready["metrics"] for m in meshes]))


#: meshd's metrics listener in the fleet runs (its own figures beside the probe's)
METRICS = ("--metrics", "127.0.0.1:0")


def renew_buckets(ports: list[str]) -> dict[float, float]:
    """meshd's `mesh_rpc_duration_seconds` histogram for Renew, summed over replicas: upper
    bound (s) -> renewals that took at most that long, from its interceptor to the handler's
    answer (what happens before gRPC hands meshd the call, and after, is not in it)."""
    out: dict[float, float] = {}
    for port in ports:
        for labels, value in samples(scrape(port, timeout=10), "mesh_rpc_duration_seconds_bucket", method="Renew"):
            le = float(labels["le"])
            out[le] = out.get(le, 0) + value
    return out


def in_meshd(buckets: dict[float, float]) -> dict:
    """What meshd's own histogram says of the window's renewals (every agent's, not only the
    probe's): how many, the bucket their p99 falls in, and how many took over 25 and 50 ms."""
    if not buckets or not buckets.get(math.inf):
        return {"renewals": 0}
    total = buckets[math.inf]
    bounds = sorted(buckets)
    p99 = next(le for le in bounds if buckets[le] >= 0.99 * total)

    def over(ms: float) -> int:
        return int(total - buckets[ms / 1000])
    return {"renewals": int(total), "p99_at_most_ms": None if p99 == math.inf else p99 * 1000,
            "over_25_ms": over(25), "over_50_ms": over(50),
            "measured_by": "meshd's mesh_rpc_duration_seconds{method=\"Renew\"}: from its interceptor to "
                           "the handler's answer; the time before gRPC hands meshd the call and after "
                           "is not in it"}


def bench_agents(n: int) -> list[dict]:
    """meshd (SQLite) under n simulated agents."""
    with LocalMesh(pool="127.80.0.0/16") as mesh:
        mesh.start_meshd(extra=METRICS)
        out = _fleet(n, [mesh], mesh.token(uses=0))
    return _agents_records(n, out, load_avg=round(os.getloadavg()[0], 1))


def bench_agents_replicas(n: int, replicas: int) -> list[dict]:
    """n simulated agents spread over `replicas` meshd replicas on one real etcd (agent i on replica
    i % replicas), and the same fleet on one replica on the same kind of etcd, in the same run."""
    from testbed.etcd_cluster import EtcdCluster
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (1, replicas):
            cluster = EtcdCluster(1, Path(tmp) / f"etcd-{count}").start()
            meshes: list[LocalMesh] = []
            try:
                store = ("--store", cluster.url + f"/fleet{count}")
                first = LocalMesh(pool="127.80.0.0/16")
                meshes.append(first)
                first.start_meshd(extra=store + METRICS)
                for r in range(1, count):  # one mesh CA: the replicas share the first one's state
                    other = LocalMesh(pool="127.80.0.0/16")
                    shutil.copytree(first.root / "meshd", other.root / "meshd",
                                    ignore=shutil.ignore_patterns("*.sock"))
                    meshes.append(other)
                    other.start_meshd(extra=store + METRICS)
                out = _fleet(n, meshes, first.token(uses=0))
                suffix = f"_{count}_replicas" if count > 1 else "_1_replica_etcd"
                records += _agents_records(n, out, suffix, replicas=count, store="etcd (one member)",
                                           load_avg=round(os.getloadavg()[0], 1))
            finally:
                for m in meshes:
                    m.__exit__(None, None, None)
                cluster.stop()
    return records


def run() -> list[dict]:
    from bench.dns_bench import run_dns
    # 5,000 agents and three replicas: bench/scale.py (`make bench BENCH=scale`), too long for `make bench`
    return bench_joins() + bench_expose_to_resolvable() + run_dns() + bench_agents(200) + bench_agents(1000)
