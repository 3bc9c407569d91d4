"""The store contract: every backend passes these.

The `store` fixture runs each contract test against SQLite and against a real
etcd server (one `etcd` process for the module, a fresh key prefix per test),
plain and over TLS with a client certificate (etcds://, as the replicas run it).
Revisions are global in etcd (shared by every prefix, and a new cluster starts
at 1), so the tests compare revisions relative to the one they start from.
Tests of one backend's own mechanics (a corrupted SQLite file, SIGKILL of the
SQLite writer, lease expiry on SQLite's injected clock, etcd key prefixes)
use that backend alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid

import pytest

from meshcore.clock import ManualClock
from meshcore.errors import InvalidArgument, NotFound, StateError
from meshd.store.base import Compacted, Compare, Delete, DeletePrefix, Put, absent
from meshd.store.sqlite import SQLiteStore
from tests.conftest import require_netns
from tests.meshfix import until
from testbed.etcd_cluster import EtcdCluster


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory):
    require_netns("etcd")
    # short raft timings: quick start, and a 1 s minimum lease TTL for the expiry test
    with EtcdCluster(1, tmp_path_factory.mktemp("etcd"), heartbeat_ms=50, election_ms=250) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def etcd_tls_server(tmp_path_factory):
    require_netns("etcd")
    with EtcdCluster(1, tmp_path_factory.mktemp("etcd-tls"), heartbeat_ms=50, election_ms=250, tls=True) as cluster:
        yield cluster


def etcd_store(cluster: EtcdCluster, prefix: str | None = None):
    from meshd.store.etcd import EtcdConfig, EtcdStore
    from meshd.store.etcd_tls import load
    return EtcdStore(EtcdConfig(endpoints=tuple(cluster.endpoints), prefix=prefix or f"/test-{uuid.uuid4().hex[:12]}",
                                tls=load(*cluster.client_files) if cluster.tls else None))


@pytest.fixture(params=["sqlite", "etcd", "etcds"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "state.db", clock=ManualClock(), retain=5)
    else:
        s = etcd_store(request.getfixturevalue("etcd_server" if request.param == "etcd" else "etcd_tls_server"))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def sqlite_store(tmp_path):
    s = SQLiteStore(tmp_path / "state.db", clock=ManualClock(), retain=5)
    try:
        yield s
    finally:
        await s.close()


async def test_put_get_range_and_revisions(store):
    base = await store.revision()
    r1 = await store.put("/a/1", b"x")
    r2 = await store.put("/a/2", b"y")
    r3 = await store.put("/a/1", b"z")
    assert (r1, r2, r3) == (base + 1, base + 2, base + 3)
    assert await store.revision() == base + 3
    kv = await store.get("/a/1")
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"z", base + 1, base + 3, 2)
    await store.put("/b", b"other")
    kvs, rev = await store.range("/a/")
    assert [k.key for k in kvs] == ["/a/1", "/a/2"] and rev == base + 4
    assert await store.get("/missing") is None


async def test_txn_compare_and_swap(store):
    base = await store.revision()
    ok = await store.txn([absent("/k")], [Put("/k", b"1")], [])
    assert ok.succeeded and ok.revision == base + 1
    assert [(e.type, e.kv.key, e.kv.version, e.kv.create_revision) for e in ok.events] == [("put", "/k", 1, base + 1)]
    lost = await store.txn([absent("/k")], [Put("/k", b"2")], [])
    assert not lost.succeeded and (await store.get("/k")).value == b"1"
    assert lost.revision == base + 1 and lost.events == []  # nothing written, revision unchanged
    swap = await store.txn([Compare("/k", "value", "=", b"1")], [Put("/k", b"2"), Put("/j", b"j")])
    assert swap.succeeded and swap.revision == base + 2 and len(swap.events) == 2
    assert all(e.revision == base + 2 for e in swap.events)  # one transaction, one revision
    assert (swap.events[0].kv.version, swap.events[0].kv.create_revision) == (2, base + 1)
    other = await store.txn([Compare("/k", "mod", "<", base + 2)], [Delete("/k")], [Put("/f", b"failure branch")])
    assert not other.succeeded and (await store.get("/f")).value == b"failure branch"


async def test_delete_prefix(store):
    for i in range(3):
        await store.put(f"/svc/{i}", b"v")
    res = await store.txn([], [DeletePrefix("/svc/")])
    assert [e.type for e in res.events] == ["delete"] * 3
    assert (await store.range("/svc/"))[0] == []


async def test_watch_history_then_live_without_gap(store):
    base = await store.revision()
    await store.put("/w/a", b"1")          # base + 1
    await store.put("/other", b"x")        # base + 2, not under the prefix
    await store.put("/w/b", b"2")          # base + 3
    seen = []
    last_values = []

    async def consume():
        async for batch in store.watch("/w/", base + 1):
            if not batch:
                seen.append("caught up")
            seen.extend((e.type, e.kv.key, e.revision - base) for e in batch)
            last_values.extend(e.kv.value for e in batch if e.type == "delete")
            if len(seen) >= 3:
                return

    task = asyncio.create_task(consume())
    await until(lambda: "caught up" in seen, 5)  # the history comes before the marker
    await store.delete("/w/a")             # base + 4, live
    await asyncio.wait_for(task, 5)
    assert seen == [("put", "/w/b", 3), "caught up", ("delete", "/w/a", 4)]
    assert last_values == [b"1"]  # a delete event carries the key's last value


async def test_watch_with_no_history_is_caught_up_at_once(store):
    rev = await store.put("/n/a", b"1")
    seen = []

    async def consume():
        async for batch in store.watch("/n/", rev):
            seen.append([(e.type, e.kv.key) for e in batch])
            if len(seen) == 2:
                return

    task = asyncio.create_task(consume())
    await until(lambda: bool(seen), 5)
    assert seen == [[]]
    await store.put("/n/b", b"2")
    await asyncio.wait_for(task, 5)
    assert seen == [[], [("put", "/n/b")]]


async def test_watch_from_compacted_revision_raises(store):
    base = await store.revision()
    for i in range(8):
        await store.put("/c", str(i).encode())
    await store.compact(base + 6)
    await store.compact(base + 3)  # behind the compaction point: nothing to do, no error
    with pytest.raises(Compacted):
        async for _ in store.watch("/c", base + 2):
            pass
    batches = []
    async for batch in store.watch("/c", base + 6):
        batches.append(batch)
        if not batch:
            break
    assert [e.revision - base for e in batches[0]] == [7] and batches[0][0].kv.value == b"6"
    assert batches[-1] == [] and len(batches) == 3


async def test_leases_expire_with_injected_clock(sqlite_store):
    store = sqlite_store
    clock = store._clock
    lease = await store.lease_grant(10)
    await store.put("/lease/x", b"1", lease=lease)
    clock.advance(5)
    assert await store.lease_keepalive(lease) == 10
    clock.advance(9)
    clock.step_wall(3600)  # a wall-clock step does not touch a lease
    assert await store.expire_leases() == 0
    clock.advance(2)
    assert await store.expire_leases() == 1
    assert await store.get("/lease/x") is None
    with pytest.raises(NotFound):
        await store.lease_keepalive(lease)
    with pytest.raises(NotFound):
        await store.put("/lease/y", b"1", lease=lease)


async def test_a_persisted_lease_gets_its_full_ttl_again_after_a_restart(tmp_path):
    """A monotonic deadline means nothing to the next process: a reopened store counts every
    lease's TTL afresh, whatever the wall clock did meanwhile."""
    first = SQLiteStore(tmp_path / "state.db", clock=ManualClock(monotonic=5000.0))
    lease = await first.lease_grant(10)
    await first.put("/lease/x", b"1", lease=lease)
    await first.close()
    clock = ManualClock(monotonic=3.0)  # after a reboot: the monotonic clock starts low again
    clock.step_wall(86400)              # and a day went by on the wall clock
    again = SQLiteStore(tmp_path / "state.db", clock=clock)
    try:
        clock.advance(9)
        assert await again.expire_leases() == 0 and await again.get("/lease/x") is not None
        assert await again.lease_keepalive(lease) == 10
        clock.advance(10.5)
        assert await again.expire_leases() == 1 and await again.get("/lease/x") is None
    finally:
        await again.close()


