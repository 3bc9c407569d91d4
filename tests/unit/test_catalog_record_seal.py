"""Sealed catalog records: key id and expiry travel in the signature field and are signed."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from meshcore.clock import ManualClock
from meshcore.gossip.codec import decode_message, encode_message
from meshcore.gossip.records import CatalogVerifier, make_record


def _pub(k: ed25519.Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_a_sealed_record_round_trips_and_its_expiry_is_under_the_signature():
    clock = ManualClock(wall=1_800_000_000.0)
    key = ed25519.Ed25519PrivateKey.generate()
    rec = make_record(key, "web", 5, "n1", b"payload", False, "0a1b2c3d", 1_800_000_600)
    back = decode_message(encode_message(rec))
    assert back == rec and back.key_id == "0a1b2c3d" and back.expires == 1_800_000_600
    refusals = []
    v = CatalogVerifier(clock.wall, lambda reason, r: refusals.append(reason))
    v.update({"0a1b2c3d": (_pub(key), 1_800_000_300)})
    assert v(back)
    assert not v(dataclasses.replace(back, expires=back.expires + 3600))  # a longer life is not meshd's
    clock.step_wall(300)  # the key retires before the record expires
    assert not v(back)
    v.update({"0a1b2c3d": (_pub(key), 0)})
    clock.step_wall(300)  # now the record itself has expired
    assert not v(back)
    assert refusals == ["bad_signature", "key_retired", "expired"]


def test_the_bare_signature_of_an_older_meshd_is_accepted_only_without_a_key_set():
    clock = ManualClock(wall=1_800_000_000.0)
    key = ed25519.Ed25519PrivateKey.generate()
    old = decode_message(encode_message(make_record(key, "web", 5, "n1", b"payload")))
    assert old.key_id == "" and old.expires == 0
    v = CatalogVerifier(clock.wall)
    v.update({}, legacy=_pub(key))
    assert v.why_not(old) is None
    v.update({"0a1b2c3d": (_pub(key), 0)}, legacy=_pub(key))
    assert v.why_not(old) == "unsealed"
    v.update({"ffffffff": (_pub(ed25519.Ed25519PrivateKey.generate()), 0)})
    sealed = make_record(key, "web", 6, "n1", b"payload", False, "0a1b2c3d", 1_800_000_600)
    assert v.why_not(sealed) == "key_retired"  # handed out before, no longer
    assert v.why_not(dataclasses.replace(sealed, key_id="12345678")) == "unknown_key"
