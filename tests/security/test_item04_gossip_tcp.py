"""Item 4: the gossip TCP port buffers a bounded amount before any key check, for a bounded time."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

from meshcore import limits
from testbed.localmesh import resolve, rss_mb
from tests.meshfix import wait_for


def flood(port: int, n: int, stop: threading.Event, slow: bool) -> list[socket.socket]:
    """n connections: each declares the largest frame and sends junk (fast), or one byte a second (slow)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.setblocking(False)
        socks.append(s)
    chunk = b"\0" * 65536
    head = struct.pack(">I", limits.GOSSIP_MAX_STREAM_BYTES)
    for s in socks:
        try:
            s.send(head)
        except OSError:
            pass
    while not stop.is_set():
        for s in socks:
            try:
                s.send(b"\0" if slow else chunk)
            except OSError:
                pass
        time.sleep(1 if slow else 0.001)
    return socks


def test_unauthenticated_tcp_flood_on_the_gossip_port_is_bounded_and_names_keep_resolving(local_mesh):
    token = local_mesh.token(uses=2)
    target = local_mesh.start_agent("target", token)
    local_mesh.start_agent("other", token)
    local_mesh.meshctl("expose", "--port", "8000", "--name", "api", agent="other")
    wait_for(lambda: resolve("api.mesh", local_mesh.dns("target")), what="api resolvable")
    nodes = json.loads(local_mesh.meshctl("nodes", "-o", "json").stdout)["nodes"]
    port = next(n["gossip_port"] for n in nodes if n["name"] == "target")
    before = rss_mb(target.popen.pid)
    for slow in (False, True):
        stop = threading.Event()
        socks: list = []
        t = threading.Thread(target=lambda: socks.extend(flood(port, 30, stop, slow)), daemon=True)
        t.start()
        time.sleep(3)
        during = rss_mb(target.popen.pid)
        # names keep resolving on the flooded agent while the flood goes on
        assert resolve("api.mesh", local_mesh.dns("target"))
        stop.set()
        t.join(5)
        for s in socks:
            s.close()
        bound = limits.GOSSIP_TCP_CONNECTIONS * limits.GOSSIP_MAX_STREAM_BYTES / 2**20
        assert during - before < bound + 16, (before, during)
    counters = json.loads(local_mesh.meshctl("status", "-o", "json", agent="target").stdout)["counters"]
    assert int(counters.get("gossip_tcp_refused", 0)) > 0
    # the mesh still gossips: a change reaches the flooded agent
    local_mesh.meshctl("expose", "--port", "8001", "--name", "after", agent="other")
    wait_for(lambda: resolve("after.mesh", local_mesh.dns("target")), what="a later name")


def test_unauthenticated_frames_share_one_byte_budget_refused_before_a_byte_is_read(local_mesh):
    """Two frames declaring the largest size hold the whole pre-authentication budget
    (limits.GOSSIP_TCP_PREAUTH_BYTES); a third, from yet another address, is closed at once
    (its length is over what is left) while the first two are still being read."""
    assert limits.GOSSIP_TCP_PREAUTH_BYTES == 2 * limits.GOSSIP_MAX_STREAM_BYTES
    token = local_mesh.token(uses=1)
    target = local_mesh.start_agent("target", token)
    nodes = json.loads(local_mesh.meshctl("nodes", "-o", "json").stdout)["nodes"]
    port = next(n["gossip_port"] for n in nodes if n["name"] == "target")
    head = struct.pack(">I", limits.GOSSIP_MAX_STREAM_BYTES)

    def refused() -> int:
        status = json.loads(local_mesh.meshctl("status", "-o", "json", agent="target").stdout)
        return int(status["counters"].get("gossip_tcp_refused", 0))

    before = refused()
    holders = []
    try:
        for src in ("127.0.0.2", "127.0.0.3"):
            s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(src, 0))
            s.sendall(head + b"\0" * 1024)  # a frame begun, far from complete
            holders.append(s)
        time.sleep(0.3)  # both are being read (bounded: the frame deadline is 5 s)
        third = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=("127.0.0.4", 0))
        third.sendall(head)
        third.settimeout(3)
        try:
            closed = third.recv(1) == b""
        except ConnectionResetError:
            closed = True
        third.close()
        assert closed, "the third frame was not refused"
        for s in holders:  # the first two are still open: refused only past the budget
            s.setblocking(False)
            try:
                assert s.recv(1) != b""
            except BlockingIOError:
                pass
        assert refused() == before + 1
        assert target.popen.poll() is None
    finally:
        for s in holders:
            s.close()