async def test_value_compares_treat_a_missing_key_as_none(store):
    # a missing key's value is None: it differs from any bytes and equals None
    assert (await store.txn([Compare("/m", "value", "!=", b"x")], [Put("/m", b"1")])).succeeded
    assert (await store.txn([Compare("/n", "value", "=", None)], [Put("/n", b"1")])).succeeded
    assert not (await store.txn([Compare("/absent", "value", "=", b"x")], [Put("/z", b"1")])).succeeded
    assert not (await store.txn([Compare("/absent", "value", "<", b"x")], [Put("/z", b"1")])).succeeded
    # present keys: != compares the value; two != compares at once still form one transaction
    res = await store.txn([Compare("/m", "value", "!=", b"1"), Compare("/n", "value", "!=", b"2")],
                          [Put("/hit", b"1")], [Put("/miss", b"1")])
    assert not res.succeeded and await store.get("/hit") is None and await store.get("/miss") is not None
    res = await store.txn([Compare("/m", "value", "!=", b"2"), Compare("/n", "value", "!=", b"2"),
                           Compare("/n", "value", "!=", None)], [Put("/hit", b"1")], [Put("/miss", b"2")])
    assert res.succeeded and (await store.get("/hit")).value == b"1"
    assert (await store.get("/miss")).value == b"1"


