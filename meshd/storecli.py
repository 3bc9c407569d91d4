"""`meshd store export|import|copy`: move a mesh's state between stores (meshd.store.snapshot).

    meshd store export FILE  [--store SPEC]      every key, versioned and checksummed
    meshd store import FILE  [--store SPEC]      into an empty store (or a copy of the same mesh)
    meshd store copy --from SPEC --to SPEC       both at once, no file

An etcds:// store (TLS, client-certificate auth) takes --etcd-ca, --etcd-cert
and --etcd-key, as meshd does.

The source must not be written meanwhile: with a SQLite source in a state
directory, its meshd must be stopped (the state lock says so), which is how a
profile switch stops writes on the old coordinator. An etcd source is the
caller's to drain (every replica's meshd stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from meshcore import logs
from meshcore.clock import SYSTEM
from meshcore.errors import MeshError, NotFound
from meshcore.statelock import StateLock
from meshd.store import open_store, sqlite_path
from meshd.store.snapshot import Snapshot, export, import_, read_file

STATE_DIR = Path("/var/lib/meshd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshd store", description="Export, import or copy meshd's whole store.")
    p.add_argument("--state-dir", type=Path, default=STATE_DIR,
                   help=f"where the default SQLite store lives (default {STATE_DIR})")
    p.add_argument("--etcd-ca", default="", metavar="FILE", help="etcds://: CA bundle that signed etcd's certificate")
    p.add_argument("--etcd-cert", default="", metavar="FILE", help="etcds://: client certificate for etcd")
    p.add_argument("--etcd-key", default="", metavar="FILE", help="etcds://: key of --etcd-cert")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write every key of the store to FILE")
    e.add_argument("file", type=Path)
    e.add_argument("--store", default="sqlite", help="sqlite (default), sqlite:///path.db, etcd://host:2379,... or etcds://...")
    i = sub.add_parser("import", help="load FILE into an empty store (or a copy of the same mesh)")
    i.add_argument("file", type=Path)
    i.add_argument("--store", default="sqlite", help="sqlite (default), sqlite:///path.db, etcd://host:2379,... or etcds://...")
    c = sub.add_parser("copy", help="export from one store and import into another")
    c.add_argument("--from", dest="source", required=True, help="the store to copy")
    c.add_argument("--to", dest="target", required=True, help="the store to fill")
    return p


def _source_lock(spec: str, state_dir: Path) -> StateLock | None:
    """The meshd state lock of a SQLite source: held by us while reading, so its meshd is stopped."""
    db = sqlite_path(spec, state_dir)
    if db is None:
        return None
    if db.parent.resolve() == state_dir.resolve():
        return StateLock(state_dir / "meshd.lock", "meshd store", "stop meshd before exporting its store")
    return StateLock(db.with_name(db.name + ".lock"), "meshd store", "stop meshd before exporting its store")


def _open(spec: str, a: argparse.Namespace):
    tls = (a.etcd_ca, a.etcd_cert, a.etcd_key) if spec.startswith("etcds://") else ("", "", "")
    return open_store(spec, a.state_dir, SYSTEM, *tls)


async def _export(spec: str, a: argparse.Namespace) -> Snapshot:
    state_dir = a.state_dir
    db = sqlite_path(spec, state_dir)
    if db is not None and not db.exists():
        raise NotFound(f"no SQLite store at {db}")
    lock = _source_lock(spec, state_dir)
    try:
        store = _open(spec, a)
    except BaseException:
        if lock:
            lock.release()
        raise
    try:
        return await export(store)
    finally:
        await store.close()
        if lock:
            lock.release()


async def _import(snap: Snapshot, spec: str, a: argparse.Namespace) -> str:
    store = _open(spec, a)
    try:
        r = await import_(store, snap)
    finally:
        await store.close()
    return (f"imported {r.keys} keys into {store.describe} (store {r.store_id}, epoch {r.epoch}; "
            f"{r.deleted} stale keys removed, {r.transactions} transactions)")


async def run(a: argparse.Namespace) -> str:
    if a.cmd == "export":
        snap = await _export(a.store, a)
        from meshcore import pki
        pki.write_file(a.file, snap.to_bytes(), private=True)  # it holds the gossip and signing keys
        return f"exported {len(snap.keys)} keys of store {snap.store_id} (epoch {snap.epoch}, revision " \
               f"{snap.revision}) to {a.file}"
    if a.cmd == "import":
        return await _import(read_file(a.file), a.store, a)
    snap = await _export(a.source, a)
    return await _import(Snapshot.from_bytes(snap.to_bytes(), a.source), a.target, a)


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    logs.setup("warning", "text", "")
    try:
        print(asyncio.run(run(a)))
    except MeshError as e:
        print(f"meshd store {a.cmd}: {e}", file=sys.stderr)
        return 2
    return 0
