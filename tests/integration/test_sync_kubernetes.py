"""Kubernetes sync against the API server double: objects, ownership, drift, watches, faults, restart."""

from __future__ import annotations

import asyncio

import pytest

from mesh.v1 import types_pb2
from meshcore.errors import ConfigError, PermissionDenied
from meshd.sync.base import SyncLoop, SyncLoopConfig
from meshd.sync.kube_client import KubernetesConfig
from meshd.sync.kubernetes import KubernetesTarget
from testbed.doubles.kubernetes import KubernetesDouble
from testbed.doubles.sync_helpers import by_id, node, service, write_kubeconfig
from tests.meshfix import eventually

TOKEN = "k8s-token"
MANAGED = {"app.kubernetes.io/managed-by": "mesh"}
# Periodic resync far away: drift repairs below must come from the watches.
FAST = SyncLoopConfig(debounce_s=0.005, resync_interval_s=60, backoff_initial_s=0.02, backoff_max_s=0.1)


@pytest.fixture
def api():
    d = KubernetesDouble(token=TOKEN).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def kubeconfig(api, tmp_path):
    return write_kubeconfig(tmp_path / "kubeconfig", api.url, TOKEN)


@pytest.fixture
async def target(kubeconfig):
    t = KubernetesTarget(KubernetesConfig(kubeconfig=str(kubeconfig), timeout_s=2))
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
async def loop(target):
    sl = SyncLoop(target, FAST)
    sl.start()
    try:
        yield sl
    finally:
        await sl.stop()


def endpoints(api: KubernetesDouble, name: str) -> list[tuple[list[str], bool]] | None:
    s = api.get("endpointslices", f"{name}-mesh")
    if s is None:
        return None
    return [(e["addresses"], e["conditions"]["ready"]) for e in s["endpoints"]]


async def test_creates_selectorless_service_and_endpointslice(api, target):
    vm = node("vm1", "10.1.0.7")
    report = await target.reconcile([service("qwen", vm, port=8000)], by_id(vm))
    assert report.created == ["EndpointSlice/qwen-mesh", "Service/qwen"] and not report.errors

    svc = api.get("services", "qwen")
    assert "selector" not in svc["spec"] and svc["spec"]["type"] == "ClusterIP"
    # Named (after the service), so CoreDNS serves _qwen._tcp.qwen.<ns>.svc.cluster.local SRV.
    assert svc["spec"]["ports"] == [{"name": "qwen", "port": 8000, "targetPort": 8000, "protocol": "TCP"}]
    assert svc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mesh"
    assert svc["metadata"]["annotations"]["mesh/node-id"] == "n-vm1"
    eps = api.get("endpointslices", "qwen-mesh")
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "qwen"
    assert eps["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mesh"
    assert eps["addressType"] == "IPv4"
    assert endpoints(api, "qwen") == [(["10.1.0.7"], True)]
    assert eps["ports"] == [{"name": "qwen", "port": 8000, "protocol": "TCP"}]

    v6 = node("vm6", "fd00::6")
    await target.reconcile([service("qwen", vm), service("dns", v6, port=53, udp=True)], by_id(vm, v6))
    assert api.get("endpointslices", "dns-mesh")["addressType"] == "IPv6"
    assert api.get("services", "dns")["spec"]["ports"][0]["protocol"] == "UDP"


async def test_updates_and_deletes_to_match(api, target):
    vm = node("vm1", "10.1.0.7")
    await target.reconcile([service("web", vm), service("old", vm)], by_id(vm))
    cluster_ip = api.get("services", "web")["spec"]["clusterIP"]

    report = await target.reconcile([service("web", vm, port=9000)], by_id(vm))
    assert sorted(report.updated) == ["EndpointSlice/web-mesh", "Service/web"]
    assert sorted(report.deleted) == ["EndpointSlice/old-mesh", "Service/old"]
    assert api.get("services", "web")["spec"]["ports"][0]["port"] == 9000
    assert api.get("services", "web")["spec"]["clusterIP"] == cluster_ip  # replaced in place
    assert api.names("services") == ["web"] and api.names("endpointslices") == ["web-mesh"]

    vm.state = types_pb2.NODE_STATE_UNREACHABLE
    await target.reconcile([service("web", vm, port=9000)], by_id(vm))
    assert endpoints(api, "web") == [(["10.1.0.7"], False)]

    moved = node("vm1", "fd00::7")  # addressType is immutable: the slice is recreated
    await target.reconcile([service("web", moved, port=9000)], by_id(moved))
    assert api.get("endpointslices", "web-mesh")["addressType"] == "IPv6"

    moved.state = types_pb2.NODE_STATE_LEFT
    await target.reconcile([service("web", moved, port=9000)], by_id(moved))
    assert api.names("services") == [] and api.names("endpointslices") == []


async def test_drift_is_repaired_through_the_watch(api, loop):
    vm = node("vm1", "10.1.0.7")
    loop.update([service("web", vm)], by_id(vm))
    assert await loop.wait_synced(5)

    api.remove("services", "web")  # someone deleted our Service
    assert await eventually(lambda: api.get("services", "web") is not None, 5)

    eps = api.get("endpointslices", "web-mesh")  # someone edited our EndpointSlice
    eps["endpoints"][0]["addresses"] = ["10.66.6.6"]
    api.put("endpointslices", eps)
    assert await eventually(lambda: endpoints(api, "web") == [(["10.1.0.7"], True)], 5)

    svc = api.get("services", "web")  # someone added a selector and changed the port
    svc["spec"]["selector"] = {"app": "web"}
    svc["spec"]["ports"][0]["port"] = 1
    svc["metadata"]["labels"]["team"] = "theirs"  # their own label is not drift
    api.put("services", svc)
    assert await eventually(lambda: "selector" not in api.get("services", "web")["spec"], 5)
    fixed = api.get("services", "web")
    assert fixed["spec"]["ports"][0]["port"] == 8000 and fixed["metadata"]["labels"]["team"] == "theirs"


async def test_unmanaged_objects_untouched_and_collision_reported(api, loop):
    theirs = {"metadata": {"name": "postgres", "labels": {"team": "db"}},
              "spec": {"selector": {"app": "pg"}, "ports": [{"port": 5432}]}}
    api.put("services", theirs)
    api.put("services", {"metadata": {"name": "bystander"}, "spec": {"ports": [{"port": 1}]}})
    before = api.get("services", "postgres")
    vm = node("vm1")
    loop.update([service("postgres", vm), service("web", vm)], by_id(vm))
    assert await loop.wait_synced(5)

    errors = loop.errors()
    assert list(errors) == ["postgres"]
    assert "exists and is not managed by the mesh" in errors["postgres"]
    assert api.get("services", "postgres") == before  # not overwritten
    assert api.get("endpointslices", "postgres-mesh") is None  # nothing routed to their Service
    assert api.get("services", "web") is not None

    loop.update([], by_id(vm))  # unexpose everything: only ours goes
    assert await loop.wait_synced(5)
    assert api.names("services") == ["bystander", "postgres"] and api.names("endpointslices") == []
    assert loop.errors() == {}


async def test_a_name_taken_after_we_looked_gets_our_endpoints_back(api, target):
    theirs = api.put("services", {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}})
    real_get, looks = target.api.get, []

    def get_racing(resource, name):  # the first look happens just before their create
        looks.append(name)
        return None if len(looks) == 1 else real_get(resource, name)

    target.api.get = get_racing
    vm = node("vm1")
    report = await target.reconcile([service("web", vm)], by_id(vm))
    assert "not managed by the mesh" in report.errors["web"]
    assert report.deleted == ["EndpointSlice/web-mesh"]  # created, then taken back
    assert api.get("endpointslices", "web-mesh") is None
    assert api.get("services", "web") == theirs


