"""AES-GCM keyring: sealing, key ids, rotation primitives and refusals."""

from __future__ import annotations

import os

import pytest

from meshcore.errors import FailedPrecondition, InvalidArgument, NotFound, PeerError
from meshcore.gossip.keyring import OVERHEAD, Keyring, Plaintext, key_id


def test_seal_open_and_overhead():
    ring = Keyring(os.urandom(32))
    sealed = ring.seal(b"hello")
    assert len(sealed) == len(b"hello") + OVERHEAD
    assert ring.open(sealed) == b"hello"
    assert sealed[1:5] == bytes.fromhex(ring.primary_id)


def test_wrong_key_tampering_and_truncation_are_peer_errors():
    a, b = Keyring(os.urandom(16)), Keyring(os.urandom(16))
    sealed = a.seal(b"secret")
    with pytest.raises(PeerError, match="unknown key"):
        b.open(sealed)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(PeerError, match="authentication"):
        a.open(bytes(tampered))
    with pytest.raises(PeerError, match="shorter"):
        a.open(sealed[:10])
    with pytest.raises(PeerError, match="requires encryption"):
        a.open(Plaintext().seal(b"x" * 40))
    with pytest.raises(PeerError, match="unencrypted"):
        Plaintext().open(sealed)


def test_key_id_is_bound_as_associated_data():
    k1, k2 = os.urandom(32), os.urandom(32)
    ring = Keyring(k1, [k2])
    sealed = bytearray(ring.seal(b"data"))
    sealed[1:5] = key_id(k2)  # claim the other installed key
    with pytest.raises(PeerError, match="authentication"):
        ring.open(bytes(sealed))


def test_rotation_install_use_remove():
    old, new = os.urandom(32), os.urandom(32)
    a, b = Keyring(old), Keyring(old)
    for ring in (a, b):
        ring.install(new)
    a.use(new)
    assert b.open(a.seal(b"1")) == b"1"  # b still sends with old, reads new
    assert a.open(b.seal(b"2")) == b"2"  # a sends with new, still reads old
    b.use(new)
    a.remove(old)
    b.remove(old)
    assert a.key_ids() == [key_id(new).hex()]
    with pytest.raises(PeerError):
        a.open(Keyring(old).seal(b"3"))


def test_rotation_refusals_name_the_rule():
    k = os.urandom(32)
    ring = Keyring(k)
    with pytest.raises(FailedPrecondition, match="primary"):
        ring.remove(k)
    with pytest.raises(NotFound, match="install it on every node"):
        ring.use(os.urandom(32))
    with pytest.raises(NotFound, match="not installed"):
        ring.remove(os.urandom(32))
    with pytest.raises(InvalidArgument, match="16, 24 or 32 bytes"):
        Keyring(b"short")
    assert ring.install(k) == key_id(k)  # idempotent
