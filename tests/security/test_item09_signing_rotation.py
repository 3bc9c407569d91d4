"""Item 9 (part): catalog signing keys rotate with an overlap window, and signed records expire.

A real meshd (in-process, on a ManualClock) and real agents gossiping on
loopback. The agents' wall clock follows meshd's (their monotonic clock is
real, so SWIM's timers run); a test moves time with `clock.step_wall`.
Forged, expired and retired-key records are sent the way a member holding
the gossip key would: a sealed datagram to the agent's gossip port.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time

from cryptography.hazmat.primitives.asymmetric import ed25519

from mesh.v1 import catalog_pb2, types_pb2
from meshagent import metrics
from meshcore.clock import ManualClock
from meshcore.gossip import codec
from meshcore.gossip.codec import decode_message
from meshcore.gossip.messages import Record
from meshcore.gossip.records import make_record
from tests.meshfix import Mesh, manual_clock, until

ROTATE, OVERLAP, TTL = 1000, 100, 3000
_counter = itertools.count(1)


class FollowWall:
    """An agent's clock: meshd's manual wall clock, a real monotonic one."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return self._clock.wall()


async def _mesh(tmp_path, clock: ManualClock, **config) -> Mesh:
    cfg = dict(lease_ttl_s=3, catalog_key_rotate_s=ROTATE, catalog_key_overlap_s=OVERLAP, catalog_record_ttl_s=TTL)
    cfg.update(config)
    return await Mesh(tmp_path, clock=clock, **cfg).start()


def refused(reason: str | None = None) -> float:
    reasons = [reason] if reason else ["unknown_key", "key_retired", "expired", "bad_signature", "unsealed"]
    return sum(metrics.RECORDS_REFUSED.get(r) for r in reasons)


def held(agent, name: str) -> Record | None:
    return agent.gossip.node.records().get(name)


def key_ids(agent) -> set[str]:
    return {k.id for k in agent.gossip.cfg.catalog_keys}


def inject(agent, rec: Record) -> None:
    """One sealed gossip datagram carrying `rec`, from a member that holds the gossip key."""
    body = codec.frame(codec.encode_message(rec))
    packet = codec.encode_packet(int(time.time() * 1000), next(_counter), "intruder", [body])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(agent.gossip.keyring.seal(packet), ("127.0.0.1", agent.gossip.node.port))


def meshd_record(mesh: Mesh, name: str, node_id: str) -> Record:
    """A record meshd signs (its real signer) for a service it never stored: what a member
    could have kept from an earlier watch stream to replay later."""
    svc = types_pb2.Service(name=name, port=9, node_id=node_id, node_name="alpha", address="127.77.0.9")
    return decode_message(bytes([Record.TYPE]) + mesh.coordinator.gossip.sign(svc, 10**9, False))


async def test_rotation_keeps_every_record_and_retires_the_old_key_after_the_overlap(tmp_path):
    clock = manual_clock()
    m = await _mesh(tmp_path, clock)
    try:
        a = await m.agent("alpha", clock=FollowWall(clock))
        b = await m.agent("beta", clock=FollowWall(clock))
        await a.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="web", port=8000)))
        await until(lambda: held(b, "web") is not None, timeout=15)
        (k1,) = key_ids(b)
        assert held(b, "web").key_id == k1
        samples, missing = 0, 0

        async def watch_web() -> None:  # "web" must never leave beta's gossip view
            nonlocal samples, missing
            for _ in range(6000):  # bounded: 60 s at most
                samples += 1
                missing += "web" not in b.gossip.services()
                await asyncio.sleep(0.01)
        sampler = asyncio.create_task(watch_web())
        ghost_k1 = meshd_record(m, "ghost-old", a.identity.node_id)
        retired_k1 = meshd_record(m, "ghost-retired", a.identity.node_id)
        refused_before, skipped_before = refused(), metrics.RECORDS_SKIPPED.get()

        # 901 s in: the next key is announced (overlap before it signs); agents learn it at renewal
        clock.step_wall(ROTATE - OVERLAP + 1)
        await until(lambda: len(key_ids(a)) == 2 and len(key_ids(b)) == 2, timeout=15)
        (k2,) = key_ids(b) - {k1}
        assert held(b, "web").key_id == k1  # nothing signs with the new key yet

        # 1001 s in: the new key signs. Alpha's next renewal brings "web" signed again; gossip carries it
        clock.step_wall(OVERLAP)
        await until(lambda: (r := held(b, "web")) is not None and r.key_id == k2, timeout=15)
        assert "web" in b.gossip.services()
        assert refused() == refused_before and metrics.RECORDS_SKIPPED.get() == skipped_before
        inject(b, ghost_k1)  # during the overlap a record of the previous key is still good
        await until(lambda: held(b, "ghost-old") is not None, timeout=10)
        assert "ghost-old" in b.gossip.services()

        # 1101 s in: the previous key has retired; meshd stops handing it out
        clock.step_wall(OVERLAP)
        await until(lambda: key_ids(a) == {k2} and key_ids(b) == {k2}, timeout=15)
        assert "web" in b.gossip.services() and held(b, "web").key_id == k2
        assert held(a, "web").key_id == k2
        assert "ghost-old" not in b.gossip.services()  # accepted during the overlap; its key has retired

        # a record of the retired key is refused (counted), and the agent gossips on
        late = meshd_record(m, "ghost-late", a.identity.node_id)  # signed with k2: the control
        assert retired_k1.key_id == k1 and retired_k1.expires > clock.wall()  # good but for its key
        before = refused("key_retired")
        inject(b, retired_k1)
        await until(lambda: refused("key_retired") > before, timeout=10)
        assert held(b, "ghost-retired") is None
        inject(b, late)
        await until(lambda: held(b, "ghost-late") is not None, timeout=10)
        sampler.cancel()
        assert samples > 100 and missing == 0
    finally:
        await m.close()


