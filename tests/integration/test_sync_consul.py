"""Consul sync against the Consul HTTP double: registration, ownership, drift, faults, ACL, restart."""

from __future__ import annotations

import asyncio

import pytest

from mesh.v1 import types_pb2
from meshcore.errors import ConfigError, PermissionDenied, Unavailable
from meshd.sync.base import SyncLoop, SyncLoopConfig
from meshd.sync.consul import ConsulTarget
from meshd.sync.consul_client import ConsulConfig
from testbed.doubles.consul import ConsulDouble
from testbed.doubles.sync_helpers import by_id, node, service
from tests.meshfix import eventually

TOKEN = "s3cret-token"
FAST = SyncLoopConfig(debounce_s=0.005, resync_interval_s=60, backoff_initial_s=0.02, backoff_max_s=0.1)


@pytest.fixture
def consul():
    d = ConsulDouble(acl_tokens={TOKEN}).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
async def target(consul):
    # No watch here: these tests count calls exactly; the watch has its own tests.
    t = ConsulTarget(ConsulConfig(address=consul.url, token=TOKEN, timeout_s=2, watch=False))
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


def entry(consul: ConsulDouble, name: str) -> dict | None:
    found = consul.service_entries(name)
    assert len(found) <= 1, found
    return found[0] if found else None


async def test_register_update_and_deregister(consul, target):
    vm1 = node("vm1", "10.1.0.7", labels={"gpu.model": "L4", "sky.cluster": "qwen"})
    svc = service("qwen", vm1, port=8000, tags=["vllm"], http_path="/health")
    report = await target.reconcile([svc], by_id(vm1))
    assert report.created == ["vm1/qwen"] and report.writes == 1 and not report.errors

    e = entry(consul, "qwen")
    assert (e["Node"], e["Address"], e["ServicePort"], e["ServiceTags"]) == ("vm1", "10.1.0.7", 8000, ["vllm"])
    # Not an "external-node": consul-esm, which selects nodes by that meta, leaves our checks alone.
    assert e["NodeMeta"] == {"managed-by": "mesh", "mesh-node-id": "n-vm1"}
    assert e["ServiceMeta"] == {"mesh-node-id": "n-vm1", "region": "us-east-1", "managed-by": "mesh",
                                "protocol": "tcp", "label-gpu_model": "L4", "label-sky_cluster": "qwen"}
    check = consul.check_of("vm1", "qwen")
    assert check["Status"] == "passing"
    assert check["Definition"] == {"HTTP": "http://10.1.0.7:8000/health", "Interval": "10s"}

    # Same input again: nothing to write, and no reads either (the view is cached).
    again = await target.reconcile([svc], by_id(vm1))
    assert (again.writes, again.api_calls, again.changed) == (0, 0, False)

    moved = service("qwen", vm1, port=9000, tags=["vllm", "v2"], tcp=True)
    report = await target.reconcile([moved], by_id(vm1))
    assert report.updated == ["vm1/qwen"]
    e = entry(consul, "qwen")
    assert (e["ServicePort"], e["ServiceTags"]) == (9000, ["vllm", "v2"])
    assert consul.check_of("vm1", "qwen")["Definition"] == {"TCP": "10.1.0.7:9000", "Interval": "10s"}

    # Unexpose: the service goes, and its node with it once it has nothing left.
    report = await target.reconcile([], by_id(vm1))
    assert report.deleted == ["vm1/qwen"]
    assert entry(consul, "qwen") is None and "vm1" not in consul.nodes


async def test_node_states_drive_check_status_and_deregistration(consul, target):
    a, b = node("vm-a", "10.1.0.8"), node("vm-b", "fd00::8")
    svcs = [service("alpha", a), service("beta", b, udp=True)]
    await target.reconcile(svcs, by_id(a, b))
    assert entry(consul, "beta")["ServiceMeta"]["protocol"] == "udp"

    a.state = types_pb2.NODE_STATE_UNREACHABLE  # grace period: kept, but critical
    await target.reconcile(svcs, by_id(a, b))
    assert consul.check_of("vm-a", "alpha")["Status"] == "critical"
    assert entry(consul, "alpha") is not None

    a.state = types_pb2.NODE_STATE_LEFT  # left the mesh: gone at once
    report = await target.reconcile(svcs, by_id(a, b))
    assert report.deleted == ["vm-a/alpha"] and entry(consul, "alpha") is None

    report = await target.reconcile(svcs, by_id(a))  # node b vanished from the catalog
    assert entry(consul, "beta") is None and consul.nodes == {}


