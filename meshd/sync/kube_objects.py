"""The Kubernetes objects a mesh service becomes, and how to compare them.

Model: a mesh service `web` on a node with mesh address 10.1.2.3, port 8000
becomes, in the sync namespace,
- a selector-less Service `web` (type ClusterIP, port 8000 -> 8000, the
  service's protocol), so `web.<namespace>.svc.cluster.local` resolves to its
  cluster IP and kube-proxy forwards to the endpoints we publish;
  its port is named after the service (`port_name`), so CoreDNS also serves
  the SRV record `_web._tcp.web.<namespace>.svc.cluster.local` (port 8000);
  it only does for named ports;
- an EndpointSlice `web-mesh` labelled `kubernetes.io/service-name: web`
  with one endpoint, the node's mesh address (addressType IPv4 or IPv6 by
  that address), ready while the node is reachable.

Both carry `app.kubernetes.io/managed-by: mesh` (the label the sync lists and
watches by, and the test for "ours"), the slice also
`endpointslice.kubernetes.io/managed-by: mesh` so the cluster's EndpointSlice
controller leaves it alone, and an annotation with the mesh node id.

Comparison looks only at the fields we own (`owned_*`): the API server adds
defaults (clusterIP, sessionAffinity, ipFamilies...) and users may add their
own labels and annotations; none of that is drift. `merged` applies our
fields onto the live object, keeping everything else and its
resourceVersion, for a conditional replace.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from typing import Any

from mesh.v1 import types_pb2
from meshd.sync.base import MANAGED_BY, MANAGED_BY_KEY, Node, Service

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICE_MANAGER_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "mesh"
NODE_ID_ANNOTATION = "mesh/node-id"
NODE_NAME_LABEL = "mesh/node"
SELECTOR = f"{MANAGED_BY_KEY}={MANAGED_BY}"
SLICE_SUFFIX = "-mesh"

_SERVICE_LABELS = (MANAGED_BY_KEY, NODE_NAME_LABEL)
_SLICE_LABELS = (MANAGED_BY_KEY, NODE_NAME_LABEL, SERVICE_NAME_LABEL, SLICE_MANAGER_LABEL)
_ANNOTATIONS = (NODE_ID_ANNOTATION,)


def slice_name(service_name: str) -> str:
    return service_name + SLICE_SUFFIX


def is_managed(obj: dict[str, Any] | None) -> bool:
    return bool(obj) and (obj.get("metadata", {}).get("labels") or {}).get(MANAGED_BY_KEY) == MANAGED_BY


def address_type(address: str) -> str:
    """'IPv4' or 'IPv6'; ValueError if `address` is not an IP address."""
    return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"


def port_name(service_name: str) -> str:
    """The name of the one port of a mirrored Service and its EndpointSlice: the service
    name, kept a DNS-1035 label (lowercase letter first, letters, digits and '-', at most
    63, ending alphanumeric), which every Service port-name rule accepts. Mirrored names
    already are such labels; the rest is for anything that is not."""
    name = re.sub(r"[^a-z0-9-]", "-", service_name.lower())
    if not name[:1].isalpha():
        name = "p-" + name
    return name[:63].rstrip("-") or "p"


def _protocol(svc: Service) -> str:
    return "UDP" if svc.protocol == types_pb2.PROTOCOL_UDP else "TCP"


def service_object(svc: Service, node: Node, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc.name, "namespace": namespace,
                     "labels": {MANAGED_BY_KEY: MANAGED_BY, NODE_NAME_LABEL: node.name},
                     "annotations": {NODE_ID_ANNOTATION: node.id}},
        "spec": {"type": "ClusterIP",
                 "ports": [{"name": port_name(svc.name), "port": int(svc.port), "targetPort": int(svc.port),
                            "protocol": _protocol(svc)}]},
    }


def slice_object(svc: Service, node: Node, address: str, ready: bool, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": slice_name(svc.name), "namespace": namespace,
                     "labels": {MANAGED_BY_KEY: MANAGED_BY, NODE_NAME_LABEL: node.name,
                                SERVICE_NAME_LABEL: svc.name, SLICE_MANAGER_LABEL: SLICE_MANAGER},
                     "annotations": {NODE_ID_ANNOTATION: node.id}},
        "addressType": address_type(address),
        "endpoints": [{"addresses": [address], "conditions": {"ready": ready}}],
        "ports": [{"name": port_name(svc.name), "port": int(svc.port), "protocol": _protocol(svc)}],
    }


def _meta_fields(obj: dict[str, Any], labels: tuple[str, ...]) -> dict[str, Any]:
    md = obj.get("metadata") or {}
    have_l, have_a = md.get("labels") or {}, md.get("annotations") or {}
    return {"labels": {k: have_l.get(k) for k in labels}, "annotations": {k: have_a.get(k) for k in _ANNOTATIONS}}


def owned_service(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    ports = [{"name": p.get("name") or "", "port": p.get("port"), "targetPort": p.get("targetPort", p.get("port")),
              "protocol": p.get("protocol") or "TCP"} for p in spec.get("ports") or []]
    return {**_meta_fields(obj, _SERVICE_LABELS), "type": spec.get("type") or "ClusterIP",
            "selector": spec.get("selector") or {}, "ports": ports}


def owned_slice(obj: dict[str, Any]) -> dict[str, Any]:
    eps = [{"addresses": list(e.get("addresses") or []),
            "ready": (e.get("conditions") or {}).get("ready", True) is not False}
           for e in obj.get("endpoints") or []]
    ports = [{"name": p.get("name") or "", "port": p.get("port"), "protocol": p.get("protocol") or "TCP"}
             for p in obj.get("ports") or []]
    return {**_meta_fields(obj, _SLICE_LABELS), "addressType": obj.get("addressType"), "endpoints": eps,
            "ports": ports}


def merged(live: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    """`live` with our fields from `want` put back: what a conditional replace sends."""
    out = copy.deepcopy(live)
    md, wmd = out.setdefault("metadata", {}), want["metadata"]
    md["labels"] = {**(md.get("labels") or {}), **wmd["labels"]}
    md["annotations"] = {**(md.get("annotations") or {}), **wmd["annotations"]}
    if want["kind"] == "Service":
        spec = out.setdefault("spec", {})
        spec["type"] = want["spec"]["type"]
        spec["ports"] = copy.deepcopy(want["spec"]["ports"])
        spec.pop("selector", None)  # a selector would make Kubernetes manage our endpoints
    else:
        for k in ("addressType", "endpoints", "ports"):
            out[k] = copy.deepcopy(want[k])
    return out
