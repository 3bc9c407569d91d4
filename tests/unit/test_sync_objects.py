"""Desired registry objects: Kubernetes Service/EndpointSlice shapes and Consul registrations."""

from __future__ import annotations

import re

from mesh.v1 import types_pb2
from meshd.sync.consul import _normal_check, desired_entries, go_duration, meta_key
from meshd.sync.kube_objects import (is_managed, merged, owned_service, owned_slice, port_name,
                                     service_object, slice_object)
from testbed.doubles.sync_helpers import by_id, node, service


def test_server_defaults_and_foreign_labels_are_not_drift():
    vm = node("vm1", "10.0.0.9")
    want = service_object(service("web", vm), vm, "default")
    live = merged({"metadata": {"name": "web", "resourceVersion": "7", "uid": "u",
                                "labels": {"team": "x"}, "annotations": {"note": "hi"}},
                   "spec": {"clusterIP": "10.43.0.10", "sessionAffinity": "None", "ipFamilies": ["IPv4"]}}, want)
    assert owned_service(live) == owned_service(want)
    assert live["metadata"]["resourceVersion"] == "7" and live["spec"]["clusterIP"] == "10.43.0.10"
    assert live["metadata"]["labels"]["team"] == "x" and is_managed(live)

    live["spec"]["selector"] = {"app": "web"}
    assert owned_service(live) != owned_service(want)
    assert "selector" not in merged(live, want)["spec"]


def test_endpointslice_follows_address_family_and_readiness():
    v4, v6 = node("a", "10.0.0.1"), node("b", "fd00::1")
    s4 = slice_object(service("x", v4), v4, "10.0.0.1", True, "ns")
    s6 = slice_object(service("y", v6, udp=True), v6, "fd00::1", False, "ns")
    assert (s4["addressType"], s6["addressType"]) == ("IPv4", "IPv6")
    assert s6["endpoints"] == [{"addresses": ["fd00::1"], "conditions": {"ready": False}}]
    assert s6["ports"][0]["protocol"] == "UDP"
    assert s4["metadata"]["labels"]["kubernetes.io/service-name"] == "x"
    # A server that drops the ready=True default or the TCP protocol is not drift.
    trimmed = {**s4, "endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"name": "x", "port": 8000}]}
    assert owned_slice(trimmed) == owned_slice(s4)


def test_ports_are_named_so_coredns_serves_srv_records():
    vm = node("vm1", "10.0.0.9")
    svc, eps = service_object(service("qwen-7b", vm), vm, "ns"), slice_object(service("qwen-7b", vm), vm,
                                                                             "10.0.0.9", True, "ns")
    # The Service's and the slice's port names must be equal: that is how kube-proxy and
    # CoreDNS pair endpoints with a Service port.
    assert svc["spec"]["ports"][0]["name"] == eps["ports"][0]["name"] == "qwen-7b"
    # A port without a name was what an older meshd wrote: drift, rewritten with the name.
    unnamed = {**svc, "spec": {**svc["spec"], "ports": [{"port": 8000, "targetPort": 8000, "protocol": "TCP"}]}}
    assert owned_service(unnamed) != owned_service(svc)
    assert owned_service(merged(unnamed, svc)) == owned_service(svc)
    dns_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
    for name in ("web", "a", "x" * 63, "9lives", "Web_Server.v2", "-x-", "y" * 70 + "-z", "__"):
        assert dns_1035.match(port_name(name)), (name, port_name(name))
    assert port_name("web") == "web" and port_name("x" * 63) == "x" * 63


def test_consul_nodes_are_not_handed_to_consul_esm():
    # consul-esm runs the checks of nodes with meta external-node=true and overwrites their
    # status; the mesh owns its checks, so its nodes never carry that meta.
    vm = node("vm1", "10.0.0.9")
    want, _ = desired_entries([service("web", vm, http_path="/h")], by_id(vm))
    meta = want[("vm1", "web")].node_meta
    assert meta == {"managed-by": "mesh", "mesh-node-id": "n-vm1"}
    assert "external-node" not in meta and "external-probe" not in meta


def test_consul_meta_keys_follow_consuls_rules():
    assert meta_key("gpu.model") == "label-gpu_model"
    assert meta_key("sky/cluster name") == "label-sky_cluster_name"
    vm = node("vm1", "10.0.0.9", labels={f"k{i:03d}": "v" for i in range(100)})
    want, errors = desired_entries([service("web", vm)], by_id(vm))
    meta = want[("vm1", "web")].service["Meta"]
    assert len(meta) == 64 and not errors  # Consul refuses more than 64 pairs


def test_consul_checks_match_the_expose_health_check():
    v6 = node("vm6", "fd00::6")
    http = service("api", v6, port=8080, http_path="healthz")
    http.health.interval_s = 3
    want, _ = desired_entries([http, service("raw", v6, port=9, tcp=True), service("plain", v6, port=7)], by_id(v6))
    assert want[("vm6", "api")].check["Definition"] == {"HTTP": "http://[fd00::6]:8080/healthz", "Interval": "3s"}
    assert want[("vm6", "raw")].check["Definition"] == {"TCP": "[fd00::6]:9", "Interval": "10s"}
    assert want[("vm6", "plain")].check["Definition"] == {}


def test_services_without_a_usable_node_are_skipped_or_reported():
    ok, gone, bad = node("ok"), node("gone", state=types_pb2.NODE_STATE_LEFT), node("bad", address="")
    svcs = [service("a", ok), service("b", gone), service("c", bad), service("d", node("missing"))]
    svcs[2].address = ""
    want, errors = desired_entries(svcs, by_id(ok, gone, bad))
    assert list(want) == [("ok", "a")]
    assert list(errors) == ["c"] and "no valid mesh address" in errors["c"]


def test_check_intervals_are_written_as_consul_prints_them():
    assert [go_duration(s) for s in (10, 60, 90, 3600, 3725)] == ["10s", "1m0s", "1m30s", "1h0m0s", "1h2m5s"]
    # What a real Consul returns for a check without a probe, zero values included, is no drift.
    sent = {"CheckID": "mesh:x", "Name": "n", "ServiceID": "x", "Status": "passing", "Definition": {}}
    back = {**sent, "Definition": {"Interval": "0s", "Timeout": "0s", "HTTP": "", "TCP": "", "Header": None}}
    assert _normal_check(back) == _normal_check(sent)
