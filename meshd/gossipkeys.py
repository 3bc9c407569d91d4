"""Gossip secrets kept by meshd: the AES-GCM keyring and the catalog signing key.

Both live in the store (so every meshd replica uses the same ones) and reach
agents only over mTLS, in JoinResponse and RenewResponse:
- `/gossip/keyring`: JSON {"keys": [hex, ...], "primary": 0, "rotation": {...}}.
- `/gossip/catalog-key`: meshd's first Ed25519 private key (raw 32 bytes),
  kept for a meshd of before key rotation.
- `/gossip/catalog-keys`: JSON {"keys": [{"private": hex, "signs_from": unix s,
  "retires": unix s or 0}, ...]}: the catalog signing keys. Every catalog
  change in a watch stream carries a record signed with the key whose
  `signs_from` is the latest one past; agents accept a record from a peer only
  with a valid signature of a key they were given that has not retired, and
  only until the record's expiry.

Catalog key rotation (the leader, from its lease loop; other replicas re-read
the keys each tick). Every `rotate_s` (7 days) a new key is announced
`overlap_s` (1 day) before it starts signing, so every agent has it (they
renew every few seconds) before it meets a record signed with it; the key it
replaces retires `overlap_s` after it stopped signing, then is deleted. So at
most three keys are handed out: previous (retiring), current, next. The
switch itself needs no write: each replica signs with the key whose time has
come. Records expire `record_ttl_s` (3 days) after the start of the refresh
period (a third of that) they were signed in; a renewal carries the caller's
own services signed again once the signing key or the period changed, and the
agent gossips them on, so a live record is re-signed long before it expires
or its key retires.

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
from dataclasses import dataclass

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
CATALOG_KEYS = "/gossip/catalog-keys"

#: defaults of the catalog signing-key schedule (MeshdConfig, flags)
CATALOG_KEY_ROTATE_S = 7 * 24 * 3600.0
CATALOG_KEY_OVERLAP_S = 24 * 3600.0
CATALOG_RECORD_TTL_S = 3 * 24 * 3600.0


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


@dataclass(frozen=True)
class CatalogKey:
    id: str
    private: ed25519.Ed25519PrivateKey
    public: bytes
    signs_from: int
    retires: int  # 0: no successor announced yet


def _raw_private(k: ed25519.Ed25519PrivateKey) -> bytes:
    return k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _catalog_keys(data: dict) -> list[CatalogKey]:
    out = []
    for k in data["keys"]:
        private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(k["private"]))
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        out.append(CatalogKey(key_id(public), private, public, int(k["signs_from"]), int(k["retires"])))
    return sorted(out, key=lambda c: c.signs_from)


class GossipKeys:
    def __init__(self, store: Store, clock: Clock = SYSTEM, rotate_s: float = CATALOG_KEY_ROTATE_S,
                 overlap_s: float = CATALOG_KEY_OVERLAP_S, record_ttl_s: float = CATALOG_RECORD_TTL_S) -> None:
        if not 0 < overlap_s < rotate_s:
            raise ValueError(f"catalog key overlap ({overlap_s:g} s) must be positive and shorter than "
                             f"the rotation period ({rotate_s:g} s)")
        if record_ttl_s < 3:
            raise ValueError(f"catalog record TTL ({record_ttl_s:g} s) must be at least 3 s")
        self.store = store
        self.clock = clock
        self.rotate_s, self.overlap_s, self.record_ttl_s = rotate_s, overlap_s, record_ttl_s
        self._stage_began: dict[tuple[str, str], float] = {}  # (key id, stage) -> monotonic time first seen
        self._catalog: list[CatalogKey] = []
        self._ring: dict | None = None
        self._cache: dict[tuple, bytes] = {}

    async def load(self) -> None:
        """Create the secrets on first start (create-if-absent, so replicas agree), then read them."""
        await self.store.txn([absent(KEYRING)], [Put(KEYRING, json.dumps(
            {"keys": [os.urandom(32).hex()], "primary": 0, "rotation": None}).encode())])
        raw = _raw_private(ed25519.Ed25519PrivateKey.generate())
        await self.store.txn([absent(CATALOG_KEY)], [Put(CATALOG_KEY, raw)])
        first = (await self.store.get(CATALOG_KEY)).value  # the key of before rotation starts the schedule
        await self.store.txn([absent(CATALOG_KEYS)], [Put(CATALOG_KEYS, json.dumps(
            {"keys": [{"private": first.hex(), "signs_from": int(self.clock.wall()), "retires": 0}]}).encode())])
        await self.refresh()

    async def refresh(self) -> dict:
        """Re-read the keyring and the catalog keys (every replica, each lease tick)."""
        self._ring = json.loads((await self.store.get(KEYRING)).value)
        self._catalog = _catalog_keys(json.loads((await self.store.get(CATALOG_KEYS)).value))
        return self._ring

    def signing_key(self) -> CatalogKey:
        """The key whose time has come: the latest `signs_from` already past."""
        now = self.clock.wall()
        due = [k for k in self._catalog if k.signs_from <= now]
        return due[-1] if due else self._catalog[0]

    def epoch(self) -> tuple[str, int]:
        """(signing key id, expiry) of a record signed now: when it changes, records are signed again."""
        refresh = self.record_ttl_s / 3
        return self.signing_key().id, int((self.clock.wall() // refresh) * refresh + self.record_ttl_s)

    def config(self) -> admission_pb2.GossipConfig:
        ring = self._ring
        keys = [bytes.fromhex(k) for k in ring["keys"]]
        ordered = [keys[ring["primary"]]] + [k for i, k in enumerate(keys) if i != ring["primary"]]
        now = self.clock.wall()
        handed = [admission_pb2.CatalogKey(id=k.id, public_key=k.public, signs_from=k.signs_from, retires_at=k.retires)
                  for k in self._catalog if not (k.retires and now >= k.retires)]
        return admission_pb2.GossipConfig(keys=ordered, catalog_public_key=self.signing_key().public,
                                          catalog_keys=handed)

    def sign(self, svc: types_pb2.Service, revision: int, deleted: bool) -> bytes:
        """The signed gossip record for a catalog change, with the current key and expiry
        (cached: every watcher gets the same bytes)."""
        kid, expires = self.epoch()
        cache_key = (svc.name, revision, deleted, kid, expires)
        rec = self._cache.get(cache_key)
        if rec is None:
            payload = types_pb2.Service()
            payload.CopyFrom(svc)
            payload.revision = revision
            rec = encode_record(make_record(self.signing_key().private, svc.name, revision, svc.node_id,
                                            payload.SerializeToString(deterministic=True), deleted, kid, expires))
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[cache_key] = rec
        return rec

    async def rotate_catalog_key(self) -> str | None:
        """The leader's step of the catalog key schedule: delete retired keys; announce the
        next key `overlap_s` before the current one has signed for `rotate_s`. Returns what
        changed ("announced <id>", "retired <id>") or None."""
        kv = await self.store.get(CATALOG_KEYS)
        data = json.loads(kv.value)
        now = self.clock.wall()
        live = [k for k in data["keys"] if not (k["retires"] and now >= k["retires"])]
        gone = [k for k in _catalog_keys(data) if k.retires and now >= k.retires]
        changed = [f"retired {k.id}" for k in gone]
        latest = max(live, key=lambda k: k["signs_from"])
        if latest["signs_from"] <= now and now >= latest["signs_from"] + self.rotate_s - self.overlap_s:
            signs_from = int(max(latest["signs_from"] + self.rotate_s, now + self.overlap_s))
            for k in live:
                if not k["retires"]:
                    k["retires"] = int(signs_from + self.overlap_s)
            new = ed25519.Ed25519PrivateKey.generate()
            live.append({"private": _raw_private(new).hex(), "signs_from": signs_from, "retires": 0})
            changed.append(f"announced {_catalog_keys({'keys': live[-1:]})[0].id} (signs from {signs_from})")
        if changed:
            res = await self.store.txn([unchanged(kv)], [Put(CATALOG_KEYS, json.dumps({"keys": live}).encode())])
            if not res.succeeded:
                return None  # another writer: the next tick looks again
            data = {"keys": live}
        self._catalog = _catalog_keys(data)
        return ", ".join(changed) or None

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
