"""Gossip encryption keyring: AES-GCM with one primary key and older keys for rotation.

Every datagram and push-pull frame is sealed as

    version u8 (=1) | key id (4 bytes) | nonce (12 bytes) | AES-GCM ciphertext and tag

The key id is the first four bytes of SHA-256(key): the receiver picks the key
directly instead of trying each one. The version byte and key id are bound as
associated data, so they cannot be swapped.

Rotation without a restart, in three steps run on every node (the new key
reaches nodes only over the mTLS join/control channel, never over gossip):

1. `install(new)`  every node can now read the new key, still sends with the old;
2. `use(new)`      nodes send with the new key; the old one is still accepted;
3. `remove(old)`   the old key is no longer accepted.

`Plaintext` has the same interface and seals nothing (version byte 0); it is
for the simulator and for tests that inspect raw packets. A keyring only opens
packets sealed the same way: a plaintext packet is refused by a keyring and
the other way round.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshcore.errors import FailedPrecondition, InvalidArgument, NotFound, PeerError

VERSION_PLAIN = 0
VERSION_AESGCM = 1
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = 1 + 4 + NONCE_SIZE + TAG_SIZE
KEY_RULE = "a gossip key must be 16, 24 or 32 bytes (AES-128/192/256)"


def key_id(key: bytes) -> bytes:
    """The 4-byte id that names `key` on the wire."""
    return hashlib.sha256(key).digest()[:4]


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) not in (16, 24, 32):
        n = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise InvalidArgument(f"invalid gossip key ({n}): {KEY_RULE}")
    return bytes(key)


class Keyring:
    """Primary key (used to seal) plus older keys (still accepted to open)."""

    overhead = OVERHEAD

    def __init__(self, primary: bytes, others: list[bytes] | None = None,
                 nonce: Callable[[int], bytes] = os.urandom) -> None:
        # Nonces must never repeat under one key: 96 random bits per datagram
        # is the standard choice, so the default source is the OS's CSPRNG.
        self._nonce = nonce
        self._keys: dict[bytes, AESGCM] = {}
        self._raw: dict[bytes, bytes] = {}
        self._primary = b""
        self.install(primary)
        for k in others or []:
            self.install(k)
        self._primary = key_id(_check_key(primary))

    # --- rotation primitives ---

    def install(self, key: bytes) -> bytes:
        """Accept `key` for opening; returns its id. Installing twice is harmless."""
        kid = key_id(_check_key(key))
        if kid in self._raw and self._raw[kid] != bytes(key):
            raise InvalidArgument("gossip key id collision: two different keys share an id; generate a new key")
        self._raw[kid] = bytes(key)
        self._keys[kid] = AESGCM(bytes(key))
        return kid

    def use(self, key: bytes) -> None:
        """Make an installed key the primary (the one that seals)."""
        kid = key_id(_check_key(key))
        if kid not in self._keys:
            raise NotFound(f"gossip key {kid.hex()} is not installed: install it on every node before using it")
        self._primary = kid

    def remove(self, key: bytes) -> None:
        """Stop accepting `key`. The primary cannot be removed."""
        kid = key_id(_check_key(key))
        if kid == self._primary:
            raise FailedPrecondition(f"gossip key {kid.hex()} is the primary: use another key before removing it")
        if kid not in self._keys:
            raise NotFound(f"gossip key {kid.hex()} is not installed")
        del self._keys[kid]
        del self._raw[kid]

    def key_ids(self) -> list[str]:
        """Installed key ids in hex, primary first."""
        return [self._primary.hex()] + sorted(k.hex() for k in self._keys if k != self._primary)

    @property
    def primary_id(self) -> str:
        return self._primary.hex()

    # --- sealing ---

    def seal(self, plaintext: bytes) -> bytes:
        head = bytes((VERSION_AESGCM,)) + self._primary
        nonce = self._nonce(NONCE_SIZE)
        return head + nonce + self._keys[self._primary].encrypt(nonce, plaintext, head)

    def open(self, data: bytes) -> bytes:
        """Plaintext of a sealed packet, or PeerError naming why it was refused."""
        if len(data) < OVERHEAD:
            raise PeerError(f"sealed gossip packet of {len(data)} bytes is shorter than the {OVERHEAD}-byte envelope")
        if data[0] != VERSION_AESGCM:
            raise PeerError(f"gossip packet version {data[0]} refused: this node requires encryption (version 1)")
        head = bytes(data[:5])
        aead = self._keys.get(head[1:5])
        if aead is None:
            raise PeerError(f"gossip packet sealed with unknown key {head[1:5].hex()}")
        view = memoryview(data)  # no copy of a large push-pull frame before it is authenticated
        try:
            return aead.decrypt(view[5:17], view[17:], head)
        except InvalidTag:
            raise PeerError("gossip packet failed authentication (wrong key or tampered)") from None


class Plaintext:
    """No encryption: for the simulator and tests only."""

    overhead = 1
    primary_id = ""

    def key_ids(self) -> list[str]:
        return []

    def seal(self, plaintext: bytes) -> bytes:
        return b"\x00" + plaintext

    def open(self, data: bytes) -> bytes:
        if not data or data[0] != VERSION_PLAIN:
            raise PeerError("gossip packet refused: this node expects unencrypted packets (version 0)")
        return data[1:]
