"""SQLite backend of the store (the embedded default).

One database file in WAL mode, written by one thread (a single-worker
executor) so the event loop never blocks on disk and writes are serialized.
Reads of many rows (range, watch history) run on a second thread with its own
connection: WAL lets them read the last commit while a write waits for its
fsync, so a renewal's read never queues behind the writes of a burst of
joins. A read of one key (get) runs on the event loop's thread, on a third
connection: a primary-key lookup takes microseconds, while a trip to a thread
of a busy process waits for the interpreter lock at each step (with 1,000
agents, 130 and 177 of the ~2,400 renewals of 20 s, in two runs, took over
10 ms in meshd, up to 68 ms, nearly all of it waiting for their reads; read
on the loop, none did). It never waits for a lock there: a busy database
(SQLite's WAL recovery, rare) sends it to the reading thread. The current
revision is kept in memory (this process is the only writer: meshd holds the
file's lock), so asking for it costs no trip to a thread at all.
`synchronous=FULL`: a write is acknowledged only once it is on disk, so
nothing acknowledged is lost when meshd is killed, or the machine loses power.

Tables: `kv` (current values), `log` (every change, for watch-from-revision;
trimmed to the last `retain` revisions), `leases`, `meta` (revision and
compaction point).

Leases count on the injected clock's monotonic time, so a wall-clock step
neither expires nor prolongs one. A monotonic reading means nothing to
another process (it restarts with every boot), so `leases.expires_at` is a
deadline for this process only: on open, every persisted lease is given its
full TTL again from then, as etcd's new leader does with every lease when it
takes over. A lease thus never ends sooner than its TTL after the last
keepalive anyone could have seen (however long meshd was down, or wherever
the wall clock was stepped meanwhile), and at worst outlives a restart by one
TTL. Leases only carry the election's leader key, so the cost is that a
leader key left by a crashed meshd is released one TTL after the restart.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meshcore import limits
from meshcore.clock import SYSTEM, Clock
from meshcore.errors import NotFound, StateError
from meshd.store.base import (
    Compacted, Compare, Delete, Event, KeyValue, Op, Put, Store, TxnResult,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL,
                               mod_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (rev INTEGER NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, key TEXT NOT NULL,
                                value BLOB NOT NULL, create_rev INTEGER NOT NULL, version INTEGER NOT NULL,
                                lease INTEGER NOT NULL, PRIMARY KEY (rev, seq));
-- expires_at: a deadline on this process's monotonic clock (see the module docstring)
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl REAL NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0), ('schema', 1);
"""


def _row(r: tuple) -> KeyValue:
    return KeyValue(r[0], bytes(r[1]), r[2], r[3], r[4], r[5])


def _lagging() -> None:
    try:
        from meshd import metrics
        metrics.WATCHERS_LAGGING.inc()
    except ImportError:  # the store is also used without meshd's metrics
        pass


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    # Keys are text; every key starting with prefix sorts in [prefix, prefix + U+10FFFF).
    return prefix, prefix + "\U0010ffff"


