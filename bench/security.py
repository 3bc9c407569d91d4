"""Security benchmarks: decoders facing the network under fuzzing, and memory under abuse.

- `fuzz_cases_total` / `fuzz_failures` per decoder (gossip datagrams and push-pull
  streams, DNS queries, local API requests, Join and Expose requests): hypothesis feeds
  FUZZ_CASES random inputs to each (in FUZZ_CHUNKS runs, FUZZ_WORKERS runs at once); a
  failure is any exception other than the decoder's declared refusal (PeerError,
  InvalidArgument, protobuf DecodeError), or a DNS answer that breaks the responder's
  contract. Goal: 0 failures.
- `meshd_rss_ratio_slow_watchers`: a real meshd process; 100 WatchServices
  clients (own connections, meshd's admin socket) that never read while an
  agent churns the catalog; meshd's RSS after / before. Goal < 2.
- `agent_rss_mb_gossip_tcp_flood`: a real meshagent; 100 unauthenticated TCP
  connections to its gossip port, each declaring the largest frame and
  sending junk as fast as it can for FLOOD_S; peak RSS. Goal < 80 MB.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from typing import Any

from bench.common import record
from testbed.localmesh import rss_mb

FUZZ_CASES = 100_000
WATCHERS = 100
CHURN = 3000
FLOOD_CONNECTIONS = 100
FLOOD_S = 8.0


# -- fuzzing -------------------------------------------------------------------------------

def _fuzz(name: str, target, cases: int = FUZZ_CASES) -> dict[str, Any]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    counts = {"cases": 0, "failures": 0, "first": ""}

    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=1600))
    def run(data: bytes) -> None:
        counts["cases"] += 1
        try:
            target(data)
        except Exception as e:  # noqa: BLE001 - counting is the point
            counts["failures"] += 1
            counts["first"] = counts["first"] or f"{type(e).__name__}: {e}"[:200]

    run()
    return {"decoder": name, **counts}


def _gossip_target():
    from meshcore.errors import PeerError
    from meshcore.gossip import codec

    def target(data: bytes) -> None:
        for decode in (codec.decode_packet, codec.decode_stream, codec.decode_message):
            try:
                out = decode(data)
            except PeerError:
                continue
            if decode is codec.decode_packet:
                for raw in out[3]:
                    try:
                        codec.decode_message(raw)
                    except PeerError:
                        pass
    return target


def _dns_target():
    from meshagent.dns.answer import Answerer, Outcome
    from meshagent.dns.config import DnsConfig, Upstream
    from meshagent.dns.target import Target

    catalog = {"web": [Target("10.1.0.5", 8000, "tcp", "gpu-1")]}
    answerer = Answerer(DnsConfig(answer_cache_s=0.0), lambda n: catalog.get(n, []), (Upstream("192.0.2.1"),))

    def target(data: bytes) -> None:
        for udp in (True, False):
            out = answerer.respond(data, udp=udp)
            if not isinstance(out, Outcome) or (out.result == "servfail" and out.qtype == "none"):
                raise AssertionError(f"responder contract broken: {out!r}")
    return target


def _proto_target(messages, check=None):
    from google.protobuf.message import DecodeError

    from meshcore.errors import InvalidArgument

    def target(data: bytes) -> None:
        for cls in messages:
            try:
                msg = cls.FromString(data)
            except DecodeError:
                continue
            if check is not None:
                try:
                    check(msg)
                except InvalidArgument:
                    pass
    return target


def _local_api_target():
    from mesh.v1 import agent_pb2, catalog_pb2

    messages = [getattr(agent_pb2, n) for n in dir(agent_pb2) if n.endswith("Request")]
    return _proto_target(messages + [catalog_pb2.ExposeRequest, catalog_pb2.UnexposeRequest])


def _join_target():
    from mesh.v1 import admission_pb2
    from meshd.auth import check_request_size
    from meshd.nodes import check_facts

    def join_check(req) -> None:
        check_request_size("Join", req)
        check_facts(req.node)
    return _proto_target([admission_pb2.JoinRequest], join_check)


def _expose_target():
    from mesh.v1 import catalog_pb2
    from meshd.catalog import check_record_size, check_service

    def expose_check(req) -> None:
        check_service(req.service)
        check_record_size(req.service)
    return _proto_target([catalog_pb2.ExposeRequest], expose_check)


#: each decoder facing the network, and how to build its target
DECODERS = {"gossip": _gossip_target, "dns": _dns_target, "local_api": _local_api_target, "join": _join_target,
            "expose": _expose_target}
FUZZ_WORKERS = 2  # decoders fuzzed at once, each in a process of its own (one per core here)
# Each decoder's cases go in FUZZ_CHUNKS runs of their own (hypothesis draws each run's inputs
# afresh), so that five decoders share two workers evenly instead of one worker taking three.
FUZZ_CHUNKS = 4


def _fuzz_decoder(name: str) -> dict[str, Any]:
    return _fuzz(name, DECODERS[name](), FUZZ_CASES // FUZZ_CHUNKS)


def fuzz() -> list[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawned, not forked: the bench process may hold gRPC's threads from an earlier benchmark
    with ProcessPoolExecutor(FUZZ_WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        chunks = list(pool.map(_fuzz_decoder, [name for name in DECODERS for _ in range(FUZZ_CHUNKS)]))
    results = []
    for name in DECODERS:
        mine = [c for c in chunks if c["decoder"] == name]
        results.append({"decoder": name, "cases": sum(c["cases"] for c in mine),
                        "failures": sum(c["failures"] for c in mine),
                        "first": next((c["first"] for c in mine if c["first"]), "")})
    out = []
    for r in results:
        out.append(record("security", f"fuzz_cases_total_{r['decoder']}", r["cases"], "cases", "higher",
                          goal=FUZZ_CASES, decoder=r["decoder"]))
        out.append(record("security", f"fuzz_failures_{r['decoder']}", r["failures"], "failures", "lower", goal=0,
                          decoder=r["decoder"], first_failure=r["first"]))
    out.append(record("security", "fuzz_cases_total", sum(r["cases"] for r in results), "cases", "higher",
                      per_decoder={r["decoder"]: r["cases"] for r in results}))
    out.append(record("security", "fuzz_failures", sum(r["failures"] for r in results), "failures", "lower", goal=0,
                      per_decoder={r["decoder"]: r["failures"] for r in results}))
    return out


# -- memory under abuse --------------------------------------------------------------------

def slow_watchers() -> list[dict[str, Any]]:
    from testbed.localmesh import LocalMesh

    with LocalMesh(gossip_profile="local") as mesh:
        mesh.start_meshd()
        mesh.start_agent("churn", mesh.token())
        pid = mesh.meshd.popen.pid
        for i in range(50):  # a catalog to watch
            mesh.meshctl("expose", "--port", str(1000 + i), "--name", f"s{i}", agent="churn")
        time.sleep(1)
        before = rss_mb(pid)
        sock = str(mesh.root / "meshd.sock")
        agent_sock = mesh.socket("churn")
        peak = asyncio.run(_watch_and_churn(sock, agent_sock, pid))
        after = rss_mb(pid)
    ratio = max(peak, after) / before
    return [record("security", "meshd_rss_ratio_slow_watchers", ratio, "ratio", goal=2.0,
                   watchers=WATCHERS, changes=CHURN, rss_before_mb=round(before, 1), rss_peak_mb=round(peak, 1),
                   rss_after_mb=round(after, 1))]


async def _watch_and_churn(admin_sock: str, agent_sock: str, pid: int) -> float:
    import grpc

    from mesh.v1 import agent_pb2_grpc, catalog_pb2, catalog_pb2_grpc, types_pb2

    channels = [grpc.aio.insecure_channel(f"unix:{admin_sock}", options=[("grpc.use_local_subchannel_pool", 1),
                                                                          ("mesh.bench.watcher", i)])
                for i in range(WATCHERS)]
    calls = [catalog_pb2_grpc.CatalogServiceStub(ch).WatchServices(types_pb2.WatchRequest()) for ch in channels]
    for c in calls[:1]:
        await c.read()  # the stream is up (RESET); the others are opened the same way and never read
    peak = 0.0
    async with grpc.aio.insecure_channel(f"unix:{agent_sock}") as ch:
        agent = agent_pb2_grpc.AgentServiceStub(ch)
        tags = [f"t{j}" + "x" * 40 for j in range(8)]
        for i in range(CHURN):
            svc = types_pb2.Service(name=f"s{i % 50}", port=2000 + i, tags=tags)
            await agent.Expose(catalog_pb2.ExposeRequest(service=svc))
            if i % 200 == 0:
                peak = max(peak, rss_mb(pid))
    await asyncio.sleep(1)
    peak = max(peak, rss_mb(pid))
    for c in calls:
        c.cancel()
    for ch in channels:
        await ch.close()
    return peak


def gossip_tcp_flood() -> list[dict[str, Any]]:
    from meshcore import limits
    from testbed.localmesh import LocalMesh

    with LocalMesh(gossip_profile="local") as mesh:
        mesh.start_meshd()
        token = mesh.token(uses=2)
        target = mesh.start_agent("target", token)
        mesh.start_agent("peer", token)
        time.sleep(2)
        nodes = json.loads(mesh.meshctl("nodes", "-o", "json").stdout)["nodes"]
        port = next(n["gossip_port"] for n in nodes if n["name"] == "target")
        pid = target.popen.pid
        idle = rss_mb(pid)
        stop = threading.Event()
        head = struct.pack(">I", limits.GOSSIP_MAX_STREAM_BYTES)
        chunk = b"\0" * 65536
        opened = [0]

        def attacker() -> None:
            socks = []
            for _ in range(FLOOD_CONNECTIONS):
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=2)
                    s.setblocking(False)
                    s.send(head)
                    socks.append(s)
                except OSError:
                    pass
            opened[0] = len(socks)
            while not stop.is_set():
                for s in list(socks):
                    try:
                        s.send(chunk)
                    except BlockingIOError:
                        pass
                    except OSError:  # closed by the agent: reconnect, as a flood would
                        socks.remove(s)
                        try:
                            n = socket.create_connection(("127.0.0.1", port), timeout=2)
                            n.setblocking(False)
                            n.send(head)
                            socks.append(n)
                        except OSError:
                            pass
            for s in socks:
                s.close()

        t = threading.Thread(target=attacker, daemon=True)
        t.start()
        peak = idle
        deadline = time.monotonic() + FLOOD_S
        while time.monotonic() < deadline:
            peak = max(peak, rss_mb(pid))
            time.sleep(0.1)
        stop.set()
        t.join(10)
        alive = target.popen.poll() is None
        counters = json.loads(mesh.meshctl("status", "-o", "json", agent="target").stdout)["counters"]
    if not alive:
        raise RuntimeError("the flooded agent died")
    return [record("security", "agent_rss_mb_gossip_tcp_flood", peak, "MB", goal=80.0,
                   connections=FLOOD_CONNECTIONS, seconds=FLOOD_S, idle_rss_mb=round(idle, 1),
                   refused=int(counters.get("gossip_tcp_refused", 0)))]


def run() -> list[dict[str, Any]]:
    return fuzz() + slow_watchers() + gossip_tcp_flood()
