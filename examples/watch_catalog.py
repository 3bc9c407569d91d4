"""Follow the mesh from an external scheduler: nodes with their GPUs, then live catalog changes.

Run on the main node (meshd's admin socket, as root):

    python examples/watch_catalog.py --admin-socket /run/meshd/admin.sock

or from anywhere with an admin certificate (`meshctl admin cert sched --out ./sched`):

    python examples/watch_catalog.py --coordinator meshd.example:7443 --cert-dir ./sched

Only the generated stubs (package mesh.v1) and grpcio are needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from mesh.v1 import catalog_pb2_grpc, nodes_pb2, nodes_pb2_grpc, types_pb2


def channel(args: argparse.Namespace) -> grpc.Channel:
    if args.cert_dir:
        d = Path(args.cert_dir)
        creds = grpc.ssl_channel_credentials((d / "ca.crt").read_bytes(), (d / "admin.key").read_bytes(),
                                             (d / "admin.crt").read_bytes())
        # meshd's certificate always carries the name meshd.mesh, whatever address it is reached at.
        return grpc.secure_channel(args.coordinator, creds, options=[("grpc.ssl_target_name_override", "meshd.mesh")])
    return grpc.insecure_channel(f"unix:{args.admin_socket}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-socket", default="/run/meshd/admin.sock")
    p.add_argument("--coordinator", default="127.0.0.1:7443")
    p.add_argument("--cert-dir", default="")
    p.add_argument("--events", type=int, default=0, help="stop after this many catalog events (0: follow forever)")
    args = p.parse_args()
    with channel(args) as ch:
        nodes = nodes_pb2_grpc.NodeServiceStub(ch).ListNodes(nodes_pb2.ListNodesRequest(), timeout=10)
        for n in nodes.nodes:
            gpus = f"{n.labels.get('gpu.count', '0')}x {n.labels.get('gpu.model', '-')}"
            print(f"node {n.name:<20} {n.mesh_address:<15} {n.cloud or '-':<8} {n.region or '-':<14} gpus {gpus}")
        seen = 0
        # From revision 0: the current set (RESET ... SYNCED), then every change as it happens.
        # After a disconnect, pass the last revision seen to get exactly what was missed.
        for ev in catalog_pb2_grpc.CatalogServiceStub(ch).WatchServices(types_pb2.WatchRequest(from_revision=0)):
            kind = types_pb2.EventType.Name(ev.type).removeprefix("EVENT_TYPE_").lower()
            if ev.service.name:
                print(f"rev {ev.revision:<6} {kind:<7} {ev.service.name} -> {ev.service.address}:{ev.service.port}")
            else:
                print(f"rev {ev.revision:<6} {kind}")
            seen += 1
            if args.events and seen >= args.events:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
