"""Moving a mesh's whole state from one store to another (SQLite ↔ etcd) without any node joining again.

A snapshot is every key of the store at one revision: node identities and
names, join tokens (hashes, use counts, revocations), address leases, the
catalog, the gossip keyring and catalog signing key, the admin deny list and
the store identity (`/meta/store`, meshd.storeid). Keys bound to a store
lease (only the election's leader key) are left out: leases belong to the
store that granted them, and a new leader is elected on the new store.

Format (JSON, one document): {"format": "meshd-store-snapshot", "version": 1,
"store": {"id", "epoch"}, "source", "revision", "keys": [[key, base64], ...],
"sha256"}; `sha256` covers everything else (canonical JSON), so a truncated
or edited file is refused before anything is written.

Import, re-run safe:
- the target must be empty, or hold the same store (same id: an earlier,
  interrupted or repeated import, or the copy this one was made from, on the
  way back); a store of another mesh is refused, untouched;
- `/meta/import` is written first (the target is incomplete until it is
  gone), then every key absent from the snapshot is deleted and every key of
  the snapshot put, in transactions of at most OPS_PER_TXN operations
  (etcd's default --max-txn-ops is 128), then `/meta/store` and the removal
  of `/meta/import` commit together;
- the identity keeps its id and takes epoch max(snapshot's, target's) + 1.
  Revisions are counted anew by the target, so an agent's revision means
  nothing there; the new epoch makes every agent's watch resume with a full
  copy (RESET), on its existing certificate and name: a resync, never a join.

meshd started with `--await-import` waits (meshd/server.py) until the store
holds an identity and no import is under way, so a coordinator launched for
a profile switch never makes a new empty mesh of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshcore.errors import FailedPrecondition, InvalidArgument
from meshd.storeid import KEY as STORE_KEY
from meshd.store.base import Delete, Put, Store

FORMAT = "meshd-store-snapshot"
VERSION = 1
IMPORT_KEY = "/meta/import"
#: operations per transaction while importing (below etcd's default --max-txn-ops of 128)
OPS_PER_TXN = 100
#: bytes of values per transaction (below etcd's default request limit of 1.5 MiB)
BYTES_PER_TXN = 1 << 20


@dataclass
class Snapshot:
    store_id: str
    epoch: int
    source: str
    revision: int
    keys: dict[str, bytes]

    def body(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "store": {"id": self.store_id, "epoch": self.epoch},
                "source": self.source, "revision": self.revision,
                "keys": [[k, base64.b64encode(v).decode()] for k, v in sorted(self.keys.items())]}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.body(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def to_bytes(self) -> bytes:
        return json.dumps({**self.body(), "sha256": self.digest()}, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "snapshot") -> Snapshot:
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise InvalidArgument(f"{where} is not a meshd store snapshot: not JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InvalidArgument(f"{where} is not a meshd store snapshot (no format {FORMAT!r})")
        if doc.get("version") != VERSION:
            raise InvalidArgument(f"{where}: snapshot version {doc.get('version')!r} is not supported "
                                  f"(this meshd reads version {VERSION})")
        try:
            snap = cls(str(doc["store"]["id"]), int(doc["store"]["epoch"]), str(doc.get("source", "")),
                       int(doc["revision"]), {str(k): base64.b64decode(v, validate=True) for k, v in doc["keys"]})
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgument(f"{where}: malformed snapshot ({e})") from None
        if snap.digest() != doc.get("sha256"):
            raise InvalidArgument(f"{where}: checksum mismatch (the file is truncated or was edited); "
                                  "export it again")
        if not snap.store_id:
            raise InvalidArgument(f"{where}: the snapshot has no store id")
        return snap


def _identity(value: bytes | None) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        data = json.loads(value)
        return str(data["id"]), int(data["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


async def export(store: Store) -> Snapshot:
    """Every key of `store` at one revision (leased keys left out, see the module docstring)."""
    kvs, revision = await store.range("/")
    keys = {kv.key: kv.value for kv in kvs if not kv.lease and kv.key != IMPORT_KEY}
    if IMPORT_KEY in {kv.key for kv in kvs}:
        raise FailedPrecondition(f"{store.describe}: an import into this store is not finished; "
                                 "finish it before exporting")
    ident = _identity(keys.get(STORE_KEY))
    if ident is None:
        raise FailedPrecondition(f"{store.describe} holds no mesh (no {STORE_KEY}): nothing to export")
    return Snapshot(ident[0], ident[1], store.describe, revision, keys)


@dataclass
class ImportResult:
    store_id: str
    epoch: int
    keys: int
    deleted: int
    transactions: int


async def import_(store: Store, snap: Snapshot) -> ImportResult:
    """Make `store` hold exactly `snap` under the next epoch (see the module docstring)."""
    kvs, _ = await store.range("/")
    have = {kv.key: kv for kv in kvs}
    target = _identity(have[STORE_KEY].value) if STORE_KEY in have else None
    pending = _identity(have[IMPORT_KEY].value) if IMPORT_KEY in have else None
    same = (target is not None and target[0] == snap.store_id) or (pending is not None and pending[0] == snap.store_id)
    if have and not same:
        other = (target or pending or ("none", 0))[0]
        raise FailedPrecondition(
            f"{store.describe} is not empty and holds another store (id {other}, {len(have)} keys) than the "
            f"snapshot's ({snap.store_id}): import only into an empty store or a copy of the same mesh")
    epoch = max(snap.epoch, target[1] if target and target[0] == snap.store_id else 0,
                pending[1] - 1 if pending else 0) + 1
    marker = json.dumps({"id": snap.store_id, "epoch": epoch, "sha256": snap.digest()}).encode()
    txns = 0
    await store.txn((), [Put(IMPORT_KEY, marker)])
    txns += 1
    ops: list[Put | Delete] = [Delete(k) for k, kv in sorted(have.items())
                               if k not in snap.keys and k not in (IMPORT_KEY, STORE_KEY)]
    deleted = len(ops)
    ops += [Put(k, v) for k, v in sorted(snap.keys.items())
            if k != STORE_KEY and not (k in have and have[k].value == v and not have[k].lease)]
    batch: list[Put | Delete] = []
    size = 0
    for op in ops:
        n = len(op.key) + (len(op.value) if isinstance(op, Put) else 0)
        if batch and (len(batch) >= OPS_PER_TXN or size + n > BYTES_PER_TXN):
            await store.txn((), batch)
            txns += 1
            batch, size = [], 0
        batch.append(op)
        size += n
    if batch:
        await store.txn((), batch)
        txns += 1
    ident = json.dumps({"id": snap.store_id, "epoch": epoch}).encode()
    await store.txn((), [Put(STORE_KEY, ident), Delete(IMPORT_KEY)])
    txns += 1
    return ImportResult(snap.store_id, epoch, len(snap.keys), deleted, txns)


def read_file(path: Path) -> Snapshot:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"cannot read snapshot {path}: {e.strerror}") from None
    return Snapshot.from_bytes(data, str(path))


async def importing(store: Store) -> bool:
    """True while `store` holds no mesh yet or an import into it is not finished."""
    return await store.get(IMPORT_KEY) is not None or await store.get(STORE_KEY) is None
