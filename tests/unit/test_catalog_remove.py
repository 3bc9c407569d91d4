"""Removing a service while its owner changes it (a health report between the read and the write)."""

from __future__ import annotations

import pytest

from mesh.v1 import types_pb2
from meshcore.errors import PermissionDenied
from meshd.catalog import PREFIX, Catalog
from meshd.store.base import Put
from meshd.store.sqlite import SQLiteStore


def _racing(store: SQLiteStore, change: types_pb2.Service):
    """store.txn, which writes `change` just before its first call (as another request would)."""
    real, calls = store.txn, []

    async def txn(compares, success, failure=()):
        calls.append(1)
        if len(calls) == 1:
            await real([], [Put(PREFIX + change.name, change.SerializeToString())])
        return await real(compares, success, failure)
    return txn, calls


async def test_a_health_report_meanwhile_does_not_fail_the_removal(tmp_path):
    store = SQLiteStore(tmp_path / "db")
    try:
        svc = types_pb2.Service(name="web", port=8000, node_id="n1", node_name="vm-1")
        await store.put(PREFIX + "web", svc.SerializeToString())
        reported = types_pb2.Service(name="web", port=8000, node_id="n1", node_name="vm-1",
                                     health_state=types_pb2.HEALTH_STATE_CRITICAL)
        store.txn, calls = _racing(store, reported)
        gone = await Catalog(store).unexpose("web", None)  # an admin
        assert len(calls) == 2  # the first write found the service changed; read again, removed
        assert gone.health_state == types_pb2.HEALTH_STATE_CRITICAL
        assert await store.get(PREFIX + "web") is None
    finally:
        await store.close()


async def test_a_service_taken_over_meanwhile_is_checked_again(tmp_path):
    store = SQLiteStore(tmp_path / "db")
    try:
        await store.put(PREFIX + "web", types_pb2.Service(name="web", port=8000, node_id="n1").SerializeToString())
        store.txn, _ = _racing(store, types_pb2.Service(name="web", port=8000, node_id="n2", node_name="vm-2"))
        with pytest.raises(PermissionDenied, match="belongs to node 'vm-2'"):
            await Catalog(store).unexpose("web", "n1")  # its old owner may no longer remove it
        assert (await store.get(PREFIX + "web")) is not None
    finally:
        await store.close()
