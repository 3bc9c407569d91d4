"""Faults on the real processes: meshd killed with writes in flight, and its wall clock stepped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import grpc

from mesh.v1 import agent_pb2_grpc, catalog_pb2, types_pb2

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def test_meshd_killed_with_writes_in_flight_keeps_every_acknowledged_one(local_mesh):
    local_mesh.start_agent("writer", local_mesh.token())
    acked: list[str] = []
    failed: list[str] = []

    async def write_until_meshd_dies() -> None:
        async with grpc.aio.insecure_channel(f"unix:{local_mesh.socket('writer')}") as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            names = iter(range(10_000))
            killed = asyncio.Event()

            async def worker() -> None:
                while not killed.is_set() or len(failed) == 0:
                    name = f"w{next(names)}"
                    try:
                        await stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name=name, port=80)),
                                          timeout=10)
                    except grpc.aio.AioRpcError:
                        failed.append(name)
                        return
                    acked.append(name)
                    if len(acked) == 40 and not killed.is_set():
                        os.killpg(local_mesh.meshd.popen.pid, signal.SIGKILL)  # 7 other writes are in flight
                        killed.set()
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(8))), 60)

    asyncio.run(write_until_meshd_dies())
    assert len(acked) >= 40 and failed, (len(acked), failed)
    # The agent would re-assert what it remembers: stop it, so only meshd's store speaks.
    local_mesh.stop(local_mesh.agents.pop("writer"), signal.SIGKILL)
    ports = local_mesh.meshd.ready
    local_mesh.meshd.popen.wait(10)
    local_mesh.start_meshd(f"127.0.0.1:{ports['listen']}", f"127.0.0.1:{ports['join']}")
    stored = {s["name"] for s in json.loads(local_mesh.meshctl("services", "-o", "json").stdout)["services"]}
    assert set(acked) <= stored, sorted(set(acked) - stored)


def test_a_wall_clock_step_of_a_minute_either_way_expires_no_lease(tmp_path):
    from testbed.localmesh import LocalMesh

    assert FAKETIME.exists(), "needs libfaketime (Debian package; make setup installs it)"
    stamp = tmp_path / "faketime"
    stamp.write_text("+0\n")
    # Only meshd's wall clock moves (DONT_FAKE_MONOTONIC): leases must not notice.
    faked = {"LD_PRELOAD": str(FAKETIME), "FAKETIME_TIMESTAMP_FILE": str(stamp), "FAKETIME_NO_CACHE": "1",
             "DONT_FAKE_MONOTONIC": "1"}
    # lease + grace (20 s) is well under the step (60 s): a lease on the wall clock would expire at once
    with LocalMesh(tmp_path / "mesh", lease_ttl_s=10, grace_s=10) as mesh:
        mesh.root.mkdir()
        mesh.start_meshd(env=faked)
        mesh.start_agent("steady", mesh.token())
        mesh.meshctl("expose", "--port", "8000", "--name", "steady-web", agent="steady")

        def healthy() -> bool:
            nodes = json.loads(mesh.meshctl("nodes", "-o", "json").stdout)["nodes"]
            services = json.loads(mesh.meshctl("services", "-o", "json").stdout)["services"]
            return [n["state"] for n in nodes] in (["NODE_STATE_READY"], ["ready"]) and \
                [s["name"] for s in services] == ["steady-web"]

        assert healthy()
        for step in ("+60", "+0", "-60", "+0"):
            stamp.write_text(step + "\n")
            # a lease check runs every second: one on a stepped wall clock would fail within 2 s
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                assert healthy(), f"after a wall-clock step of {step} s"
                time.sleep(0.5)
