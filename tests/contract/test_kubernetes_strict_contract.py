"""The Kubernetes API's strictness, driven by the official `kubernetes` client against the double and a real cluster.

Same arrangement as test_kubernetes_contract.py: always against
testbed/doubles/kubernetes.py; with KUBECONFIG set, also against that cluster
in a namespace made for the run (the credential needs namespaces
create/delete/list and services and endpointslices verbs).
"""

from __future__ import annotations

import json
import os
import secrets
import threading

import pytest

from testbed.doubles.kubernetes import KubernetesDouble
from testbed.doubles.sync_helpers import write_kubeconfig

TOKEN = "contract-token"
JSON_PATCH, MERGE_PATCH = "application/json-patch+json", "application/merge-patch+json"
SMP, APPLY = "application/strategic-merge-patch+json", "application/apply-patch+yaml"


class Cluster:
    def __init__(self, path: str, ns: str) -> None:
        from kubernetes import client
        from kubernetes import config as kconfig

        self.api_client = kconfig.new_client_from_config(config_file=path)
        self.core, self.disc, self.ns = client.CoreV1Api(self.api_client), client.DiscoveryV1Api(self.api_client), ns
        self.version = client.VersionApi(self.api_client)
        self.kubeconfig = path

    def raw(self, method: str, path: str, body=None, content_type: str = "application/json", **query):
        """One call through the official client's transport, answering (status, decoded JSON)."""
        method_, url, headers, body_, _ = self.api_client.param_serialize(
            method, path, query_params=list(query.items()), body=body, auth_settings=["BearerToken"],
            header_params={"Content-Type": content_type, "Accept": "application/json"})
        r = self.api_client.call_api(method_, url, header_params=headers, body=body_)
        data = r.read()
        return r.status, json.loads(data or b"null")


@pytest.fixture(params=["double"] + (["real"] if os.environ.get("KUBECONFIG") else []))
def k8s(request, tmp_path):
    ns = f"mesh-contract-{secrets.token_hex(3)}"
    d = None
    if request.param == "double":
        d = KubernetesDouble(token=TOKEN)
        d.port_defaults = True  # as a real API server
        d.start()
    path = str(write_kubeconfig(tmp_path / "kc", d.url, TOKEN)) if d else os.environ["KUBECONFIG"].split(os.pathsep)[0]
    c = Cluster(path, ns)
    c.core.create_namespace({"metadata": {"name": ns}})
    try:
        yield c
    finally:
        try:
            c.core.delete_namespace(ns)
        finally:
            c.api_client.close()
            if d:
                d.stop()


def svc(name: str, ports=None, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"ports": [{"port": 80}] if ports is None else ports, **spec}}


def eps(name: str, address_type: str = "IPv4", addresses=("10.99.0.1",)) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": address_type, "endpoints": [{"addresses": list(addresses)}],
            "ports": [{"name": "", "port": 80, "protocol": "TCP"}]}


def invalid(k8s: Cluster, call, *args, **kw) -> tuple[str, list[str]]:
    """Run a call the API must refuse as 422 Invalid; (message, fields named in the causes)."""
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as e:
        call(*args, **kw)
    body = json.loads(e.value.body)
    assert (e.value.status, body["kind"], body["reason"]) == (422, "Status", "Invalid"), body
    return body["message"], [c.get("field") for c in body["details"]["causes"]]


def test_version_deserializes_into_version_info(k8s):
    v = k8s.version.get_code()  # the client's VersionInfo rejects a document missing a required field
    assert v.major and v.minor and v.git_version.startswith("v") and v.platform and v.go_version and v.compiler
    assert v.git_commit and v.git_tree_state and v.build_date


def test_list_and_watch_across_namespaces(k8s):
    from kubernetes import watch

    k8s.core.create_namespaced_service(k8s.ns, svc("web"))
    k8s.disc.create_namespaced_endpoint_slice(k8s.ns, eps("web-a"))
    mine = [s.metadata.name for s in k8s.core.list_service_for_all_namespaces(
        field_selector=f"metadata.namespace={k8s.ns}").items]
    assert mine == ["web"]
    slices = k8s.disc.list_endpoint_slice_for_all_namespaces(label_selector="kubernetes.io/service-name=web")
    assert [(s.metadata.namespace, s.metadata.name) for s in slices.items
            if s.metadata.namespace == k8s.ns] == [(k8s.ns, "web-a")]
    seen: list[tuple[str, str]] = []
    w = watch.Watch()
    done = threading.Event()

    def follow() -> None:
        for ev in w.stream(k8s.core.list_service_for_all_namespaces, resource_version=slices.metadata.resource_version,
                           field_selector=f"metadata.namespace={k8s.ns}", timeout_seconds=10):
            seen.append((ev["type"], ev["object"].metadata.name))
            if len(seen) == 1:
                break
        done.set()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    k8s.core.create_namespaced_service(k8s.ns, svc("second"))
    assert done.wait(15)
    w.stop()
    t.join(5)
    assert seen == [("ADDED", "second")]


