"""Gossip secrets kept by meshd: the AES-GCM keyring and the catalog signing key.

Both live in the store (so every meshd replica uses the same ones) and reach
agents only over mTLS, in JoinResponse and RenewResponse:
- `/gossip/keyring`: JSON {"keys": [hex, ...], "primary": 0, "rotation": {...}}.
- `/gossip/catalog-key`: meshd's Ed25519 private key (raw 32 bytes). Every
  catalog change in a watch stream carries a record signed with it; agents
  accept a record from a peer only with a valid signature.

Rotation (`meshctl keys rotate`) in three stages, each advanced by meshd's
lease loop once every live node has renewed since the previous stage (so it
has the keyring of that stage): install the new key as secondary, make it
primary, retire the old one. No restart anywhere.

The stored `since` of a stage is a wall-clock timestamp, for people. Whether
every node has renewed since a stage began is asked on the monotonic clock
(renewals are kept there): this replica notes when it first saw each stage.
A replica that takes over leadership mid-rotation counts the stage from then,
which can only make it wait one renewal period longer, never advance early.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mesh.v1 import admission_pb2, types_pb2
from meshcore.clock import SYSTEM, Clock
from meshcore.errors import FailedPrecondition
from meshcore.gossip.codec import encode_record
from meshcore.gossip.records import make_record
from meshd.store.base import Put, Store, absent, unchanged

KEYRING = "/gossip/keyring"
CATALOG_KEY = "/gossip/catalog-key"


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


class GossipKeys:
    def __init__(self, store: Store, clock: Clock = SYSTEM) -> None:
        self.store = store
        self.clock = clock
        self._stage_began: dict[tuple[str, str], float] = {}  # (key id, stage) -> monotonic time first seen
        self._signing: ed25519.Ed25519PrivateKey | None = None
        self._ring: dict | None = None
        self._cache: dict[tuple[str, int, bool], bytes] = {}

    async def load(self) -> None:
        """Create both secrets on first start (create-if-absent, so replicas agree), then read them."""
        await self.store.txn([absent(KEYRING)], [Put(KEYRING, json.dumps(
            {"keys": [os.urandom(32).hex()], "primary": 0, "rotation": None}).encode())])
        raw = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        await self.store.txn([absent(CATALOG_KEY)], [Put(CATALOG_KEY, raw)])
        self._signing = ed25519.Ed25519PrivateKey.from_private_bytes((await self.store.get(CATALOG_KEY)).value)
        await self.refresh()

    async def refresh(self) -> dict:
        self._ring = json.loads((await self.store.get(KEYRING)).value)
        return self._ring

    def config(self) -> admission_pb2.GossipConfig:
        ring = self._ring
        keys = [bytes.fromhex(k) for k in ring["keys"]]
        ordered = [keys[ring["primary"]]] + [k for i, k in enumerate(keys) if i != ring["primary"]]
        public = self._signing.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return admission_pb2.GossipConfig(keys=ordered, catalog_public_key=public)

    def sign(self, svc: types_pb2.Service, revision: int, deleted: bool) -> bytes:
        """The signed gossip record for a catalog change (cached: every watcher gets the same bytes)."""
        cache_key = (svc.name, revision, deleted)
        rec = self._cache.get(cache_key)
        if rec is None:
            payload = types_pb2.Service()
            payload.CopyFrom(svc)
            payload.revision = revision
            rec = encode_record(make_record(self._signing, svc.name, revision, svc.node_id,
                                            payload.SerializeToString(deterministic=True), deleted))
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[cache_key] = rec
        return rec

    # -- rotation ---------------------------------------------------------------
    async def rotate(self) -> tuple[str, str]:
        kv = await self.store.get(KEYRING)
        ring = json.loads(kv.value)
        if ring.get("rotation"):
            r = ring["rotation"]
            raise FailedPrecondition(f"a key rotation is already under way (key {r['key_id']}, stage {r['stage']})")
        new = os.urandom(32)
        ring["keys"].append(new.hex())
        ring["rotation"] = {"key_id": key_id(new), "stage": "installing", "since": self.clock.wall()}
        res = await self.store.txn([unchanged(kv)], [Put(KEYRING, json.dumps(ring).encode())])
        if not res.succeeded:
            raise FailedPrecondition("the keyring changed concurrently; retry")
        self._ring = ring
        self._stage_began[(key_id(new), "installing")] = self.clock.monotonic()
        return ring["rotation"]["key_id"], "installing"

    async def advance(self, all_renewed_since: Callable[[float], bool]) -> str | None:
        """Move a rotation one stage forward when every live node has the current keyring.
        `all_renewed_since(t)`: every live node renewed after monotonic time t."""
        kv = await self.store.get(KEYRING)
        ring = json.loads(kv.value)
        r = ring.get("rotation")
        began = self._stage_began.setdefault((r["key_id"], r["stage"]), self.clock.monotonic()) if r else 0.0
        if not r or not all_renewed_since(began):
            self._ring = ring
            return None
        new_index = len(ring["keys"]) - 1
        if r["stage"] == "installing":
            r.update(stage="primary", since=self.clock.wall(), old=ring["primary"])
            ring["primary"] = new_index
        elif r["stage"] == "primary":
            ring["keys"] = [ring["keys"][new_index]]
            ring["primary"] = 0
            ring["rotation"] = None
        res = await self.store.txn([unchanged(kv)], [Put(KEYRING, json.dumps(ring).encode())])
        if res.succeeded:
            self._ring = ring
            if ring["rotation"]:
                self._stage_began[(r["key_id"], "primary")] = self.clock.monotonic()
                return "primary"
            self._stage_began.clear()
            return "done"
        return None
