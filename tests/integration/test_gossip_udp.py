"""Gossip on real UDP and TCP sockets on 127.0.0.1 (port 0): join, dissemination,
crash detection, graceful leave, push-pull full sync for a late joiner, and key
rotation without a restart. Every wait is bounded; every node is stopped."""

from __future__ import annotations

import asyncio
import functools
import os
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshcore.gossip.adapter import GossipNode, decode_facts
from meshcore.gossip.keyring import Keyring
from meshcore.gossip.messages import State
from meshcore.gossip.profiles import local
from meshcore.gossip.records import ed25519_verifier, make_record
from tests.meshfix import eventually

MESHD_KEY = Ed25519PrivateKey.generate()
VERIFY = ed25519_verifier(MESHD_KEY.public_key())


# every wait here: up to 10 s, polled every 50 ms
wait_until = functools.partial(eventually, timeout_s=10.0, step_s=0.05)


def state_of(node: GossipNode, node_id: str) -> State | None:
    m = node.swim.member(node_id)
    return m.state if m else None


class Mesh:
    def __init__(self, key: bytes) -> None:
        self.key = key
        self.nodes: list[GossipNode] = []

    async def add(self, i: int, seeds: list[str] | None = None, key: bytes | None = None) -> GossipNode:
        node = GossipNode(f"n{i}", f"vm-{i}", "127.0.0.1", 0, profile=local(),
                          keyring=Keyring(key or self.key), verify_record=VERIFY,
                          facts={"region": "us-east-1", "gpus": i}, seeds=seeds, rng=random.Random(i))
        self.nodes.append(node)
        await node.start()
        return node

    def seed(self) -> list[str]:
        h, p = self.nodes[0].addr
        return [f"{h}:{p}"]

    async def close(self) -> None:
        for n in self.nodes:
            await n.stop(leave=False)


@pytest.fixture
async def mesh():
    m = Mesh(os.urandom(32))
    try:
        yield m
    finally:
        await m.close()


async def start_mesh(mesh: Mesh, n: int) -> None:
    await mesh.add(0)
    for i in range(1, n):
        await mesh.add(i, mesh.seed())
    ok = await wait_until(lambda: all(
        sum(1 for m in node.members() if m.state == State.ALIVE) == n for node in mesh.nodes))
    assert ok, [[(m.node, m.state.label) for m in node.members()] for node in mesh.nodes]


async def test_join_and_disseminate_a_signed_record(mesh):
    await start_mesh(mesh, 4)
    facts = {m.node: decode_facts(m.facts) for m in mesh.nodes[0].members()}
    assert facts["n3"] == {"gpus": 3, "region": "us-east-1"}
    rec = make_record(MESHD_KEY, "jupyter", 7, "n2", b'{"port":8888}')
    assert mesh.nodes[2].publish(rec)
    assert await wait_until(lambda: all(n.records().get("jupyter") == rec for n in mesh.nodes))
    for n in mesh.nodes:
        st = n.stats()
        assert st["bytes_sent"] > 0 and st["bytes_received"] > 0
        assert st["decrypt_failures"] == 0 and st["signature_failures"] == 0


async def test_crash_is_detected_and_its_records_leave_every_view(mesh):
    await start_mesh(mesh, 4)
    victim = mesh.nodes[3]
    victim.publish(make_record(MESHD_KEY, "train", 1, "n3", b"x"))
    survivors = mesh.nodes[:3]
    assert await wait_until(lambda: all("train" in n.records() for n in survivors))
    await victim.stop(leave=False)  # a crash: nothing said
    assert await wait_until(lambda: all(state_of(n, "n3") == State.DEAD for n in survivors), timeout_s=20)
    assert all("train" not in n.records() for n in survivors)
    assert all(state_of(n, m) == State.ALIVE for n in survivors for m in ("n0", "n1", "n2"))


async def test_graceful_leave_is_seen_as_left(mesh):
    await start_mesh(mesh, 3)
    await mesh.nodes[2].stop(leave=True)
    assert await wait_until(lambda: all(state_of(n, "n2") == State.LEFT for n in mesh.nodes[:2]))


async def test_late_joiner_gets_the_whole_catalog_by_push_pull(mesh):
    await start_mesh(mesh, 3)
    recs = [make_record(MESHD_KEY, f"svc-{i}", i + 1, f"n{i % 3}", b"p") for i in range(20)]
    for r in recs:
        mesh.nodes[int(r.origin[1:])].publish(r)
    assert await wait_until(lambda: len(mesh.nodes[0].records()) == 20)
    late = await mesh.add(9, mesh.seed())
    # The join push-pull is complete when start() returns: no gossip round needed.
    assert set(late.records()) == {r.key for r in recs}
    assert {m.node for m in late.members()} == {"n0", "n1", "n2", "n9"}


async def test_key_rotation_without_restart(mesh):
    await start_mesh(mesh, 3)
    new = os.urandom(32)
    old = mesh.key
    for n in mesh.nodes:
        n.install_key(new)
    for n in mesh.nodes:
        n.use_key(new)
    for n in mesh.nodes:
        n.remove_key(old)
    assert all(n.stats()["keys"] == [n.keyring.primary_id] for n in mesh.nodes)
    rec = make_record(MESHD_KEY, "after-rotation", 1, "n1", b"")
    mesh.nodes[1].publish(rec)
    assert await wait_until(lambda: all("after-rotation" in n.records() for n in mesh.nodes))
    # A node still on the old key is shut out: its packets fail authentication.
    stranger = await mesh.add(7, mesh.seed(), key=old)
    assert await wait_until(lambda: mesh.nodes[0].stats()["decrypt_failures"] > 0)
    assert state_of(mesh.nodes[0], "n7") is None
    assert all(state_of(n, m) == State.ALIVE for n in mesh.nodes[:3] for m in ("n0", "n1", "n2"))
    assert stranger.swim.num_alive() == 1


async def test_garbage_on_udp_and_tcp_is_counted_and_the_mesh_carries_on(mesh):
    await start_mesh(mesh, 2)
    target = mesh.nodes[0]
    host, port = target.addr
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, port))
    try:
        for payload in (os.urandom(50), b"\x01" + os.urandom(60), os.urandom(3000)):
            transport.sendto(payload)
    finally:
        transport.close()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write((2**31).to_bytes(4, "big"))  # a frame length far past the limit
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the node hangs up
    finally:
        writer.close()
    assert await wait_until(lambda: target.stats()["decrypt_failures"] >= 2
                            and target.stats()["oversized_packets"] >= 2)
    rec = make_record(MESHD_KEY, "still-works", 1, "n1", b"")
    mesh.nodes[1].publish(rec)
    assert await wait_until(lambda: "still-works" in target.records())


async def test_a_node_whose_seed_comes_up_later_joins_it(mesh):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    early = await mesh.add(1, [f"127.0.0.1:{port}"])
    assert early.swim.num_alive() == 1  # nobody there yet
    seed = GossipNode("n0", "vm-0", "127.0.0.1", port, profile=local(), keyring=Keyring(mesh.key),
                      verify_record=VERIFY)
    mesh.nodes.append(seed)
    await seed.start()
    assert await wait_until(lambda: state_of(early, "n0") == State.ALIVE and state_of(seed, "n1") == State.ALIVE,
                            timeout_s=local().reconnect_interval * 3)
