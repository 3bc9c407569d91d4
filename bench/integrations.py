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
    return asyncio.run(_main())