async def test_lease_revoke_deletes_attached_keys_with_events(store):
    lease = await store.lease_grant(30)
    await store.put("/l/a", b"1", lease=lease)
    await store.put("/l/b", b"2", lease=lease)
    await store.put("/l/c", b"3")
    assert (await store.get("/l/a")).lease == lease
    rev = await store.revision()
    await store.lease_revoke(lease)
    kvs, _ = await store.range("/l/")
    assert [kv.key for kv in kvs] == ["/l/c"]
    batches = []
    async for batch in store.watch("/l/", rev):
        batches.append(batch)
        break
    assert sorted((e.type, e.kv.key, e.kv.value) for e in batches[0]) == [
        ("delete", "/l/a", b"1"), ("delete", "/l/b", b"2")]
    await store.lease_revoke(lease)  # already gone: a no-op
    with pytest.raises(NotFound):
        await store.lease_keepalive(lease)
    with pytest.raises(NotFound, match="lease"):
        await store.put("/l/d", b"1", lease=lease)
    assert await store.get("/l/d") is None


async def test_range_sees_exactly_the_prefix(store):
    for k in ["/p", "/p/a", "/p/b/c", "/pa", "/q"]:
        await store.put(k, k.encode())
    kvs, _ = await store.range("/p/")
    assert [kv.key for kv in kvs] == ["/p/a", "/p/b/c"]
    kvs, _ = await store.range("/p")
    assert [kv.key for kv in kvs] == ["/p", "/p/a", "/p/b/c", "/pa"]
    res = await store.txn([], [DeletePrefix("/p/")])
    assert sorted(e.kv.key for e in res.events) == ["/p/a", "/p/b/c"]
    assert await store.get("/pa") is not None


async def test_leases_expire_on_etcd_in_real_time(etcd_server):
    store = etcd_store(etcd_server)
    try:
        lease = await store.lease_grant(1)  # the test server's minimum TTL is 1 s
        await store.put("/lease/x", b"1", lease=lease)
        assert await store.lease_keepalive(lease) >= 1
        for _ in range(100):  # bounded: 10 s; etcd checks expiry twice a second
            if await store.get("/lease/x") is None:
                break
            await asyncio.sleep(0.1)
        assert await store.get("/lease/x") is None
        with pytest.raises(NotFound):
            await store.lease_keepalive(lease)
        with pytest.raises(NotFound):
            await store.put("/lease/y", b"1", lease=lease)
    finally:
        await store.close()


