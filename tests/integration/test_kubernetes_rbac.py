"""deploy/kubernetes/rbac.yaml grants exactly the verbs the Kubernetes sync uses.

The sync runs its whole repertoire against the API server double (list and watch,
create, update, delete, and the gets of a name found taken) while the double
records each request as RBAC's authorizer sees it; the Role's rules must equal
that set, resource by resource: no verb missing, none to spare.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from meshd.sync.base import SyncLoop, SyncLoopConfig
from meshd.sync.kube_client import KubernetesConfig
from meshd.sync.kubernetes import KubernetesTarget
from testbed.doubles.kubernetes import KubernetesDouble
from testbed.doubles.sync_helpers import by_id, node, service, write_kubeconfig

RBAC = Path(__file__).resolve().parents[2] / "deploy/kubernetes/rbac.yaml"
FAST = SyncLoopConfig(debounce_s=0.005, resync_interval_s=60, backoff_initial_s=0.02, backoff_max_s=0.1)


def manifest() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_the_manifest_binds_the_role_to_the_account():
    m = manifest()
    assert sorted(m) == ["Role", "RoleBinding", "ServiceAccount"]
    sa, role, binding = m["ServiceAccount"], m["Role"], m["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "default"


async def test_role_verbs_are_exactly_the_calls_the_sync_makes(tmp_path):
    api = KubernetesDouble(token="t").start()
    target = KubernetesTarget(KubernetesConfig(kubeconfig=str(write_kubeconfig(tmp_path / "kc", api.url, "t")),
                                               timeout_s=2))
    loop = SyncLoop(target, FAST)
    try:
        # A name held by someone else's EndpointSlice: the sync's create is refused and it looks.
        api.put("endpointslices", {"metadata": {"name": "taken-mesh"}, "addressType": "IPv4",
                                   "endpoints": [{"addresses": ["10.9.9.9"]}], "ports": [{"port": 1}]})
        loop.start()
        vm = node("vm1", "10.1.0.7")
        loop.update([service("web", vm), service("old", vm), service("taken", vm)], by_id(vm))
        assert await loop.wait_synced(5)
        loop.update([service("web", vm, port=9000)], by_id(vm))  # update one, delete another
        assert await loop.wait_synced(5)
        assert api.get("services", "web")["spec"]["ports"][0]["port"] == 9000
        assert api.get("services", "old") is None and api.get("endpointslices", "taken-mesh") is not None
    finally:
        await loop.stop()
        await target.close()
        api.stop()

    used: dict[tuple[str, str], set[str]] = {}
    for r in api.authorized:
        assert r.namespace == "default", r
        used.setdefault((r.api_group, r.resource), set()).add(r.verb)
    granted = {(group, resource): set(rule["verbs"])
               for rule in manifest()["Role"]["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    assert used == granted