def test_field_and_label_selectors_and_paging(k8s):
    for n in ("a", "b", "c"):
        k8s.core.create_namespaced_service(k8s.ns, svc(n))
    assert [s.metadata.name for s in k8s.core.list_namespaced_service(
        k8s.ns, field_selector="metadata.name=b").items] == ["b"]
    assert [s.metadata.name for s in k8s.core.list_namespaced_service(
        k8s.ns, field_selector="metadata.name!=b").items] == ["a", "c"]
    assert [s.metadata.name for s in k8s.core.list_namespaced_service(
        k8s.ns, label_selector="app in (a,c)").items] == ["a", "c"]
    first = k8s.core.list_namespaced_service(k8s.ns, limit=2)
    assert [s.metadata.name for s in first.items] == ["a", "b"] and first.metadata._continue
    rest = k8s.core.list_namespaced_service(k8s.ns, limit=2, _continue=first.metadata._continue)
    assert [s.metadata.name for s in rest.items] == ["c"] and not rest.metadata._continue
    status, body = k8s.raw("GET", f"/api/v1/namespaces/{k8s.ns}/services", fieldSelector="spec.nothing=x")
    assert (status, body["reason"]) == (400, "BadRequest")


def test_generate_name(k8s):
    body = svc("")
    body["metadata"] = {"generateName": "gen-"}
    made = k8s.core.create_namespaced_service(k8s.ns, body)
    assert made.metadata.name.startswith("gen-") and len(made.metadata.name) == len("gen-") + 5


def test_strategic_merge_patch_merges_ports_by_port_and_labels_as_maps(k8s):
    k8s.core.create_namespaced_service(k8s.ns, svc("web", [{"name": "http", "port": 80}]))
    patch = {"metadata": {"labels": {"extra": "yes"}}, "spec": {"ports": [{"name": "https", "port": 443}]}}
    got = k8s.core.patch_namespaced_service("web", k8s.ns, patch, _content_type=SMP)
    assert sorted(p.port for p in got.spec.ports) == [80, 443]
    assert got.metadata.labels == {"app": "web", "extra": "yes"}
    got = k8s.core.patch_namespaced_service("web", k8s.ns, {"spec": {"ports": [{"port": 443, "$patch": "delete"}]}},
                                            _content_type=SMP)
    assert [p.port for p in got.spec.ports] == [80]


def test_merge_patch_replaces_lists_and_null_deletes(k8s):
    k8s.core.create_namespaced_service(k8s.ns, svc("web", [{"name": "http", "port": 80}]))
    got = k8s.core.patch_namespaced_service(
        "web", k8s.ns, {"metadata": {"labels": {"app": None, "x": "1"}}, "spec": {"ports": [{"port": 8080}]}},
        _content_type=MERGE_PATCH)
    assert [p.port for p in got.spec.ports] == [8080] and got.metadata.labels == {"x": "1"}


def test_json_patch_add_replace_remove_and_failed_test(k8s):
    from kubernetes.client.exceptions import ApiException

    k8s.core.create_namespaced_service(k8s.ns, svc("web"))
    ops = [{"op": "test", "path": "/spec/ports/0/port", "value": 80},
           {"op": "replace", "path": "/spec/ports/0/port", "value": 81},
           {"op": "add", "path": "/metadata/labels/new", "value": "v"},
           {"op": "remove", "path": "/metadata/labels/app"}]
    got = k8s.core.patch_namespaced_service("web", k8s.ns, ops, _content_type=JSON_PATCH)
    assert got.spec.ports[0].port == 81 and got.metadata.labels == {"new": "v"}
    with pytest.raises(ApiException) as e:
        k8s.core.patch_namespaced_service("web", k8s.ns, [{"op": "test", "path": "/spec/ports/0/port", "value": 80}],
                                          _content_type=JSON_PATCH)
    assert e.value.status == 422
    assert k8s.core.read_namespaced_service("web", k8s.ns).spec.ports[0].port == 81


def test_server_side_apply_takes_yaml(k8s):
    doc = ("apiVersion: v1\nkind: Service\nmetadata:\n  name: applied\nspec:\n  ports:\n  - port: 80\n"
           "    name: http\n")
    status, body = k8s.raw("PATCH", f"/api/v1/namespaces/{k8s.ns}/services/applied", doc, APPLY,
                           fieldManager="mesh-contract")
    assert status == 201 and body["spec"]["ports"][0]["port"] == 80, body
    status, body = k8s.raw("PATCH", f"/api/v1/namespaces/{k8s.ns}/services/applied", doc, APPLY)
    assert status == 400  # an apply needs a field manager