async def test_etcd_key_prefixes_keep_meshes_apart(etcd_server):
    a = etcd_store(etcd_server, "/mesh-a")
    b = etcd_store(etcd_server, "/mesh-a2")  # a string prefix of the other: still apart
    try:
        await a.put("/nodes/x", b"a")
        await b.put("/nodes/x", b"b")
        await b.put("/nodes/y", b"b")
        assert [(kv.key, kv.value) for kv in (await a.range(""))[0]] == [("/nodes/x", b"a")]
        assert [kv.key for kv in (await b.range("/nodes/"))[0]] == ["/nodes/x", "/nodes/y"]
        await a.txn([], [DeletePrefix("")])
        assert (await a.range(""))[0] == [] and len((await b.range(""))[0]) == 2
    finally:
        await b.txn([], [DeletePrefix("")])
        await a.close()
        await b.close()


async def test_etcd_refuses_two_writes_to_one_key_in_a_transaction(etcd_server):
    store = etcd_store(etcd_server)
    try:
        with pytest.raises(InvalidArgument, match="each key at most once"):
            await store.txn([], [Put("/d", b"1"), Put("/d", b"2")])
        assert await store.get("/d") is None
    finally:
        await store.close()


async def test_survives_reopen(tmp_path):
    s = SQLiteStore(tmp_path / "db")
    await s.put("/p", b"kept")
    await s.close()
    s2 = SQLiteStore(tmp_path / "db")
    assert (await s2.get("/p")).value == b"kept" and await s2.revision() == 1
    await s2.close()


def test_corrupted_database_is_a_clear_error(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="cannot be used.*move it aside"):
        SQLiteStore(path)
    assert path.read_bytes().startswith(b"this is not a database")  # never overwritten


WRITER = """
import asyncio, sys
from meshd.store.sqlite import SQLiteStore
async def main():
    s = SQLiteStore(sys.argv[1])
    i = 0
    while True:
        await s.put(f"/k/{i:06d}", b"v")
        print(i, flush=True)   # acknowledged
        i += 1
asyncio.run(main())
"""


async def test_sigkill_mid_write_loses_nothing_acknowledged(tmp_path):
    path = tmp_path / "state.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    acked = -1
    try:
        for line in proc.stdout:  # bounded: stop after 200 acknowledged writes
            acked = int(line)
            if acked >= 200:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        acked = max([acked] + [int(x) for x in proc.stdout.read().split()])
    finally:
        if proc.poll() is None:
            proc.kill()
    s = SQLiteStore(path)
    try:
        kvs, _ = await s.range("/k/")
        keys = {kv.key for kv in kvs}
        assert all(f"/k/{i:06d}" in keys for i in range(acked + 1))
    finally:
        await s.close()


async def test_etcd_space_quota_alarm_is_reported(tmp_path):
    """etcd with a small --quota-backend-bytes under churn: NOSPACE is raised, and the store says so."""
    from meshcore.errors import MeshError
    from meshd.store.etcd import EtcdStore
    from tests.conftest import require_netns

    require_netns("etcd")
    cluster = EtcdCluster(1, tmp_path / "etcd", heartbeat_ms=50, election_ms=250, quota_backend_bytes=1 << 20)
    cluster.start()
    store = EtcdStore.from_url(cluster.url)
    try:
        assert await store.check_alarms() == []
        blob = b"x" * 64 * 1024
        with pytest.raises(MeshError):
            for i in range(400):  # bounded: 25 MB of churn against a 1 MB quota
                await store.put(f"/churn/{i % 8}", blob)
        alarms = await store.check_alarms()
        assert alarms and alarms[0].startswith("NOSPACE") and "read-only" in alarms[0]
    finally:
        await store.close()
        cluster.stop()


async def test_sqlite_watcher_behind_gets_what_waited_as_one_batch_in_order(sqlite_store):
    store = sqlite_store
    rev = await store.revision()
    stream = store.watch("/w/", rev)
    assert await asyncio.wait_for(anext(stream), 5) == []  # caught up
    revs = [await store.put("/w/a", b"1"), await store.put("/w/b", b"2"), await store.delete("/w/a")]
    batch = await asyncio.wait_for(anext(stream), 5)  # nothing read meanwhile: all three at once
    assert [(e.type, e.kv.key, e.revision) for e in batch] == [("put", "/w/a", revs[0]), ("put", "/w/b", revs[1]),
                                                              ("delete", "/w/a", revs[2])]
    assert await store.revision() == revs[2]  # the revision kept in memory follows every write
    await stream.aclose()


