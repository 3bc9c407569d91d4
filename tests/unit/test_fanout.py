"""meshd.fanout: the current set read once per revision, caught up from the store's history."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace

from mesh.v1 import nodes_pb2, types_pb2
from meshd.fanout import Snapshots, batch
from meshd.store.sqlite import SQLiteStore


def decode(kv) -> str:
    return kv.value.decode()


class SetIndex:
    """An index that holds the current objects (as meshd.claims.Holders does, by fact)."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.changes = 0

    def reset(self, objects) -> None:
        self.values = set(objects)

    def change(self, old, new) -> None:
        self.changes += 1
        self.values.discard(old)
        if new is not None:
            self.values.add(new)


async def test_a_snapshot_catches_up_from_the_history_and_equals_a_fresh_read(tmp_path):
    store = SQLiteStore(tmp_path / "db")
    try:
        for k in ("b", "d", "f"):
            await store.put(f"/x/{k}", k.encode())
        index = SetIndex()
        snaps = Snapshots(store, "/x/", decode, index=index)
        first, _ = await snaps.get()
        await store.put("/x/a", b"a")  # new, before every other key
        await store.put("/x/d", b"d2")  # changed
        await store.delete("/x/f")
        await store.put("/y/other", b"not ours")
        items, rev = await snaps.get()
        fresh, fresh_rev = await Snapshots(store, "/x/", decode).get()
        assert (items, rev) == (fresh, fresh_rev)
        assert [v for v, _ in items] == ["a", "b", "d2"]
        assert [v for v, _ in first] == ["b", "d", "f"]  # a list handed out before is left as it was
        assert (snaps.reads, snaps.catch_ups) == (1, 1)
        assert index.values == {"a", "b", "d2"} and index.changes == 3  # followed change by change
        await store.put("/x/c", b"c")
        await store.compact(await store.revision())
        items, _ = await snaps.get()  # the history no longer reaches back: read in full
        assert [v for v, _ in items] == ["a", "b", "c", "d2"] and snaps.reads == 2
        assert index.values == {"a", "b", "c", "d2"}
    finally:
        await store.close()


def test_a_batch_put_together_from_entries_is_the_message_encoded_at_once():
    nodes = [types_pb2.Node(id=f"n{i}", name=f"node-{i}", labels={"gpu.count": str(i)}, revision=i) for i in range(5)]
    entries = [nodes_pb2.NodeEvent(nodes=[n]).SerializeToString() for n in nodes]
    header = nodes_pb2.NodeEvent(type=types_pb2.EVENT_TYPE_PUT, revision=9).SerializeToString()
    got = nodes_pb2.NodeEvent.FromString(batch(header, [entries[0], None, *entries[1:]]))
    assert got == nodes_pb2.NodeEvent(type=types_pb2.EVENT_TYPE_PUT, revision=9, nodes=nodes)


async def test_a_change_is_decoded_once_for_every_catalog_watcher(tmp_path):
    from meshd.catalog import PREFIX, Catalog
    store = SQLiteStore(tmp_path / "db")
    try:
        catalog = Catalog(store)
        watchers = [catalog.watch(0) for _ in range(3)]
        for w in watchers:  # reset and synced (an empty catalog)
            assert [(await anext(w))[0] for _ in range(2)] == ["reset", "synced"]
        svc = types_pb2.Service(name="web", port=8000, node_id="n1")
        await store.put(PREFIX + "web", svc.SerializeToString())
        got = [await anext(w) for w in watchers]
        assert [(kind, obj.name, obj.port) for kind, obj, _ in got] == [("put", "web", 8000)] * 3
        assert got[0][1] is got[1][1] is got[2][1]  # one decode, shared (read only)
        assert got[0][1].revision == got[0][2] == await store.revision()
        for w in watchers:
            await w.aclose()
    finally:
        await store.close()


async def test_a_stream_past_the_set_keeps_no_reference_to_the_set_it_sent(tmp_path):
    """A stream lives as long as its agent; the list of the set as of the revision it started at
    (a new one at each revision while a fleet joins) must not live as long."""
    from meshd.catalog import watch_prefix

    def obj(kv):  # a live change's object gets its revision set, as a protobuf message does
        return SimpleNamespace(value=kv.value)
    store = SQLiteStore(tmp_path / "db")
    try:
        for k in "abcde":
            await store.put(f"/x/{k}", k.encode())
        snaps = Snapshots(store, "/x/", obj)
        items, _ = await snaps.get()
        for grouped in (False, True):
            w = watch_prefix(store, "/x/", 0, obj, snaps.get, grouped=grouped, chunk=2)
            kinds = [(await anext(w))[0] for _ in range(5)]
            assert kinds == ["reset", "batch", "batch", "batch", "synced"]
            waiting = asyncio.ensure_future(anext(w))  # suspended inside, waiting for a live change
            await asyncio.sleep(0.05)
            assert not waiting.done()
            assert w not in gc.get_referrers(items)
            await store.put("/x/f", b"f")
            got = await asyncio.wait_for(waiting, 5)
            assert got[0] in ("put", "changes")
            await w.aclose()
    finally:
        await store.close()