async def test_an_expired_record_is_refused_and_a_live_one_is_signed_again_before_it_expires(tmp_path):
    clock = manual_clock()
    m = await _mesh(tmp_path, clock, catalog_key_rotate_s=100_000, catalog_key_overlap_s=1000,
                    catalog_record_ttl_s=300)
    try:
        a = await m.agent("alpha", clock=FollowWall(clock))
        b = await m.agent("beta", clock=FollowWall(clock))
        await a.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="web", port=8000)))
        await until(lambda: held(b, "web") is not None, timeout=15)
        first = held(b, "web").expires
        stale = meshd_record(m, "ghost", a.identity.node_id)
        assert stale.expires == first and first > clock.wall()

        # past the expiry of both: "web" was signed again at a renewal (its owner gossiped it), ghost was not
        clock.step_wall(first - clock.wall() + 1)
        await until(lambda: (r := held(b, "web")) is not None and r.expires > clock.wall(), timeout=15)
        assert "web" in b.gossip.services()
        before = refused("expired")
        inject(b, stale)
        await until(lambda: refused("expired") > before, timeout=10)
        assert held(b, "ghost") is None
    finally:
        await m.close()


async def test_a_forged_key_id_or_an_unsealed_record_is_refused(tmp_path):
    clock = manual_clock()
    m = await _mesh(tmp_path, clock)
    try:
        a = await m.agent("alpha", clock=FollowWall(clock))
        b = await m.agent("beta", clock=FollowWall(clock))
        await until(lambda: len(key_ids(b)) == 1, timeout=15)
        (k1,) = key_ids(b)
        svc = types_pb2.Service(name="evil", port=22, node_id=a.identity.node_id, address="127.77.0.66")
        payload = svc.SerializeToString()
        mine = ed25519.Ed25519PrivateKey.generate()  # not meshd's
        cases = {
            "bad_signature": make_record(mine, "evil", 10**9, a.identity.node_id, payload, False, k1,
                                         int(clock.wall()) + 600),  # meshd's key id, another key's signature
            "unknown_key": make_record(mine, "evil", 10**9, a.identity.node_id, payload, False, "deadbeef",
                                       int(clock.wall()) + 600),
            "unsealed": make_record(mine, "evil", 10**9, a.identity.node_id, payload),  # the pre-rotation form
        }
        for reason, rec in cases.items():
            before = refused(reason)
            inject(b, rec)
            await until(lambda: refused(reason) > before, timeout=10)
        assert held(b, "evil") is None and "evil" not in b.gossip.services()
        # the agent goes on: a real service still arrives
        await a.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="web", port=8000)))
        await until(lambda: held(b, "web") is not None, timeout=15)
    finally:
        await m.close()


async def test_on_etcd_the_leader_rotates_and_the_other_replica_follows(tmp_path):
    """Two meshd replicas on one etcd: only the leader writes the schedule; both hand out the
    same keys and switch to the new one at the same point in time."""
    import shutil

    from meshcore.gossip.records import CatalogVerifier
    from testbed.etcd_cluster import EtcdCluster
    from tests.conftest import require_netns
    require_netns("etcd")
    etcd = EtcdCluster(1, tmp_path / "etcd", heartbeat_ms=50, election_ms=300)
    etcd.start()
    clock = manual_clock()
    store = etcd.url + "/signing"
    a = b = None
    try:
        a = await _mesh(tmp_path / "a", clock, store=store)
        shutil.copytree(tmp_path / "a" / "meshd", tmp_path / "b" / "meshd", dirs_exist_ok=True)  # one mesh CA
        b = await _mesh(tmp_path / "b", clock, store=store)
        ga, gb = a.coordinator.gossip, b.coordinator.gossip
        await until(lambda: a.coordinator.is_leader != b.coordinator.is_leader, timeout=15)
        leader, follower = (ga, gb) if a.coordinator.is_leader else (gb, ga)

        def ids(g) -> list[str]:
            return [k.id for k in g.config().catalog_keys]
        (k1,) = ids(ga)
        assert ids(gb) == [k1]

        clock.step_wall(ROTATE - OVERLAP + 1)
        await until(lambda: len(ids(ga)) == 2 and ids(ga) == ids(gb), timeout=15)
        k2 = ids(ga)[1]
        svc = types_pb2.Service(name="web", port=80, node_id="n1", node_name="alpha", address="127.77.0.1")
        assert decode_message(bytes([Record.TYPE]) + follower.sign(svc, 7, False)).key_id == k1  # not yet

        clock.step_wall(OVERLAP)  # its time has come: both replicas sign with it, no write needed
        check = CatalogVerifier(clock.wall)
        check.update({k.id: (k.public_key, k.retires_at) for k in follower.config().catalog_keys})
        for g in (leader, follower):
            rec = decode_message(bytes([Record.TYPE]) + g.sign(svc, 8, False))
            assert rec.key_id == k2 and check.why_not(rec) is None

        clock.step_wall(OVERLAP)
        await until(lambda: ids(ga) == [k2] and ids(gb) == [k2], timeout=15)
    finally:
        for m in (b, a):
            if m is not None:
                await m.close()
        etcd.stop()
