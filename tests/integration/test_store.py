"""The store contract: every backend must pass these (SQLite here; etcd joins the
`backend` fixture when its server is available)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from meshcore.errors import NotFound, StateError
from meshd.store.base import Compacted, Compare, Delete, DeletePrefix, Put, absent
from meshd.store.sqlite import SQLiteStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path):
    s = SQLiteStore(tmp_path / "state.db", clock=FakeClock(), retain=5)
    yield s
    await s.close()


async def test_put_get_range_and_revisions(store):
    assert await store.revision() == 0
    r1 = await store.put("/a/1", b"x")
    r2 = await store.put("/a/2", b"y")
    r3 = await store.put("/a/1", b"z")
    assert (r1, r2, r3) == (1, 2, 3)
    kv = await store.get("/a/1")
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"z", 1, 3, 2)
    await store.put("/b", b"other")
    kvs, rev = await store.range("/a/")
    assert [k.key for k in kvs] == ["/a/1", "/a/2"] and rev == 4
    assert await store.get("/missing") is None


async def test_txn_compare_and_swap(store):
    ok = await store.txn([absent("/k")], [Put("/k", b"1")], [])
    assert ok.succeeded and ok.revision == 1
    lost = await store.txn([absent("/k")], [Put("/k", b"2")], [])
    assert not lost.succeeded and (await store.get("/k")).value == b"1"
    assert lost.revision == 1  # nothing written, revision unchanged
    swap = await store.txn([Compare("/k", "value", "=", b"1")], [Put("/k", b"2"), Put("/j", b"j")])
    assert swap.succeeded and swap.revision == 2 and len(swap.events) == 2
    assert all(e.revision == 2 for e in swap.events)  # one transaction, one revision
    other = await store.txn([Compare("/k", "mod", "<", 2)], [Delete("/k")], [Put("/f", b"failure branch")])
    assert not other.succeeded and (await store.get("/f")).value == b"failure branch"


async def test_delete_prefix(store):
    for i in range(3):
        await store.put(f"/svc/{i}", b"v")
    res = await store.txn([], [DeletePrefix("/svc/")])
    assert [e.type for e in res.events] == ["delete"] * 3
    assert (await store.range("/svc/"))[0] == []


async def test_watch_history_then_live_without_gap(store):
    await store.put("/w/a", b"1")          # rev 1
    await store.put("/other", b"x")        # rev 2, not under the prefix
    await store.put("/w/b", b"2")          # rev 3
    seen = []

    async def consume():
        async for batch in store.watch("/w/", 1):
            seen.extend((e.type, e.kv.key, e.revision) for e in batch)
            if len(seen) >= 2:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    await store.delete("/w/a")             # rev 4, live
    await asyncio.wait_for(task, 5)
    assert seen == [("put", "/w/b", 3), ("delete", "/w/a", 4)]


async def test_watch_from_compacted_revision_raises(store):
    for i in range(8):
        await store.put("/c", str(i).encode())
    await store.compact(6)
    with pytest.raises(Compacted):
        async for _ in store.watch("/c", 2):
            pass
    batches = []
    async for batch in store.watch("/c", 6):
        batches.append(batch)
        break
    assert batches[0][0].revision == 7


async def test_leases_expire_with_injected_clock(store):
    clock = store._clock
    lease = await store.lease_grant(10)
    await store.put("/lease/x", b"1", lease=lease)
    clock.now += 5
    assert await store.lease_keepalive(lease) == 10
    clock.now += 9
    assert await store.expire_leases() == 0
    clock.now += 2
    assert await store.expire_leases() == 1
    assert await store.get("/lease/x") is None
    with pytest.raises(NotFound):
        await store.lease_keepalive(lease)
    with pytest.raises(NotFound):
        await store.put("/lease/y", b"1", lease=lease)


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
