"""Keys: X25519 derivation, encodings, and the private key file."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from meshcore.errors import StateError
from meshagent.wg.keys import from_hex, generate_private_key, load_or_create_private_key, public_key, to_hex


def test_public_key_matches_rfc7748_test_vector():
    # RFC 7748 section 6.1: Alice's private key and public key.
    priv = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    pub = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert public_key(base64.b64encode(priv).decode()) == base64.b64encode(pub).decode()


def test_generated_keys_are_distinct_32_byte_base64():
    a, b = generate_private_key(), generate_private_key()
    assert a != b and len(base64.b64decode(a)) == 32 and len(a) == 44


def test_hex_round_trip():
    k = generate_private_key()
    assert from_hex(to_hex(k)) == k and len(to_hex(k)) == 64


def test_key_file_is_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "state" / "wg.key"
    k = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_private_key(path) == k  # the same key on every start


def test_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "wg.key"
    load_or_create_private_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(StateError, match="0600"):
        load_or_create_private_key(path)


def test_corrupt_key_file_is_a_clear_error(tmp_path):
    path = tmp_path / "wg.key"
    path.write_text("garbage\n")
    os.chmod(path, 0o600)
    with pytest.raises(StateError, match="corrupt"):
        load_or_create_private_key(path)