async def test_sqlite_reads_see_each_acknowledged_write(sqlite_store):
    """Reads run on their own connection: a write, once acknowledged, is what the next read sees."""
    for i in range(20):
        rev = await sqlite_store.put(f"/r/{i}", str(i).encode())
        kv = await sqlite_store.get(f"/r/{i}")
        kvs, at = await sqlite_store.range("/r/")
        assert kv.value == str(i).encode() and kv.mod_revision == rev
        assert len(kvs) == i + 1 and at == rev == await sqlite_store.revision()


async def test_a_snapshot_caught_up_from_the_changes_equals_a_fresh_read(store):
    """meshd.fanout.Snapshots reads only what changed since its copy (`changes`), deletions
    included, also a deletion and a new key between two reads."""
    from meshd.fanout import Snapshots

    def decode(kv):
        return kv.value.decode()
    for k in ("b", "d", "f", "h"):
        await store.put(f"/snap/{k}", k.encode())
    snaps = Snapshots(store, "/snap/", decode)
    await snaps.get()
    await store.put("/snap/a", b"a")
    await store.put("/snap/d", b"d2")
    await store.delete("/snap/f")
    await store.put("/other/x", b"not ours")
    items, rev = await snaps.get()
    assert (items, rev) == await Snapshots(store, "/snap/", decode).get()
    assert [v for v, _ in items] == ["a", "b", "d2", "h"]
    await store.delete("/snap/h")  # one gone, one new: the same count
    await store.put("/snap/c", b"c")
    items, rev = await snaps.get()
    assert (items, rev) == await Snapshots(store, "/snap/", decode).get()
    assert [v for v, _ in items] == ["a", "b", "c", "d2"]
    assert (snaps.reads, snaps.catch_ups) == (1, 2)


async def test_etcd_reads_page_by_page_at_one_revision(etcd_server):
    """range and changes read a prefix larger than a page in pages, all at one revision."""
    import dataclasses
    store = etcd_store(etcd_server)
    store.config = dataclasses.replace(store.config, page_size=2)
    try:
        first = await store.put("/p/a", b"1")
        for k in "bcde":
            await store.put(f"/p/{k}", b"1")
        kvs, rev = await store.range("/p/")
        assert [kv.key for kv in kvs] == ["/p/a", "/p/b", "/p/c", "/p/d", "/p/e"] and rev == await store.revision()
        await store.delete("/p/b")
        events, rev, keys = await store.changes("/p/", first)
        assert [e.kv.key for e in events] == ["/p/c", "/p/d", "/p/e"] and rev == await store.revision()
        assert keys == {"/p/a", "/p/c", "/p/d", "/p/e"}
    finally:
        await store.close()


async def test_sqlite_get_reads_on_the_loop_and_a_busy_database_on_the_reading_thread(tmp_path):
    """A read of one key runs on the event loop's thread with a connection of its own that never
    waits for a lock; if SQLite answers busy there (WAL recovery, which cannot be staged from
    outside meshd's own connections: its answer is given by a stand-in for that connection), the
    read is made on the reading thread instead, and gets the same answer."""
    import sqlite3
    import threading

    class Busy:
        def execute(self, *a):
            raise sqlite3.OperationalError("database is locked")

        def close(self) -> None:
            pass

    store = SQLiteStore(tmp_path / "state.db", clock=ManualClock())
    try:
        rev = await store.put("/k", b"v")
        threads = set()
        real = store._get

        def spy(key, db=None):
            threads.add(threading.current_thread().name)
            return real(key, db)
        store._get = spy
        assert (await store.get("/k")).value == b"v"
        assert threads == {threading.current_thread().name}  # on the loop's thread, no hop
        loop_db, store._ldb, threads = store._ldb, Busy(), set()
        loop_db.close()
        kv = await store.get("/k")
        assert kv.value == b"v" and kv.mod_revision == rev
        assert any(t.startswith("sqlite-read") for t in threads)
        assert await store.get("/missing") is None
    finally:
        await store.close()
