"""The Kubernetes API behaviour the sync relies on, checked against the double and a real cluster.

Always runs against testbed/doubles/kubernetes.py. With KUBECONFIG set, the same
cases also run against that cluster, in a namespace created for the run and
deleted afterwards (the credential needs namespaces create/delete, and
services and endpointslices verbs in it). Without it, the "real" cases are
reported as skipped with that reason.
"""

from __future__ import annotations

import os
import secrets
import threading
from typing import Any

import pytest

from meshcore.errors import AlreadyExists, Conflict
from meshd.sync.kube_client import SERVICES, SLICES, KubeAPI, KubernetesConfig
from meshd.sync.kubernetes import KubernetesTarget
from testbed.doubles.kubernetes import KubernetesDouble
from testbed.doubles.sync_helpers import by_id, node, service, write_kubeconfig

TOKEN = "contract-token"
LABEL = {"mesh-contract": "yes"}


# A real cluster joins the suite only when KUBECONFIG is given, so CI neither skips nor reaches out.
@pytest.fixture(params=["double"] + (["real"] if os.environ.get("KUBECONFIG") else []))
def cluster(request, tmp_path):
    """(KubernetesConfig, KubeAPI) for one namespace of a double or a real cluster."""
    ns = f"mesh-contract-{secrets.token_hex(3)}"
    from kubernetes import client
    from kubernetes import config as kconfig

    d = KubernetesDouble(token=TOKEN).start() if request.param == "double" else None
    path = str(write_kubeconfig(tmp_path / "kc", d.url, TOKEN)) if d else os.environ["KUBECONFIG"].split(os.pathsep)[0]
    cfg = KubernetesConfig(kubeconfig=path, namespace=ns)
    core = client.CoreV1Api(kconfig.new_client_from_config(config_file=path))
    core.create_namespace({"metadata": {"name": ns}})  # the double, like a cluster, has only the usual ones
    api = KubeAPI(cfg)
    try:
        yield cfg, api
    finally:
        api.close()
        core.delete_namespace(ns)
        core.api_client.close()
        if d:
            d.stop()


def svc_body(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels or dict(LABEL)},
            "spec": {"ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}]}}


def test_create_get_and_already_exists(cluster):
    _, api = cluster
    created = api.create(SERVICES, svc_body("web"))
    assert created["metadata"]["resourceVersion"] and created["spec"]["clusterIP"]
    assert "selector" not in created["spec"] or not created["spec"]["selector"]
    with pytest.raises(AlreadyExists):
        api.create(SERVICES, svc_body("web"))
    assert api.get(SERVICES, "web")["metadata"]["uid"] == created["metadata"]["uid"]
    assert api.get(SERVICES, "nothing-here") is None


def test_replace_and_delete_are_conditional_on_resource_version(cluster):
    _, api = cluster
    v1 = api.create(SERVICES, svc_body("web"))
    v1["spec"]["ports"][0]["port"] = 81
    v2 = api.replace(SERVICES, v1)
    assert v2["metadata"]["resourceVersion"] != v1["metadata"]["resourceVersion"]
    assert v2["spec"]["clusterIP"] == v1["spec"]["clusterIP"]
    with pytest.raises(Conflict):
        api.replace(SERVICES, v1)  # stale resourceVersion
    with pytest.raises(Conflict):
        api.delete(SERVICES, "web", v1["metadata"]["resourceVersion"])
    api.delete(SERVICES, "web", v2["metadata"]["resourceVersion"])
    assert api.get(SERVICES, "web") is None
    api.delete(SERVICES, "web", v2["metadata"]["resourceVersion"])  # already gone: not an error


def test_list_by_label_and_watch_from_its_version(cluster):
    _, api = cluster
    api.create(SERVICES, svc_body("mine"))
    api.create(SERVICES, svc_body("other", {"team": "x"}))
    listed = api.list(SERVICES, "mesh-contract=yes")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["mine"]
    version = listed["metadata"]["resourceVersion"]

    events: list[tuple[str, str]] = []
    holder: list[Any] = []
    done = threading.Event()

    def follow() -> None:
        try:
            for ev in api.watch(SERVICES, "mesh-contract=yes", version, holder):
                if ev["type"] == "BOOKMARK":  # a real server may send these at any time
                    continue
                events.append((ev["type"], ev["object"]["metadata"]["name"]))
                if len(events) >= 3:
                    break
        except Exception as e:  # shown by the assertion below
            events.append(("EXC", repr(e)))
        finally:
            done.set()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    try:
        cur = api.create(SERVICES, svc_body("second"))
        api.create(SERVICES, svc_body("unlabelled", {"team": "x"}))
        cur["metadata"]["annotations"] = {"note": "changed"}
        cur = api.replace(SERVICES, cur)
        api.delete(SERVICES, "second", cur["metadata"]["resourceVersion"])
        assert done.wait(10), events
    finally:
        for r in holder:
            r.shutdown()
        t.join(10)
    assert events == [("ADDED", "second"), ("MODIFIED", "second"), ("DELETED", "second")]


def test_endpointslice_for_a_selectorless_service(cluster):
    _, api = cluster
    api.create(SERVICES, svc_body("web"))
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-mesh", "labels": {"kubernetes.io/service-name": "web", **LABEL}},
           "addressType": "IPv4", "endpoints": [{"addresses": ["10.99.0.1"], "conditions": {"ready": True}}],
           "ports": [{"name": "", "port": 80, "protocol": "TCP"}]}
    made = api.create(SLICES, eps)
    assert made["addressType"] == "IPv4" and made["endpoints"][0]["addresses"] == ["10.99.0.1"]
    listed = api.list(SLICES, "kubernetes.io/service-name=web")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["web-mesh"]
    assert listed["metadata"]["resourceVersion"]


async def test_kubernetes_target_round_trip(cluster):
    cfg, _ = cluster
    vm = node("contract-vm", "10.99.1.1")
    svcs = [service("web", vm, port=8080)]
    first = KubernetesTarget(cfg)
    second = KubernetesTarget(KubernetesConfig(kubeconfig=cfg.kubeconfig, namespace=cfg.namespace, watch=False))
    try:
        made = await first.reconcile(svcs, by_id(vm))
        assert made.created == ["EndpointSlice/web-mesh", "Service/web"]
        again = await second.reconcile(svcs, by_id(vm))  # a restarted coordinator
        assert again.writes == 0 and again.api_calls == 2
        gone = await second.reconcile([], by_id(vm))
        assert sorted(gone.deleted) == ["EndpointSlice/web-mesh", "Service/web"]
    finally:
        await first.close()
        await second.close()
