"""Signed catalog records: signatures, the conflict rule, tombstones, visibility."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshcore.errors import InvalidArgument
from meshcore.gossip.messages import Record
from meshcore.gossip.records import RecordStore, ed25519_verifier, make_record

MESHD = Ed25519PrivateKey.generate()
VERIFY = ed25519_verifier(MESHD.public_key())


def test_only_meshd_signatures_verify():
    good = make_record(MESHD, "svc", 3, "n1", b"10.0.0.1:80")
    assert VERIFY(good)
    forged = make_record(Ed25519PrivateKey.generate(), "svc", 3, "n2", b"10.6.6.6:80")
    assert not VERIFY(forged)
    for field, value in [("origin", "n2"), ("payload", b"evil"), ("revision", 4), ("deleted", True), ("key", "other")]:
        kw = {f: getattr(good, f) for f in ("key", "revision", "origin", "payload", "deleted", "signature")}
        kw[field] = value
        assert not VERIFY(Record(**kw)), f"changing {field} must break the signature"
    assert not VERIFY(Record("svc", 3, "n1", b"x", False, b"short"))


def test_make_record_refuses_bad_fields():
    with pytest.raises(InvalidArgument, match="payload"):
        make_record(MESHD, "svc", 1, "n1", b"x" * 2000)
    with pytest.raises(InvalidArgument, match="negative"):
        make_record(MESHD, "svc", -1, "n1", b"")
    with pytest.raises(InvalidArgument, match="key"):
        make_record(MESHD, "", 1, "n1", b"")


def test_conflict_rule_is_independent_of_arrival_order():
    recs = [Record("svc", 5, "n1", b"a"), Record("svc", 5, "n2", b"b"), Record("svc", 4, "n9", b"c"),
            Record("svc", 6, "n0", b"", deleted=True), Record("svc", 6, "n0", b"", deleted=True)]
    finals = set()
    for perm in itertools.permutations(recs):
        store = RecordStore(tombstone_ttl=60)
        for r in perm:
            store.offer(r, 0.0)
        finals.add(store.get("svc"))
    assert finals == {Record("svc", 6, "n0", b"", deleted=True)}
    assert Record("k", 5, "n2", b"").wins_over(Record("k", 5, "n1", b""))
    assert not Record("k", 4, "n9", b"").wins_over(Record("k", 5, "n1", b""))


def test_tombstone_hides_then_expires():
    store = RecordStore(tombstone_ttl=10)
    store.offer(Record("svc", 1, "n1", b"x"), 0.0)
    assert "svc" in store.visible()
    stored, _ = store.offer(Record("svc", 2, "n1", b"", deleted=True), 1.0)
    assert stored and "svc" not in store.visible()
    assert store.offer(Record("svc", 1, "n1", b"x"), 2.0)[0] is False  # no resurrection
    assert store.expire_tombstones(5.0) == 0
    assert store.expire_tombstones(12.0) == 1 and store.get("svc") is None


def test_hidden_origin_comes_back():
    store = RecordStore(tombstone_ttl=10)
    a = Record("a", 1, "n1", b"")
    store.offer(a, 0)
    store.offer(Record("b", 1, "n2", b""), 0)
    assert store.hide_origin("n1") == [a]
    assert store.hide_origin("n1") == []
    assert set(store.visible()) == {"b"}
    assert store.show_origin("n1") == [a]
    assert set(store.visible()) == {"a", "b"}
    store.forget_origin("n1")
    assert store.get("a") is None
