"""Shared library of the mesh: names, typed errors, clock, config and wire helpers."""

import os

__version__ = "0.1.0"

# gRPC's fork handlers (on by default in grpcio) restart its pollers in a child made by
# fork(); a child that only execs (wg, ip, k3s, meshctl's own tools) can abort there first
# ("Check failed: next_worker->state == KICKED", grpc/grpc#13873), so a subprocess fails at
# random. Nothing here forks without exec: they are off unless the environment says otherwise.
# Imported before grpc by every entry point (each package's __init__ imports meshcore first).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
