"""`meshd store export|import|copy` (meshd/store/snapshot.py) on SQLite files and a real etcd server."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

from meshcore.clock import ManualClock
from meshcore.errors import FailedPrecondition, InvalidArgument
from meshd.store import snapshot
from meshd.store.sqlite import SQLiteStore
from meshd.storeid import KEY as STORE_KEY
from testbed.localmesh import BIN, _wait_ready
from tests.integration.test_store import etcd_server, etcd_store  # noqa: F401  (one etcd fixture for both)


async def a_mesh(store, n: int = 250, store_id: str = "0123456789abcdef") -> None:
    await store.put(STORE_KEY, json.dumps({"id": store_id, "epoch": 4}).encode())
    for i in range(n):  # more keys than one import transaction holds
        await store.put(f"/nodes/n{i:04d}", f"node {i}".encode() + bytes(range(256)))
    await store.put("/tokens/t1", b'{"uses": 3, "revoked": true}')
    lease = await store.lease_grant(30)
    await store.put("/election/meshd", b"me", lease=lease)


async def test_a_store_moves_to_etcd_and_back_key_for_key_under_the_next_epoch(tmp_path, etcd_server):
    src = SQLiteStore(tmp_path / "a.db", ManualClock())
    dst = etcd_store(etcd_server, f"/t-{uuid.uuid4().hex[:8]}")
    back = SQLiteStore(tmp_path / "a.db.back", ManualClock())
    try:
        await a_mesh(src)
        snap = await snapshot.export(src)
        assert "/election/meshd" not in snap.keys  # leased: belongs to the store that granted the lease
        assert len(snap.keys) == 252 and (snap.store_id, snap.epoch) == ("0123456789abcdef", 4)
        done = await snapshot.import_(dst, snapshot.Snapshot.from_bytes(snap.to_bytes()))
        assert done.epoch == 5 and done.transactions >= 4  # chunked below etcd's --max-txn-ops
        kvs, _ = await dst.range("/")
        got = {kv.key: kv.value for kv in kvs}
        assert json.loads(got.pop(STORE_KEY)) == {"id": "0123456789abcdef", "epoch": 5}
        assert got == {k: v for k, v in snap.keys.items() if k != STORE_KEY}
        assert not await snapshot.importing(dst)
        # back: the way home takes the epoch on again
        again = await snapshot.export(dst)
        assert (await snapshot.import_(back, again)).epoch == 6
        assert {kv.key for kv in (await back.range("/"))[0]} == set(snap.keys)
    finally:
        for s in (src, dst, back):
            await s.close()


async def test_another_meshs_store_is_refused_untouched_and_an_interrupted_import_is_finished(tmp_path):
    src = SQLiteStore(tmp_path / "a.db", ManualClock())
    other = SQLiteStore(tmp_path / "b.db", ManualClock())
    dst = SQLiteStore(tmp_path / "c.db", ManualClock())
    try:
        await a_mesh(src, n=5)
        await a_mesh(other, n=3, store_id="ffffffffffffffff")
        snap = await snapshot.export(src)
        before = await other.range("/")
        with pytest.raises(FailedPrecondition, match="holds another store .id ffffffffffffffff"):
            await snapshot.import_(other, snap)
        assert await other.range("/") == before
        # an import that died half way: the marker is there, a stale key too; meshd would keep waiting
        await dst.put(snapshot.IMPORT_KEY, json.dumps({"id": snap.store_id, "epoch": 5, "sha256": "x"}).encode())
        await dst.put("/nodes/n0000", b"half written")
        await dst.put("/nodes/stale", b"not in the snapshot")
        assert await snapshot.importing(dst)
        assert (await snapshot.import_(dst, snap)).epoch == 5  # the same epoch the first attempt chose
        assert (await snapshot.import_(dst, snap)).epoch == 6  # re-run: safe, agents resync once more
        kvs, _ = await dst.range("/")
        assert {kv.key for kv in kvs} == set(snap.keys) and not await snapshot.importing(dst)
        assert (await dst.get("/nodes/n0000")).value == snap.keys["/nodes/n0000"]
    finally:
        for s in (src, other, dst):
            await s.close()


def test_a_bad_file_is_one_line_and_writes_nothing(tmp_path):
    src = tmp_path / "state"
    (src / "x").mkdir(parents=True)

    def meshd(*args):
        return subprocess.run([str(BIN / "meshd"), "store", "--state-dir", str(src), *args],
                              capture_output=True, text=True, timeout=60)

    r = meshd("export", str(tmp_path / "snap.json"))
    assert r.returncode == 2 and r.stderr.strip() == f"meshd store export: no SQLite store at {src / 'state.db'}"
    import asyncio

    async def fill():
        s = SQLiteStore(src / "state.db", ManualClock())
        await a_mesh(s, n=3)
        await s.close()
    asyncio.run(fill())
    assert meshd("export", str(tmp_path / "snap.json")).returncode == 0
    assert (tmp_path / "snap.json").stat().st_mode & 0o077 == 0  # holds the gossip and signing keys
    doc = json.loads((tmp_path / "snap.json").read_text())
    doc["keys"][0][1] = "AAAA"
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    target = tmp_path / "new.db"
    r = meshd("import", str(tmp_path / "edited.json"), "--store", f"sqlite://{target}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "checksum mismatch" in r.stderr
    assert not target.exists()
    r = meshd("import", str(tmp_path / "snap.json"), "--store", f"sqlite://{target}")
    assert r.returncode == 0 and "epoch 5" in r.stdout
    with pytest.raises(InvalidArgument, match="not a meshd store snapshot"):
        snapshot.Snapshot.from_bytes(b'{"format": "other"}')


def test_meshd_awaiting_an_import_makes_no_mesh_of_its_own_and_serves_the_imported_one(tmp_path):
    """A coordinator launched for a profile switch: its store is empty until the copy arrives."""
    import asyncio
    src = SQLiteStore(tmp_path / "old.db", ManualClock())
    asyncio.run(a_mesh(src, n=3))
    asyncio.run(src.close())
    db = tmp_path / "new" / "state.db"
    log = open(tmp_path / "meshd.log", "wb")
    p = subprocess.Popen([str(BIN / "meshd"), "--state-dir", str(tmp_path / "new"), "--store", f"sqlite://{db}",
                          "--listen", "127.0.0.1:0", "--join-listen", "127.0.0.1:0", "--admin-socket", "",
                          "--metrics", "", "--await-import"], stdout=subprocess.PIPE, stderr=log,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "waiting for `meshd store import`" not in (tmp_path / "meshd.log").read_text():
            assert p.poll() is None and time.monotonic() < deadline, (tmp_path / "meshd.log").read_text()
            time.sleep(0.1)

        async def identity():
            s = SQLiteStore(db, ManualClock())
            try:
                return await s.get(STORE_KEY)
            finally:
                await s.close()
        assert asyncio.run(identity()) is None  # no mesh of its own meanwhile
        r = subprocess.run([str(BIN / "meshd"), "store", "--state-dir", str(tmp_path / "old-state"), "copy",
                            "--from", f"sqlite://{tmp_path / 'old.db'}", "--to", f"sqlite://{db}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        ready = _wait_ready(p, "meshd", tmp_path / "meshd.log", 30)  # raises if not serving within 30 s
        assert int(ready["listen"]) > 0
        assert json.loads(asyncio.run(identity()).value) == {"id": "0123456789abcdef", "epoch": 5}
    finally:
        p.terminate()
        p.wait(10)
        log.close()