@pytest.mark.parametrize("fault", ["500", "409", "unreachable", "slow"])
async def test_faults_are_retried_and_the_latest_state_wins(api, loop, fault):
    vm = node("vm1")
    loop.update([service("one", vm)], by_id(vm))
    assert await loop.wait_synced(5)
    if fault in ("500", "409"):
        api.faults.fail_next(3, int(fault))
    elif fault == "unreachable":
        api.faults.unreachable = True
    else:
        api.faults.latency_s = 0.05
    loop.update([service("one", vm), service("two", vm)], by_id(vm))
    await asyncio.sleep(0.05)
    loop.update([service("two", vm, port=9001), service("three", vm)], by_id(vm))
    if fault == "unreachable":
        assert await eventually(lambda: loop.status.failures >= 2, 5)
        assert "unreachable" in loop.status.last_error
        api.faults.unreachable = False
    assert await loop.wait_synced(10), loop.status.last_error
    assert api.names("services") == ["three", "two"]
    assert api.get("services", "two")["spec"]["ports"][0]["port"] == 9001
    assert api.names("endpointslices") == ["three-mesh", "two-mesh"]
    if fault in ("500", "unreachable"):
        assert loop.status.reconciles >= 3  # a failed attempt was retried


async def test_calls_slower_than_the_timeout_fail_and_are_retried(api, kubeconfig):
    t = KubernetesTarget(KubernetesConfig(kubeconfig=str(kubeconfig), timeout_s=0.3))
    sl = SyncLoop(t, FAST)
    sl.start()
    try:
        vm = node("vm1")
        sl.update([service("one", vm)], by_id(vm))
        assert await sl.wait_synced(5)
        api.faults.latency_s = 0.6  # answers come after the client gave up; some writes land anyway
        sl.update([service("two", vm, port=9001)], by_id(vm))
        assert await eventually(lambda: sl.status.failures >= 2, 10)
        assert "unreachable" in sl.status.last_error
        api.faults.latency_s = 0.0
        assert await sl.wait_synced(10), sl.status.last_error
        assert api.names("services") == ["two"] and api.get("services", "two")["spec"]["ports"][0]["port"] == 9001
    finally:
        await sl.stop()


