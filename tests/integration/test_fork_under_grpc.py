"""A daemon busy with gRPC starts its tools (wg, ip, k3s) without losing any of them.

gRPC's fork handlers, on by default in grpcio, abort some children between fork() and
exec() while its pollers are busy (grpc/grpc#13873: "Check failed: next_worker->state ==
KICKED"); about one child in forty here. Importing any of the mesh's packages turns them
off (meshcore/__init__.py), so every child runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILDREN = 400

PROBE = """
import asyncio, sys
import {package}
import grpc, uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

async def main():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stub = health_pb2_grpc.HealthStub(grpc.aio.insecure_channel(f"127.0.0.1:{{port}}"))
    busy = True
    async def calls():
        while busy:
            await stub.Check(health_pb2.HealthCheckRequest())
    load = [asyncio.ensure_future(calls()) for _ in range(4)]
    failed = 0
    for _ in range({children}):
        child = await asyncio.create_subprocess_exec("/bin/true", stderr=asyncio.subprocess.DEVNULL)
        failed += await child.wait() != 0
    busy = False
    await asyncio.gather(*load)
    await server.stop(None)
    print(failed)

uvloop.run(main())
"""


@pytest.mark.parametrize("package", ["meshagent", "meshd", "meshctl"])
def test_children_started_while_grpc_is_busy_all_run(package):
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    r = subprocess.run([sys.executable, "-c", PROBE.format(package=package, children=CHILDREN)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "0", f"children lost: {r.stdout.strip()} of {CHILDREN}"
