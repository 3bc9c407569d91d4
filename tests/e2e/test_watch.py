"""`meshctl services|nodes --watch` against real daemons on loopback: from the agent's
catalog copy (its local WatchServices/WatchNodes) and from meshd's watch streams."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time

import pytest

from testbed.localmesh import BIN, LocalMesh


def watch(mesh: LocalMesh, *args: str, agent: str | None = None) -> subprocess.Popen:
    env = dict(mesh.env)
    if agent:
        env["MESH_AGENT_SOCKET"] = mesh.socket(agent)
    else:
        env.pop("MESH_AGENT_SOCKET", None)
        env["MESH_ADMIN"] = "1"
    return subprocess.Popen([str(BIN / "meshctl"), *args, "--watch", "-o", "json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=mesh.root)


def events_until(p: subprocess.Popen, done, timeout: float = 15.0) -> list[dict]:
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    seen, buf, deadline = [], b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=0.2):
            continue
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        seen += [json.loads(line) for line in lines if line.strip()]
        if done(seen):
            return seen
    raise AssertionError(f"not seen within {timeout}s: {seen}; stderr: {p.stderr.read1().decode()}")


@pytest.mark.parametrize("where", ["agent", "meshd"])
def test_services_watch_follows_expose_and_unexpose(local_mesh, where):
    local_mesh.start_agent("vm", local_mesh.token())
    local_mesh.meshctl("expose", "--port", "8000", "--name", "first", agent="vm")
    p = watch(local_mesh, "services", agent="vm" if where == "agent" else None)
    try:
        seen = events_until(p, lambda seen: any(e["service"]["name"] == "first" for e in seen))
        local_mesh.meshctl("expose", "--port", "8001", "--name", "second", agent="vm")
        local_mesh.meshctl("unexpose", "first", agent="vm")
        seen += events_until(p, lambda seen: any(e["type"] == "DELETED" for e in seen))
        changes = [(e["type"], e["service"]["name"]) for e in seen]
        assert changes[0] == ("ADDED", "first") and ("ADDED", "second") in changes
        assert changes[-1] == ("DELETED", "first")
        assert all(isinstance(e["revision"], int) for e in seen)
    finally:
        p.terminate()
        p.wait(10)


def test_nodes_watch_from_the_agent_sees_a_new_node(local_mesh):
    token = local_mesh.token(uses=2)
    local_mesh.start_agent("one", token)
    p = watch(local_mesh, "nodes", agent="one")
    try:
        events_until(p, lambda seen: any(e["node"]["name"] == "one" for e in seen))
        local_mesh.start_agent("two", token)
        seen = events_until(p, lambda seen: any(e["node"]["name"] == "two" for e in seen))
        two = next(e for e in seen if e["node"]["name"] == "two")
        assert two["type"] == "ADDED" and two["node"]["joined_at"].endswith("Z")
    finally:
        p.terminate()
        p.wait(10)