async def test_restart_with_nothing_changed_makes_no_writes(api, kubeconfig, target):
    vms = [node(f"vm{i}", f"10.2.0.{i + 1}") for i in range(4)]
    svcs = [service(f"svc-{i}", vms[i % 4], port=8000 + i) for i in range(30)]
    await target.reconcile(svcs, by_id(*vms))
    api.reset_counters()

    restarted = KubernetesTarget(KubernetesConfig(kubeconfig=str(kubeconfig), watch=False))
    try:
        report = await restarted.reconcile(svcs, by_id(*vms))
    finally:
        await restarted.close()
    assert report.writes == 0 and api.writes == 0 and not report.changed
    assert report.api_calls == 2 and api.calls == {"GET": 2}  # one list per kind, no relist per object


async def test_changes_after_the_first_list_use_the_view_not_a_relist(api, target):
    vm = node("vm1")
    await target.reconcile([service("a", vm)], by_id(vm))
    api.reset_counters()
    report = await target.reconcile([service("a", vm), service("b", vm)], by_id(vm))
    assert report.created == ["EndpointSlice/b-mesh", "Service/b"]
    # No list: a look at the new name, then two creates, endpoints first (a watch may
    # reconnect meanwhile; it is not a list).
    assert api.lists == {} and api.calls.get("POST") == 2
    assert [c for c in api.log if c[0] != "GET" or "/services/" in c[1] or "/endpointslices/" in c[1]] == [
        ("GET", "/api/v1/namespaces/default/services/b", 404),
        ("POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", 201),
        ("POST", "/api/v1/namespaces/default/services", 201)]


async def test_watch_410_gone_is_followed_by_a_relist(kubeconfig, api):
    api.history = 3
    t = KubernetesTarget(KubernetesConfig(kubeconfig=str(kubeconfig)))
    sl = SyncLoop(t, FAST)
    sl.start()
    try:
        vm = node("vm1")
        sl.update([service("web", vm)], by_id(vm))
        assert await sl.wait_synced(5)
        api.reset_counters()
        # A burst larger than the kept history: a watcher that misses it sees 410 Gone.
        with api.lock:
            for i in range(6):
                api.put("services", {"metadata": {"name": f"noise-{i}", "labels": MANAGED},
                                     "spec": {"ports": [{"port": 1}]}})
        # The noise is labelled ours but not in the catalog: the relist finds it and the sync deletes it.
        assert await eventually(lambda: api.names("services") == ["web"], 10)
        assert api.lists == {"services": 1, "endpointslices": 1}
    finally:
        await sl.stop()


async def test_without_watch_drift_is_found_at_resync(kubeconfig, api):
    t = KubernetesTarget(KubernetesConfig(kubeconfig=str(kubeconfig), watch=False))
    sl = SyncLoop(t, SyncLoopConfig(debounce_s=0.005, resync_interval_s=0.2, backoff_initial_s=0.02))
    sl.start()
    try:
        vm = node("vm1")
        sl.update([service("web", vm)], by_id(vm))
        assert await sl.wait_synced(5)
        api.remove("endpointslices", "web-mesh")
        assert await eventually(lambda: api.get("endpointslices", "web-mesh") is not None, 5)
    finally:
        await sl.stop()


async def test_wrong_credentials_give_a_clear_error(api, tmp_path):
    bad = write_kubeconfig(tmp_path / "bad", api.url, "wrong-token")
    t = KubernetesTarget(KubernetesConfig(kubeconfig=str(bad)))
    vm = node("vm1")
    try:
        with pytest.raises(PermissionDenied) as err:
            await t.reconcile([service("web", vm)], by_id(vm))
    finally:
        await t.close()
    assert "401" in str(err.value) and "\n" not in str(err.value)
    assert api.names("services") == []


async def test_config_rules_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        KubernetesConfig(kubeconfig=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="RFC 1123"):
        KubernetesConfig(namespace="Not_OK")
    with pytest.raises(ConfigError, match="not both"):
        KubernetesConfig(in_cluster=True, kubeconfig=str(tmp_path))


async def test_close_ends_the_watch_threads(kubeconfig, api):
    import threading

    def watchers() -> set[threading.Thread]:
        return {th for th in threading.enumerate() if th.name.startswith("k8s-watch-")}

    before = watchers()  # other tests' threads may still be winding down; only ours count
    t = KubernetesTarget(KubernetesConfig(kubeconfig=str(kubeconfig)))
    vm = node("vm1")
    await t.reconcile([service("web", vm)], by_id(vm))
    ours = watchers() - before
    assert len(ours) == 2
    await t.close()
    assert await eventually(lambda: not any(th.is_alive() for th in ours), 5)


async def test_a_stored_name_starting_with_a_digit_is_reported_not_mirrored(api, target):
    vm = node("vm1", "10.1.0.7")
    report = await target.reconcile([service("1web", vm, port=80), service("web", vm, port=81)], by_id(vm))
    assert api.get("services", "web") is not None and api.get("services", "1web") is None
    assert "not mirrored to Kubernetes" in report.errors["1web"] and "start with a letter" in report.errors["1web"]