class SQLiteStore(Store):
    joins_waiting = True  # a watcher's queue is taken whole (watch)

    def __init__(self, path: Path | str, clock: Clock = SYSTEM, retain: int = 10_000) -> None:
        self.path = Path(path)
        self.describe = f"sqlite:{self.path}"
        self._clock = clock
        self._retain = retain
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._rx = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-read")
        self._subs: set[tuple[str, asyncio.Queue[list[Event]]]] = set()
        self._db = self._open()
        self._rdb = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._rdb.execute("PRAGMA busy_timeout=5000")
        self._ldb = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._ldb.execute("PRAGMA busy_timeout=0")  # on the event loop's thread: never wait
        self._revision = self._rev()

    # -- opening --------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The database holds the CA-signed state and gossip secrets: owner only. SQLite gives
            # its -wal and -shm files the database's mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self.path, 0o600)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            db.executescript(SCHEMA)
            # deadlines of a previous process are on another monotonic clock: a full TTL from now
            db.execute("UPDATE leases SET expires_at = ? + ttl", (self._clock.monotonic(),))
        except (sqlite3.DatabaseError, OSError) as e:
            raise StateError(
                f"state database {self.path} cannot be used: {e}. meshd never overwrites it: "
                f"restore it from a backup, or move it aside to start a new mesh") from e
        return db

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._ex, fn, *args)

    async def _read(self, fn, *args):
        """fn(*args) on the reading thread (its own connection: the last commit, never a write's)."""
        return await asyncio.get_running_loop().run_in_executor(self._rx, fn, *args)

    # -- reads ----------------------------------------------------------------
    def _rev(self, db: sqlite3.Connection | None = None) -> int:
        return (db or self._db).execute("SELECT v FROM meta WHERE k='revision'").fetchone()[0]

    def _get(self, key: str, db: sqlite3.Connection | None = None) -> KeyValue | None:
        r = (db or self._db).execute("SELECT key, value, create_rev, mod_rev, version, lease FROM kv WHERE key=?",
                                     (key,)).fetchone()
        return _row(r) if r else None

    def _range(self, prefix: str) -> tuple[list[KeyValue], int]:
        db = self._rdb
        lo, hi = _prefix_bounds(prefix)
        db.execute("BEGIN")
        try:
            rows = db.execute("SELECT key, value, create_rev, mod_rev, version, lease FROM kv "
                              "WHERE key >= ? AND key < ? ORDER BY key", (lo, hi)).fetchall()
            return [_row(r) for r in rows], self._rev(db)
        finally:
            db.execute("COMMIT")

    async def get(self, key: str) -> KeyValue | None:
        try:
            return self._get(key, self._ldb)
        except sqlite3.OperationalError:  # busy: wait for it on the reading thread
            return await self._read(self._get, key, self._rdb)

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self._read(self._range, prefix)

    async def revision(self) -> int:
        return self._revision

    async def changes(self, prefix: str, after: int) -> tuple[list[Event], int, None]:
        """The changes under `prefix` after revision `after` (deletions included), the revision
        they bring the caller's copy to, and None: no list of keys needed to check the copy
        (Compacted if the history no longer reaches back that far)."""
        events, rev = await self._read(self._history, prefix, after)
        return events, rev, None

    # -- writes ---------------------------------------------------------------
    def _apply(self, rev: int, ops: Sequence[Op]) -> list[Event]:
        db = self._db
        events: list[Event] = []
        for op in ops:
            if isinstance(op, Put):
                if op.lease and not db.execute("SELECT 1 FROM leases WHERE id=?", (op.lease,)).fetchone():
                    raise NotFound(f"lease {op.lease:x} not found (expired or revoked)")
                old = self._get(op.key)
                kv = KeyValue(op.key, op.value, old.create_revision if old else rev, rev,
                              (old.version if old else 0) + 1, op.lease)
                db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?,?,?,?)",
                           (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease))
                events.append(Event("put", kv, rev))
            else:
                if isinstance(op, Delete):
                    olds = [o for o in [self._get(op.key)] if o]
                else:
                    olds = self._range_nolock(op.prefix)
                for old in olds:
                    db.execute("DELETE FROM kv WHERE key=?", (old.key,))
                    events.append(Event("delete", KeyValue(old.key, old.value, old.create_revision, rev,
                                                           old.version, old.lease), rev))
        for seq, e in enumerate(events):
            db.execute("INSERT INTO log VALUES (?,?,?,?,?,?,?,?)", (rev, seq, e.type, e.kv.key, e.kv.value,
                                                                   e.kv.create_revision, e.kv.version, e.kv.lease))
        return events

    def _range_nolock(self, prefix: str) -> list[KeyValue]:
        lo, hi = _prefix_bounds(prefix)
        rows = self._db.execute("SELECT key, value, create_rev, mod_rev, version, lease FROM kv "
                                "WHERE key >= ? AND key < ? ORDER BY key", (lo, hi)).fetchall()
        return [_row(r) for r in rows]

    def _txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> TxnResult:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            ok = all(c.holds(self._get(c.key)) for c in compares)
            ops = success if ok else failure
            rev = self._rev()
            events = self._apply(rev + 1, ops) if ops else []
            if events:
                rev += 1
                db.execute("UPDATE meta SET v=? WHERE k='revision'", (rev,))
                if rev % 1000 == 0:
                    self._compact_nolock(rev - self._retain)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._revision = rev
        return TxnResult(ok, rev, events)

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        result = await self._run(self._txn, list(compares), list(success), list(failure))
        self._publish(result.events)
        return result

    def _publish(self, events: list[Event]) -> None:
        if not events:
            return
        # one list per prefix, shared by its watchers (they only read it): a watcher that pauses
        # holds what waits for it, and a fleet's streams are thousands of watchers of one prefix
        by_prefix: dict[str, list[Event]] = {}
        for prefix, q in list(self._subs):
            mine = by_prefix.get(prefix)
            if mine is None:
                mine = by_prefix[prefix] = [e for e in events if e.kv.key.startswith(prefix)]
            if mine:
                try:
                    q.put_nowait(mine)
                except asyncio.QueueFull:
                    # A watcher that does not read (its client stopped reading) holds at most
                    # WATCH_QUEUE_BATCHES batches: past that its queue is dropped and it
                    # re-reads the history from its last revision once it reads again.
                    while not q.empty():
                        q.get_nowait()
                    q.put_nowait(None)
                    _lagging()

    # -- leases ---------------------------------------------------------------
    def _lease_grant(self, ttl: float) -> int:
        import secrets
        lease = secrets.randbits(62) or 1
        self._db.execute("INSERT INTO leases VALUES (?,?,?)", (lease, ttl, self._clock.monotonic() + ttl))
        return lease

    def _lease_keepalive(self, lease: int) -> float:
        r = self._db.execute("SELECT ttl, expires_at FROM leases WHERE id=?", (lease,)).fetchone()
        if not r or r[1] <= self._clock.monotonic():
            raise NotFound(f"lease {lease:x} not found (expired or revoked)")
        self._db.execute("UPDATE leases SET expires_at=? WHERE id=?", (self._clock.monotonic() + r[0], lease))
        return r[0]

    def _lease_revoke(self, leases: Sequence[int]) -> TxnResult:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            keys = [k for lease in leases for (k,) in db.execute("SELECT key FROM kv WHERE lease=?", (lease,))]
            db.executemany("DELETE FROM leases WHERE id=?", [(lease,) for lease in leases])
            rev = self._rev()
            events = self._apply(rev + 1, [Delete(k) for k in keys]) if keys else []
            if events:
                rev += 1
                db.execute("UPDATE meta SET v=? WHERE k='revision'", (rev,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._revision = rev
        return TxnResult(True, rev, events)

    async def lease_grant(self, ttl: float) -> int:
        return await self._run(self._lease_grant, ttl)

    async def lease_keepalive(self, lease: int) -> float:
        return await self._run(self._lease_keepalive, lease)

    async def lease_revoke(self, lease: int) -> None:
        self._publish((await self._run(self._lease_revoke, [lease])).events)

    async def expire_leases(self) -> int:
        """Revoke every lease past its expiry (call periodically); returns how many."""
        now = self._clock.monotonic()
        ids = await self._run(lambda: [i for (i,) in self._db.execute("SELECT id FROM leases WHERE expires_at <= ?", (now,))])
        if ids:
            self._publish((await self._run(self._lease_revoke, ids)).events)
        return len(ids)

    # -- watch ----------------------------------------------------------------
    def _history(self, prefix: str, after: int) -> tuple[list[Event], int]:
        db = self._rdb
        db.execute("BEGIN")  # the compaction point and the log as of one commit
        try:
            compacted = db.execute("SELECT v FROM meta WHERE k='compacted'").fetchone()[0]
            if after < compacted:
                raise Compacted(after, compacted)
            lo, hi = _prefix_bounds(prefix)
            rows = db.execute("SELECT rev, type, key, value, create_rev, version, lease FROM log "
                              "WHERE rev > ? AND key >= ? AND key < ? ORDER BY rev, seq", (after, lo, hi)).fetchall()
            events = [Event(t, KeyValue(k, bytes(v), c, rev, ver, lease), rev)
                      for rev, t, k, v, c, ver, lease in rows]
            return events, self._rev(db)
        finally:
            db.execute("COMMIT")

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[list[Event]]:
        q: asyncio.Queue[list[Event] | None] = asyncio.Queue(maxsize=limits.WATCH_QUEUE_BATCHES)
        sub = (prefix, q)
        self._subs.add(sub)
        try:
            history, _ = await self._read(self._history, prefix, from_revision)
            last = from_revision
            batch: list[Event] = []
            for e in history:  # one batch per revision
                if batch and e.revision != batch[0].revision:
                    yield batch
                    batch = []
                batch.append(e)
                last = e.revision
            if batch:
                yield batch
            yield []  # caught up
            history = batch = None  # not kept while the watcher waits (a stream lives as long as its agent)
            while True:
                item = await q.get()
                while item is not None and not q.empty():  # a watcher behind gets what waits as one batch
                    more = q.get_nowait()
                    item = None if more is None else item + more
                if item is None:  # we lagged: our queue was dropped; the history has it all, as one batch
                    history, _ = await self._read(self._history, prefix, last)
                    if history:
                        last = history[-1].revision
                        yield history
                    history = None
                    continue
                fresh = [e for e in item if e.revision > last]
                if fresh:
                    last = fresh[-1].revision
                    yield fresh
        finally:
            self._subs.discard(sub)

    def _compact_nolock(self, revision: int) -> None:
        if revision <= 0:
            return
        cur = self._db.execute("SELECT v FROM meta WHERE k='compacted'").fetchone()[0]
        if revision > cur:
            self._db.execute("DELETE FROM log WHERE rev <= ?", (revision,))
            self._db.execute("UPDATE meta SET v=? WHERE k='compacted'", (revision,))

    async def compact(self, revision: int) -> None:
        def go() -> None:
            self._db.execute("BEGIN IMMEDIATE")
            self._compact_nolock(min(revision, self._rev()))
            self._db.execute("COMMIT")
        await self._run(go)

    async def close(self) -> None:
        self._ldb.close()
        await self._read(self._rdb.close)
        await self._run(self._db.close)
        self._rx.shutdown(wait=True)
        self._ex.shutdown(wait=True)