async def test_unmanaged_entries_are_never_touched_and_collisions_reported(consul, target):
    consul.put_service("db-host", "10.9.9.9", {"ID": "postgres", "Service": "postgres", "Port": 5432})
    consul.put_service("vm1", "10.9.9.10", {"ID": "agent-svc", "Service": "agent-svc", "Port": 1})
    mine, theirs = node("vm2", "10.1.0.2"), node("vm1", "10.1.0.1")
    report = await target.reconcile([service("web", mine), service("api", theirs)], by_id(mine, theirs))

    assert "api" in report.errors and "not manage" in report.errors["api"]
    assert entry(consul, "web") is not None and entry(consul, "api") is None
    assert consul.nodes["vm1"]["Address"] == "10.9.9.10"  # the foreign node was not overwritten
    # Unexposing everything removes only what we created.
    await target.reconcile([], by_id(mine, theirs))
    assert entry(consul, "postgres") is not None and entry(consul, "agent-svc") is not None
    assert set(consul.nodes) == {"db-host", "vm1"}


async def test_drift_is_repaired_at_once_through_the_watch(consul):
    t = ConsulTarget(ConsulConfig(address=consul.url, token=TOKEN))
    sl = SyncLoop(t, FAST)  # periodic resync a minute away: repairs here come from the watch
    sl.start()
    try:
        vm = node("vm1")
        sl.update([service("web", vm, tags=["a"]), service("api", vm)], by_id(vm))
        assert await sl.wait_synced(5)
        assert await eventually(lambda: t._follower is not None and t.api.watch_calls >= 2, 5)
        reads = sum(1 for m, p, _ in consul.log if p == "/v1/catalog/nodes")
        # Our own changes wake the watch but cost one check, not a full read.
        sl.update([service("web", vm, tags=["a"]), service("api", vm, port=9)], by_id(vm))
        assert await sl.wait_synced(5)
        await asyncio.sleep(0.2)
        assert sum(1 for m, p, _ in consul.log if p == "/v1/catalog/nodes") == reads

        consul._deregister({"Node": "vm1", "ServiceID": "web"})  # by hand
        assert await eventually(lambda: entry(consul, "web") is not None, 5)
        consul.put_service("vm1", "10.0.0.5", {"ID": "api", "Service": "api", "Port": 9, "Tags": ["hand-made"]},
                           node_meta={"managed-by": "mesh", "mesh-node-id": "n-vm1"})
        assert await eventually(lambda: (entry(consul, "api") or {}).get("ServiceTags") == [], 5)
    finally:
        await sl.stop()


async def test_drift_is_repaired_at_resync(consul):
    t = ConsulTarget(ConsulConfig(address=consul.url, token=TOKEN, watch=False))
    sl = SyncLoop(t, SyncLoopConfig(debounce_s=0.005, resync_interval_s=0.2, backoff_initial_s=0.02))
    sl.start()
    try:
        vm = node("vm1")
        sl.update([service("web", vm, tags=["a"])], by_id(vm))
        assert await sl.wait_synced(5)
        # By hand: deregister our service, and tamper with the node's meta.
        consul._deregister({"Node": "vm1", "ServiceID": "web"})
        assert entry(consul, "web") is None
        assert await eventually(lambda: entry(consul, "web") is not None, 5)
        consul.put_service("vm1", "10.0.0.5", {"ID": "web", "Service": "web", "Port": 1, "Tags": ["edited"]},
                           node_meta={"managed-by": "mesh", "mesh-node-id": "n-vm1"})
        assert await eventually(lambda: (entry(consul, "web") or {}).get("ServiceTags") == ["a"], 5)
        assert entry(consul, "web")["ServicePort"] == 8000
    finally:
        await sl.stop()


async def test_bad_acl_token_gives_one_clear_error(consul):
    t = ConsulTarget(ConsulConfig(address=consul.url, token="not-a-token"))
    vm = node("vm1")
    try:
        with pytest.raises(PermissionDenied) as err:
            await t.reconcile([service("web", vm)], by_id(vm))
        msg = str(err.value)
        assert "refused the ACL token" in msg and "ACL not found" in msg and "service:write" in msg
        assert "\n" not in msg
        with pytest.raises(PermissionDenied):
            await t.verify()
        # In a loop the error is kept for display and the loop keeps running.
        sl = SyncLoop(t, FAST)
        sl.start()
        sl.update([service("web", vm)], by_id(vm))
        assert await eventually(lambda: sl.status.failures >= 2, 5)
        assert "refused the ACL token" in sl.status.last_error
        assert sl._task is not None and not sl._task.done()
        await sl.stop()
    finally:
        await t.close()
    assert consul.services == {}


async def test_anonymous_token_is_refused_clearly(consul):
    t = ConsulTarget(ConsulConfig(address=consul.url))
    try:
        with pytest.raises(PermissionDenied, match="Permission denied"):
            await t.verify()
    finally:
        await t.close()


