"""Helpers for the catalog-sync tests and benchmark: catalog objects and a kubeconfig for a double."""

from __future__ import annotations

import json
from pathlib import Path

from mesh.v1 import types_pb2


def node(name: str, address: str = "10.0.0.5", state: int = types_pb2.NODE_STATE_READY, region: str = "us-east-1",
         labels: dict[str, str] | None = None) -> types_pb2.Node:
    return types_pb2.Node(id=f"n-{name}", name=name, mesh_address=address, state=state, region=region,
                          labels=labels or {})


def service(name: str, on: types_pb2.Node, port: int = 8000, tags: list[str] | None = None,
            http_path: str | None = None, tcp: bool = False, udp: bool = False) -> types_pb2.Service:
    s = types_pb2.Service(name=name, port=port, node_id=on.id, node_name=on.name, address=on.mesh_address,
                          tags=tags or [], protocol=types_pb2.PROTOCOL_UDP if udp else types_pb2.PROTOCOL_TCP)
    if http_path is not None:
        s.health.http_path = http_path
    elif tcp:
        s.health.tcp = True
    return s


def by_id(*nodes: types_pb2.Node) -> dict[str, types_pb2.Node]:
    return {n.id: n for n in nodes}


def write_kubeconfig(path: Path, server: str, token: str, namespace: str = "default",
                     ca_file: str | None = None) -> Path:
    """A kubeconfig with one cluster, user (bearer token) and context, as kubectl writes it.
    `ca_file`: the CA that signed an https server's certificate."""
    cluster = {"server": server, **({"certificate-authority": ca_file} if ca_file else {})}
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "double",
        "clusters": [{"name": "double", "cluster": cluster}],
        "users": [{"name": "sync", "user": {"token": token}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "sync", "namespace": namespace}}],
    }))
    return path
