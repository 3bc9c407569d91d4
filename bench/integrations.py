"""Catalog sync to Kubernetes and Consul, measured against the API doubles on loopback.

- expose_to_k8s_p50/p99_ms: a catalog change handed to the SyncLoop (with
  200 services already synced) until its Service and EndpointSlice are both
  in the API server double; expose_to_consul_p50/p99_ms the same for the
  Consul catalog entry. The loop runs with its default 20 ms debounce.
  Side by side, the floor: the same objects written straight through the
  client (`*_direct_p50_ms`), so the loop's own cost is the difference.
- reconcile_writes_1000_noop: writes the API servers received from a freshly
  started target (a restarted coordinator) reconciling 1,000 unchanged services on 250 nodes;
  the API calls it needed are separate records.

The doubles serve from threads of this process, so absolute figures include
their work; they are comparable run to run, not to a real cluster.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from bench.common import median, percentile, record

BENCH = "integrations"
SAMPLES = 100
BASE = 200
NOOP_SERVICES, NOOP_NODES = 1000, 250
TOKEN = "bench-token"


async def _initial_then_noop(make_target, double, svcs, nodes) -> tuple[float, object, float]:
    """Sync everything once (seconds), then, as a restarted meshd would, again with nothing changed
    (the report and milliseconds; the double's counters are reset in between)."""
    first = make_target()
    t0 = time.perf_counter()
    try:
        await first.reconcile(svcs, nodes)
    finally:
        await first.close()
    initial_s = time.perf_counter() - t0
    double.reset_counters()
    restarted = make_target()
    t0 = time.perf_counter()
    try:
        report = await restarted.reconcile(svcs, nodes)
    finally:
        await restarted.close()
    return initial_s, report, (time.perf_counter() - t0) * 1000


async def _until(pred: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while not pred():
        if time.perf_counter() > deadline:
            raise TimeoutError("change not visible in time")
        await asyncio.sleep(0.0005)


async def _expose_latency(loop: Any, visible: Callable[[str], bool], nodes: dict, svc_factory: Callable,
                          vm: Any) -> list[float]:
    services = [svc_factory(f"base-{i}", vm) for i in range(BASE)]
    loop.update(services, nodes)
    if not await loop.wait_synced(120):
        raise TimeoutError(f"initial sync failed: {loop.status.last_error}")
    samples = []
    for i in range(SAMPLES):
        name = f"new-{i}"
        services = services + [svc_factory(name, vm)]
        t0 = time.perf_counter()
        loop.update(services, nodes)
        await _until(lambda: visible(name), 10)
        samples.append((time.perf_counter() - t0) * 1000)
        await loop.wait_synced(10)  # let the loop settle before the next sample
    return samples


async def _kubernetes(tmp: Path) -> tuple[list[dict[str, Any]], int, int]:
    from meshd.sync.base import SyncLoop
    from meshd.sync.kube_client import SERVICES, SLICES, KubeAPI, KubernetesConfig
    from meshd.sync.kube_objects import service_object, slice_object
    from meshd.sync.kubernetes import KubernetesTarget
    from testbed.doubles.kubernetes import KubernetesDouble
    from testbed.doubles.sync_helpers import by_id, node, service, write_kubeconfig

    out = []
    with KubernetesDouble(token=TOKEN) as api:
        cfg = KubernetesConfig(kubeconfig=str(write_kubeconfig(tmp / "kc", api.url, TOKEN)))
        vm = node("bench-vm", "10.7.0.1")
        loop = SyncLoop(KubernetesTarget(cfg))
        loop.start()
        try:
            def visible(n: str) -> bool:
                return api.get("services", n) is not None and api.get("endpointslices", n + "-mesh") is not None

            samples = await _expose_latency(loop, visible, by_id(vm), service, vm)
        finally:
            await loop.stop()
        direct_api = KubeAPI(cfg)
        direct = []
        try:
            for i in range(SAMPLES):
                s = service(f"direct-{i}", vm)
                t0 = time.perf_counter()
                await asyncio.to_thread(direct_api.create, SERVICES, service_object(s, vm, "default"))
                eps = slice_object(s, vm, vm.mesh_address, True, "default")
                await asyncio.to_thread(direct_api.create, SLICES, eps)
                direct.append((time.perf_counter() - t0) * 1000)
        finally:
            direct_api.close()
        out += [
            record(BENCH, "expose_to_k8s_p50_ms", percentile(samples, 50), "ms", goal=500, target="kubernetes",
                   samples=SAMPLES, existing_services=BASE),
            record(BENCH, "expose_to_k8s_p99_ms", percentile(samples, 99), "ms", goal=500, target="kubernetes",
                   samples=SAMPLES, existing_services=BASE),
            record(BENCH, "expose_to_k8s_direct_p50_ms", median(direct), "ms", target="kubernetes",
                   note="two creates through the client, no loop"),
        ]

    with KubernetesDouble(token=TOKEN) as api:
        cfg = KubernetesConfig(kubeconfig=str(write_kubeconfig(tmp / "kc2", api.url, TOKEN)), watch=False)
        vms = [node(f"vm{i}", f"10.8.{i // 250}.{i % 250 + 1}") for i in range(NOOP_NODES)]
        svcs = [service(f"svc-{i}", vms[i % NOOP_NODES], port=8000 + i % 1000) for i in range(NOOP_SERVICES)]
        initial_s, report, noop_ms = await _initial_then_noop(lambda: KubernetesTarget(cfg), api, svcs, by_id(*vms))
        out += [
            record(BENCH, "reconcile_calls_1000_noop_k8s", report.api_calls, "calls", goal=2, target="kubernetes"),
            record(BENCH, "reconcile_1000_noop_ms_k8s", noop_ms, "ms", target="kubernetes"),
            record(BENCH, "initial_sync_1000_s_k8s", initial_s, "s", target="kubernetes"),
        ]
        # The API server's own count is the truth; the target's count of the same writes goes in params.
        k8s_writes = (api.writes, report.writes)
    return out, k8s_writes, report.api_calls


async def _consul() -> tuple[list[dict[str, Any]], int, int]:
    from meshd.sync.base import SyncLoop
    from meshd.sync.consul import ConsulTarget, desired_entries
    from meshd.sync.consul_client import ConsulAPI, ConsulConfig
    from testbed.doubles.consul import ConsulDouble
    from testbed.doubles.sync_helpers import by_id, node, service

    out: list[dict[str, Any]] = []
    with ConsulDouble(acl_tokens={TOKEN}) as consul:
        cfg = ConsulConfig(address=consul.url, token=TOKEN)
        vm = node("bench-vm", "10.7.0.1")
        loop = SyncLoop(ConsulTarget(cfg))
        loop.start()
        try:
            samples = await _expose_latency(loop, lambda n: bool(consul.service_entries(n)), by_id(vm),
                                            lambda n, v: service(n, v, tags=["bench"], http_path="/health"), vm)
        finally:
            await loop.stop()
        direct_api = ConsulAPI(cfg)
        direct = []
        try:
            for i in range(SAMPLES):
                s = service(f"direct-{i}", vm, tags=["bench"], http_path="/health")
                entry = next(iter(desired_entries([s], by_id(vm))[0].values()))
                t0 = time.perf_counter()
                await direct_api.register(entry.body())
                direct.append((time.perf_counter() - t0) * 1000)
        finally:
            direct_api.close()
        out += [
            record(BENCH, "expose_to_consul_p50_ms", percentile(samples, 50), "ms", goal=500, target="consul",
                   anchor={"name": "Consul agent anti-entropy interval (ms)", "value": 60000},
                   samples=SAMPLES, existing_services=BASE),
            record(BENCH, "expose_to_consul_p99_ms", percentile(samples, 99), "ms", goal=500, target="consul",
                   anchor={"name": "Consul agent anti-entropy interval (ms)", "value": 60000},
                   samples=SAMPLES, existing_services=BASE),
            record(BENCH, "expose_to_consul_direct_p50_ms", median(direct), "ms", target="consul",
                   note="one catalog register through py-consul, no loop"),
        ]

    with ConsulDouble(acl_tokens={TOKEN}) as consul:
        cfg = ConsulConfig(address=consul.url, token=TOKEN)
        vms = [node(f"vm{i}", f"10.8.{i // 250}.{i % 250 + 1}") for i in range(NOOP_NODES)]
        svcs = [service(f"svc-{i}", vms[i % NOOP_NODES], port=8000 + i % 1000, tags=["t"], http_path="/")
                for i in range(NOOP_SERVICES)]
        initial_s, report, noop_ms = await _initial_then_noop(lambda: ConsulTarget(cfg), consul, svcs, by_id(*vms))
        out += [
            record(BENCH, "reconcile_calls_1000_noop_consul", report.api_calls, "calls", goal=None, target="consul",
                   nodes=NOOP_NODES, note="1 list of our nodes + 1 per node + 1 list of our checks"),
            record(BENCH, "reconcile_1000_noop_ms_consul", noop_ms, "ms", target="consul", nodes=NOOP_NODES),
            record(BENCH, "initial_sync_1000_s_consul", initial_s, "s", target="consul", nodes=NOOP_NODES),
        ]
        consul_writes = (consul.writes, report.writes)
    return out, consul_writes, report.api_calls


async def _main() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        k8s, k8s_writes, k8s_calls = await _kubernetes(Path(tmp))
    consul, consul_writes, consul_calls = await _consul()
    # Each write counted once, as the API servers saw it; the targets' own counts are a cross-check.
    noop = record(BENCH, "reconcile_writes_1000_noop", k8s_writes[0] + consul_writes[0], "writes", goal=0,
                  services=NOOP_SERVICES, nodes=NOOP_NODES, kubernetes_writes=k8s_writes[0],
                  consul_writes=consul_writes[0], kubernetes_writes_reported_by_target=k8s_writes[1],
                  consul_writes_reported_by_target=consul_writes[1], kubernetes_calls=k8s_calls,
                  consul_calls=consul_calls)
    return k8s + consul + [noop]


def run() -> list[dict[str, Any]]:
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:  # the doubles live in tests/
        sys.path.insert(0, root)
    return asyncio.run(_main()) + _takeover_and_proxy()


# -- SkyPilot: a managed job's name moving to its recovered node; meshctl proxy -----------------
TAKEOVER_TRIALS = 5
OBSERVERS = 3
PROXY_ROUNDS = 200


def _takeover_and_proxy() -> list[dict[str, Any]]:
    """Real meshd and agents on loopback (testbed/localmesh.py).

    Takeover: node `old-i` of job J holds the name `job-svc`; node `new-i` of J is running. The clock
    starts at old's Leave (the call its agent makes on a spot notice) and `new-i` exposes the name at
    once (SkyPilot's own re-provisioning of the VM is not part of the figure); it stops when every
    observer agent's DNS answers with new's address. Proxy: `meshctl proxy` (real processes: one on a
    joined node, one with only an admin certificate, whose connections go through meshd) in front of
    an HTTP server, first byte of 200 requests through each and directly to the service's mesh
    address, interleaved."""
    import socket
    import subprocess
    import threading

    import grpc

    from mesh.v1 import catalog_pb2, types_pb2
    from meshagent.identity import Identity
    from meshagent.uplink import mtls_channel
    from mesh.v1 import admission_pb2, admission_pb2_grpc, agent_pb2_grpc
    from testbed.localmesh import BIN, LocalMesh, resolve

    out: list[dict[str, Any]] = []
    with LocalMesh(lease_ttl_s=5, grace_s=5) as mesh:
        mesh.start_meshd()
        plain = mesh.token(uses=OBSERVERS + 1)
        observers = [f"obs{i}" for i in range(OBSERVERS)]
        for name in observers:
            mesh.start_agent(name, plain)
        job = mesh.meshctl("token", "create", "--uses", str(2 * TAKEOVER_TRIALS), "--label",
                           "sky.job=bench-job").stdout.strip()
        samples, failures = [], 0
        for i in range(TAKEOVER_TRIALS):
            old, new = f"old-{i}", f"new-{i}"
            mesh.start_agent(old, job)
            mesh.meshctl("expose", "--port", "7000", "--name", "job-svc", agent=old)
            mesh.start_agent(new, job)
            new_addr = mesh.agents[new].ready["address"]

            async def takeover() -> float | None:
                ident = Identity.load(mesh.root / old)
                async with mtls_channel(mesh.coordinator, ident) as ch, \
                        grpc.aio.insecure_channel(f"unix:{mesh.socket(new)}") as local:
                    t0 = time.monotonic()
                    await admission_pb2_grpc.AdmissionServiceStub(ch).Leave(admission_pb2.LeaveRequest(), timeout=10)
                    await agent_pb2_grpc.AgentServiceStub(local).Expose(catalog_pb2.ExposeRequest(
                        service=types_pb2.Service(name="job-svc", port=7000)), timeout=10)
                    deadline = t0 + 30
                    pending = set(observers)
                    while pending and time.monotonic() < deadline:
                        for o in sorted(pending):
                            try:
                                if resolve("job-svc.mesh", mesh.dns(o), timeout=0.5) == [new_addr]:
                                    pending.discard(o)
                            except Exception:
                                pass
                        await asyncio.sleep(0.01)
                    return None if pending else time.monotonic() - t0
            took = asyncio.run(takeover())
            if took is None:
                failures += 1
            else:
                samples.append(took)
            mesh.stop(mesh.agents.pop(old))
            mesh.meshctl("node", "remove", old)
            mesh.meshctl("unexpose", "job-svc", agent=new)
            mesh.stop(mesh.agents.pop(new))
            mesh.meshctl("node", "remove", new)
        if samples:
            out.append(record(BENCH, "job_recovery_name_takeover_s", median(samples), "s", goal=2, trials=TAKEOVER_TRIALS,
                              failures=failures, max_s=round(max(samples), 3), observers=OBSERVERS,
                              what="old node's Leave (as on a spot notice) -> the new node of the same job "
                                   "exposes -> every observer agent's DNS answers with the new node"))
        else:
            raise RuntimeError(f"no takeover completed ({failures} failures)")

        # meshctl proxy against a direct connection, in the same run
        page = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        host = mesh.agents[observers[0]].ready["address"]
        srv = socket.create_server((host, 0))
        port = srv.getsockname()[1]

        def serve() -> None:
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                with c:
                    c.recv(1024)
                    c.sendall(page)
        threading.Thread(target=serve, daemon=True).start()
        mesh.meshctl("expose", "--port", str(port), "--name", "ui", agent=observers[0])
        mesh.meshctl("admin", "cert", "bench-ops", "--out", str(mesh.root / "bench-ops"))

        def free_port() -> int:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]
        # on a joined node, through its agent's view; and with only an admin certificate, through meshd
        agent_env = {**mesh.env, "MESH_AGENT_SOCKET": mesh.socket(observers[1])}
        agent_env.pop("MESH_ADMIN", None)
        cert_env = {k: v for k, v in mesh.env.items() if k not in ("MESH_AGENT_SOCKET", "MESH_ADMIN")}
        cert_env.update(MESH_ADMIN_CERT_DIR=str(mesh.root / "bench-ops"), MESH_COORDINATOR=mesh.coordinator,
                        MESHD_ADMIN_SOCKET=str(mesh.root / "no-admin-socket.sock"))
        proxies = []
        for env, extra in ((agent_env, []), (cert_env, ["--via-coordinator"])):
            local_port = free_port()
            proxies.append((local_port, subprocess.Popen(
                [str(BIN / "meshctl"), "proxy", "ui", "--local-port", str(local_port), *extra], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)))
        try:
            def first_byte(h: str, p: int) -> float | None:
                t0 = time.perf_counter()
                try:
                    with socket.create_connection((h, p), timeout=2) as c:
                        c.sendall(b"GET / HTTP/1.1\r\nHost: ui\r\n\r\n")
                        if not c.recv(1):
                            return None
                except OSError:
                    return None
                return (time.perf_counter() - t0) * 1000
            for local_port, _ in proxies:
                deadline = time.monotonic() + 20
                while first_byte("127.0.0.1", local_port) is None and time.monotonic() < deadline:
                    time.sleep(0.1)
            via, via_meshd, direct = [], [], []
            lost = {"agent": 0, "coordinator": 0, "direct": 0}
            targets = (("agent", via, "127.0.0.1", proxies[0][0]), ("coordinator", via_meshd, "127.0.0.1",
                                                                   proxies[1][0]), ("direct", direct, host, port))
            for _ in range(PROXY_ROUNDS):
                for what, samples_, h, p in targets:
                    ms = first_byte(h, p)
                    if ms is None:
                        lost[what] += 1
                    else:
                        samples_.append(ms)
        finally:
            for _, proxy in proxies:
                proxy.terminate()
                proxy.wait(10)
            srv.close()
        if not via or not via_meshd or not direct:
            raise RuntimeError(f"a meshctl proxy answered nothing (lost: {lost})")
        out += [
            record(BENCH, "proxy_first_byte_ms", percentile(via, 99), "ms", rounds=PROXY_ROUNDS,
                   failures=lost["agent"], p50_ms=round(median(via), 3),
                   what="p99 first byte of an HTTP answer through `meshctl proxy` on a joined node"),
            record(BENCH, "proxy_first_byte_ms_via_coordinator", percentile(via_meshd, 99), "ms", rounds=PROXY_ROUNDS,
                   failures=lost["coordinator"], p50_ms=round(median(via_meshd), 3),
                   what="p99 first byte through `meshctl proxy` with only an admin certificate: a new Tunnel "
                        "through meshd (mTLS) per connection"),
            record(BENCH, "direct_first_byte_ms", percentile(direct, 99), "ms", rounds=PROXY_ROUNDS,
                   failures=lost["direct"], p50_ms=round(median(direct), 3),
                   what="p99 first byte straight to the service's mesh address"),
            record(BENCH, "proxy_first_byte_ratio_vs_direct", percentile(via, 99) / percentile(direct, 99), "ratio",
                   what="p99 through meshctl proxy / p99 direct, same run, interleaved"),
            record(BENCH, "proxy_first_byte_ratio_vs_direct_via_coordinator",
                   percentile(via_meshd, 99) / percentile(direct, 99), "ratio",
                   what="p99 through meshctl proxy via meshd / p99 direct, same run, interleaved"),
        ]
    return out