@pytest.mark.parametrize("fault", ["500", "unreachable", "slow"])
async def test_faults_are_retried_and_the_latest_state_wins(consul, loop, fault):
    vm = node("vm1")
    loop.update([service("one", vm)], by_id(vm))
    assert await loop.wait_synced(5)
    if fault == "500":
        consul.faults.fail_next(4, 500)
    elif fault == "unreachable":
        consul.faults.unreachable = True
    else:
        consul.faults.latency_s = 0.05
    # Several catalog changes during the fault; only the last must end up in Consul.
    loop.update([service("one", vm), service("two", vm)], by_id(vm))
    await asyncio.sleep(0.05)
    loop.update([service("two", vm, port=9001), service("three", vm)], by_id(vm))
    if fault == "unreachable":
        assert await eventually(lambda: loop.status.failures >= 2, 5)
        assert "unreachable" in loop.status.last_error
        consul.faults.unreachable = False
    assert await loop.wait_synced(10), loop.status.last_error
    assert entry(consul, "one") is None
    assert entry(consul, "two")["ServicePort"] == 9001 and entry(consul, "three") is not None
    if fault != "slow":
        assert loop.status.reconciles >= 3  # at least one failed attempt was retried


async def test_calls_slower_than_the_timeout_fail_and_are_retried(consul):
    t = ConsulTarget(ConsulConfig(address=consul.url, token=TOKEN, timeout_s=0.3))
    sl = SyncLoop(t, FAST)
    sl.start()
    try:
        vm = node("vm1")
        sl.update([service("one", vm)], by_id(vm))
        assert await sl.wait_synced(5)
        consul.faults.latency_s = 0.6  # answers come after the client gave up; some writes land anyway
        sl.update([service("two", vm, port=9001)], by_id(vm))
        assert await eventually(lambda: sl.status.failures >= 2, 10)
        assert "unreachable" in sl.status.last_error
        consul.faults.latency_s = 0.0
        assert await sl.wait_synced(10), sl.status.last_error
        assert entry(consul, "one") is None and entry(consul, "two")["ServicePort"] == 9001
    finally:
        await sl.stop()


async def test_restart_with_nothing_changed_makes_no_writes(consul, target):
    vms = [node(f"vm{i}", f"10.2.0.{i + 1}") for i in range(5)]
    svcs = [service(f"svc-{i}", vms[i % 5], port=8000 + i, tags=["t"], http_path="/") for i in range(20)]
    await target.reconcile(svcs, by_id(*vms))
    consul.reset_counters()

    restarted = ConsulTarget(ConsulConfig(address=consul.url, token=TOKEN))
    try:
        report = await restarted.reconcile(svcs, by_id(*vms))
    finally:
        await restarted.close()
    assert report.writes == 0 and consul.writes == 0 and not report.changed
    assert report.api_calls == 1 + 5 + 1  # list our nodes, read each, list our checks


async def test_config_rules_are_named():
    with pytest.raises(ConfigError, match="http"):
        ConsulConfig(address="ftp://x:1")
    with pytest.raises(ConfigError, match="together"):
        ConsulConfig(client_cert="/c.pem")


async def test_config_token_wins_over_environment(consul, monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    t = ConsulTarget(ConsulConfig(address=consul.url, token=TOKEN))
    try:
        assert (await t.verify())["Config"]["Datacenter"] == "dc1"
    finally:
        await t.close()


async def test_unreachable_consul_is_unavailable_not_a_traceback():
    t = ConsulTarget(ConsulConfig(address="http://127.0.0.1:9", timeout_s=1))
    try:
        with pytest.raises(Unavailable, match="unreachable"):
            await t.verify()
    finally:
        await t.close()


@pytest.fixture
def pki(tmp_path):
    from testbed.doubles.tls import issue, make_ca

    ca = make_ca(tmp_path, "consul-ca")
    other = make_ca(tmp_path, "other-ca")
    return {"ca": ca[0], "server": issue(tmp_path, ca, "consul-server"),
            "client": issue(tmp_path, ca, "mesh-sync", client=True), "other_ca": other[0]}


async def test_tls_with_ca_file_and_client_certificate(pki):
    d = ConsulDouble(acl_tokens={TOKEN})
    d.tls = (str(pki["server"].cert), str(pki["server"].key))
    d.tls_client_ca = str(pki["ca"].cert)
    d.start()
    vm = node("vm1")
    try:
        good = ConsulTarget(ConsulConfig(address=d.url, token=TOKEN, ca_file=str(pki["ca"].cert),
                                         client_cert=str(pki["client"].cert), client_key=str(pki["client"].key)))
        try:
            assert (await good.reconcile([service("web", vm)], by_id(vm))).created == ["vm1/web"]
        finally:
            await good.close()
        assert entry(d, "web") is not None

        wrong_ca = ConsulTarget(ConsulConfig(address=d.url, token=TOKEN, ca_file=str(pki["other_ca"].cert),
                                             client_cert=str(pki["client"].cert), client_key=str(pki["client"].key)))
        no_cert = ConsulTarget(ConsulConfig(address=d.url, token=TOKEN, ca_file=str(pki["ca"].cert)))
        try:
            with pytest.raises(Unavailable, match="TLS") as err:
                await wrong_ca.verify()
            assert "certificate" in str(err.value) and "\n" not in str(err.value), str(err.value)
            with pytest.raises(Unavailable):
                await no_cert.verify()  # the server requires a client certificate
        finally:
            await wrong_ca.close()
            await no_cert.close()
    finally:
        d.stop()