def test_delete_answers_the_service_and_a_status_for_a_slice(k8s):
    made = k8s.core.create_namespaced_service(k8s.ns, svc("web"))
    k8s.disc.create_namespaced_endpoint_slice(k8s.ns, eps("web-a"))
    gone = k8s.core.delete_namespaced_service("web", k8s.ns)  # V1Service, as the client's spec says
    assert gone.kind == "Service" and gone.metadata.uid == made.metadata.uid
    status, body = k8s.raw("DELETE", f"/apis/discovery.k8s.io/v1/namespaces/{k8s.ns}/endpointslices/web-a")
    assert status == 200 and body["kind"] == "Status" and body["status"] == "Success", body
    assert body["details"]["name"] == "web-a"


def test_service_validation(k8s):
    create = k8s.core.create_namespaced_service
    msg, fields = invalid(k8s, create, k8s.ns, svc("noports", []))
    assert fields == ["spec.ports"] and 'Service "noports" is invalid' in msg
    assert "spec.ports[0].port" in invalid(k8s, create, k8s.ns, svc("big", [{"port": 70000}]))[1]
    assert "spec.ports[0].port" in invalid(k8s, create, k8s.ns, svc("zero", [{"port": 0}]))[1]
    assert invalid(k8s, create, k8s.ns, svc("two", [{"port": 80}, {"port": 81}]))[1] == \
        ["spec.ports[0].name", "spec.ports[1].name"]
    assert "metadata.name" in invalid(k8s, create, k8s.ns, svc("Not_OK"))[1]


def test_service_defaults_ports(k8s):
    made = k8s.core.create_namespaced_service(k8s.ns, svc("web"))
    assert (made.spec.ports[0].protocol, made.spec.ports[0].target_port) == ("TCP", 80)
    assert made.spec.type == "ClusterIP" and made.spec.session_affinity == "None"


def test_missing_namespace_is_404(k8s):
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as e:
        k8s.core.create_namespaced_service(k8s.ns + "-absent", svc("web"))
    body = json.loads(e.value.body)
    assert (e.value.status, body["reason"], body["details"]["kind"]) == (404, "NotFound", "namespaces")


def test_endpointslice_validation_and_immutable_address_type(k8s):
    create = k8s.disc.create_namespaced_endpoint_slice
    assert invalid(k8s, create, k8s.ns, eps("bad", "IPv5"))[1] == ["addressType"]
    assert invalid(k8s, create, k8s.ns, eps("bad", "IPv4", ["fe80::1"]))[1] == ["endpoints[0].addresses[0]"]
    assert invalid(k8s, create, k8s.ns, eps("bad", "IPv6", ["10.0.0.1"]))[1] == ["endpoints[0].addresses[0]"]
    made = create(k8s.ns, eps("web-a"))
    body = k8s.api_client.sanitize_for_serialization(made)
    body["addressType"], body["endpoints"][0]["addresses"] = "IPv6", ["fe80::1"]
    msg, fields = invalid(k8s, k8s.disc.replace_namespaced_endpoint_slice, "web-a", k8s.ns, body)
    assert "addressType" in fields and "immutable" in msg


def test_dry_run_validates_but_stores_nothing(k8s):
    from kubernetes.client.exceptions import ApiException

    made = k8s.core.create_namespaced_service(k8s.ns, svc("dry"), dry_run="All")
    assert made.metadata.name == "dry"
    assert k8s.core.list_namespaced_service(k8s.ns).items == []
    invalid(k8s, k8s.core.create_namespaced_service, k8s.ns, svc("dry", [{"port": 0}]), dry_run="All")
    real = k8s.core.create_namespaced_service(k8s.ns, svc("web"))
    k8s.core.patch_namespaced_service("web", k8s.ns, {"metadata": {"labels": {"x": "y"}}}, dry_run="All",
                                      _content_type=MERGE_PATCH)
    body = k8s.api_client.sanitize_for_serialization(real)
    body["metadata"]["labels"]["z"] = "1"
    k8s.core.replace_namespaced_service("web", k8s.ns, body, dry_run="All")
    k8s.core.delete_namespaced_service("web", k8s.ns, dry_run="All")
    now = k8s.core.read_namespaced_service("web", k8s.ns)
    assert now.metadata.resource_version == real.metadata.resource_version and now.metadata.labels == {"app": "web"}
    with pytest.raises(ApiException) as e:
        k8s.core.create_namespaced_service(k8s.ns, svc("x"), dry_run="Some")
    assert e.value.status == 400
