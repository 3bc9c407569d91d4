"""etcd backend of the store: the same revisioned interface, served by a real etcd cluster.

It speaks etcd's own v3 gRPC API (stubs generated from proto/meshd/store/etcdpb) with
grpc.aio. The store's model is etcd's, so most calls map one to one:

- `get`/`range`/`revision` are Range requests: linearizable (they reflect
  every committed write) while the cluster has a leader. Without quorum they
  are served by one member (serializable, possibly stale) when `stale_reads`
  is on. A large range is read in pages pinned to the first page's revision.
- `txn` is one etcd Txn (nested when a compare needs a disjunction, see
  etcd_txn); its header revision is the store revision. Events are built from
  the previous key-values etcd returns.
- leases are etcd leases. etcd counts TTLs in whole seconds and raises them to
  its minimum (1.5 election timeouts), so a granted TTL is rounded up. Expiry
  is etcd's job: `expire_leases` does nothing here.
- `watch` is a Watch stream from `from_revision + 1` with prev_kv (a delete
  event carries the key's last value). The history is read on the whole key
  space so its end is known (the empty "caught up" batch), then the stream
  follows the prefix alone. When the member goes away the stream is opened
  again on another member from the last revision delivered, so a watcher
  sees no gap and no repeat across a failover. A compacted start revision
  raises `Compacted`.
- `compact` is etcd's Compact. It is cluster-wide: it trims the history of
  every mesh that shares the etcd.

Several members: see etcd_conn for which failures move a call to the next
member, and why a write whose outcome is unknown is not repeated. Without
quorum, writes fail with a message saying the store is read-only.

Keys live under a configurable prefix (default "/mesh") so several meshes can
share one etcd; `etcd://h1:2379,h2:2379/other-mesh` selects another prefix.
`etcds://` is the same over TLS with a client certificate (etcd_tls).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from meshcore.clock import SYSTEM, Clock
from meshcore.errors import ConfigError, NotFound, Unavailable
from meshd.store import etcd_txn
from meshd.store.base import Compacted, Compare, Event, KeyValue, Op, Put, Store, TxnResult
from meshd.store.etcd_conn import HASLEADER, HistoryCompacted, Members, ReadOnly
from meshd.store.etcd_tls import EtcdTls

DEFAULT_PREFIX = "/mesh"


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """How meshd uses an etcd cluster.

    endpoints: "host:port" of the members; more than one lets the store go on
        when a member is down.
    prefix: every key lives under it, so several meshes can share one etcd.
    request_timeout: deadline of one attempt on one member. After a leader
        dies, a write sent to a follower that has not noticed yet waits this
        long before the store tries elsewhere: shorter fails over faster, but
        must stay well above the cluster's normal write latency (fsync).
    failover_timeout: how long a call keeps trying other members (and waits
        for an election) before it fails.
    stale_reads: without quorum, serve reads from a single member (they may
        miss the last writes) rather than fail them.
    watch_reconnect_timeout: how long a broken watch keeps trying to reopen
        on some member before it raises Unavailable.
    page_size: keys per Range page when reading a prefix.
    tls: CA bundle, client certificate and key for an etcds:// store (etcd
        with --client-cert-auth); None: plain gRPC (etcd://).
    """

    endpoints: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    request_timeout: float = 2.0
    failover_timeout: float = 5.0
    stale_reads: bool = True
    watch_reconnect_timeout: float = 10.0
    page_size: int = 1000
    tls: EtcdTls | None = None

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> EtcdConfig:
        """etcd://host:port[,host:port...][/key-prefix], or etcds://... with `tls` (required then)."""
        rule = "use etcd://host:port[,host:port...][/key-prefix] (etcds:// for TLS)"
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("etcd", "etcds"):
            raise ConfigError(f"invalid etcd store URL {url!r}: {rule}")
        if (scheme == "etcds") != (overrides.get("tls") is not None):
            raise ConfigError(f"etcd store URL {url!r}: " + (
                "etcds:// needs a CA bundle, client certificate and key (--etcd-ca, --etcd-cert, --etcd-key)"
                if scheme == "etcds" else "TLS settings were given for a plain etcd:// store: use etcds://"))
        hosts, slash, path = rest.partition("/")
        endpoints = tuple(h.strip() for h in hosts.split(",") if h.strip())
        if not endpoints:
            raise ConfigError(f"invalid etcd store URL {url!r}: no endpoint given; {rule}")
        for ep in endpoints:
            host, colon, port = ep.rpartition(":")
            if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"invalid etcd endpoint {ep!r} in {url!r}: each must be host:port "
                                  f"with a port in 1-65535; {rule}")
        if len(set(endpoints)) != len(endpoints):
            raise ConfigError(f"invalid etcd store URL {url!r}: an endpoint is listed twice")
        prefix = "/" + path.strip("/") if slash and path.strip("/") else DEFAULT_PREFIX
        if "\0" in prefix or "," in prefix:
            raise ConfigError(f"invalid etcd key prefix {prefix!r} in {url!r}: no NUL or ',' allowed")
        return cls(endpoints=endpoints, prefix=prefix, **overrides)


class EtcdStore(Store):
    def __init__(self, config: EtcdConfig, clock: Clock = SYSTEM,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        from meshd.store.etcdpb import rpc_pb2

        self.config = config
        self.describe = f"{'etcds' if config.tls else 'etcd'}:{','.join(config.endpoints)}{config.prefix}"
        self._pb = rpc_pb2
        self._keys = etcd_txn.Keys(config.prefix)
        self._clock = clock
        self._sleep = sleep
        self.alarms: list[str] = []  # see check_alarms
        self.db_size = 0
        self._members = Members(config.endpoints, config.request_timeout, config.failover_timeout,
                                clock=clock, sleep=sleep, tls=config.tls)

    @classmethod
    def from_url(cls, url: str, clock: Clock = SYSTEM, **overrides: Any) -> EtcdStore:
        return cls(EtcdConfig.from_url(url, **overrides), clock)

    # -- reads ----------------------------------------------------------------
    async def _range(self, what: str, req) -> Any:
        """One Range: linearizable; serializable from a lone member when there is no quorum."""
        t = self.config.request_timeout

        async def linearizable(ep: str):
            return await self._members.stub(ep, "KV").Range(req, timeout=t, metadata=HASLEADER)

        try:
            return await self._members.call(what, linearizable, mutation=False, wait_for_leader=False)
        except ReadOnly:
            if not self.config.stale_reads:
                raise
        stale = self._pb.RangeRequest()
        stale.CopyFrom(req)
        stale.serializable = True

        async def serializable(ep: str):
            return await self._members.stub(ep, "KV").Range(stale, timeout=t)

        return await self._members.call(what, serializable, mutation=False)

    async def get(self, key: str) -> KeyValue | None:
        resp = await self._range(f"get {key!r}", self._pb.RangeRequest(key=self._keys.encode(key)))
        return self._keys.kv(resp.kvs[0]) if resp.kvs else None

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        start, end = self._keys.span(prefix)
        for _ in range(3):  # a compaction between pages restarts the read; bounded
            try:
                return await self._pages(f"range {prefix!r}", start, end)
            except HistoryCompacted:
                continue
        raise Unavailable(f"range {prefix!r}: history was compacted during every attempt to read it")

    async def changes(self, prefix: str, after: int) -> tuple[list[Event], int, set[str]]:
        """The keys under `prefix` written after revision `after`, each as a PUT of its current
        value; the revision read at; and every key the prefix holds then. Deletions are not
        listed (etcd's current state has no trace of them): a key missing from the set is gone.
        The current keys, filtered by mod revision, not the history: compaction does not matter."""
        start, end = self._keys.span(prefix)
        for _ in range(3):  # a compaction of the revision read at restarts; bounded
            try:
                written, rev = await self._pages(f"changes {prefix!r}", start, end, min_mod_revision=after + 1)
                keys, _ = await self._pages(f"keys {prefix!r}", start, end, rev, keys_only=True)
                return [Event("put", kv, kv.mod_revision) for kv in written], rev, {kv.key for kv in keys}
            except HistoryCompacted:
                continue
        raise Unavailable(f"changes under {prefix!r}: history was compacted during every attempt to read them")

    async def _pages(self, what: str, start: bytes, end: bytes, rev: int = 0,
                     **filters) -> tuple[list[KeyValue], int]:
        """Every key in [start, end) at revision `rev` (0: the newest, as of the first page), page
        by page, with the RangeRequest `filters`; and the revision read at."""
        out: list[KeyValue] = []
        key = start
        while True:  # bounded: every page advances past its last key
            resp = await self._range(what, self._pb.RangeRequest(key=key, range_end=end, limit=self.config.page_size,
                                                                revision=rev, **filters))
            rev = rev or resp.header.revision
            out.extend(self._keys.kv(m) for m in resp.kvs)
            if not resp.more or not resp.kvs:
                return out, rev
            key = resp.kvs[-1].key + b"\0"

    async def revision(self) -> int:
        resp = await self._range("revision", self._pb.RangeRequest(key=self._keys.namespace, count_only=True))
        return resp.header.revision

    # -- writes ---------------------------------------------------------------
    async def _write(self, what: str, method: str, service: str, req) -> Any:
        t = self.config.request_timeout

        async def attempt(ep: str):
            return await getattr(self._members.stub(ep, service), method)(req, timeout=t, metadata=HASLEADER)

        return await self._members.call(what, attempt, mutation=True)

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        pb, keys = self._pb, self._keys
        alternatives = etcd_txn.condition(pb, keys, compares)
        req = etcd_txn.txn_request(pb, alternatives, etcd_txn.request_ops(pb, keys, success),
                                   etcd_txn.request_ops(pb, keys, failure))
        leases = sorted({op.lease for op in (*success, *failure) if isinstance(op, Put) and op.lease})
        what = "transaction" + (f" (lease {', '.join(f'{x:x}' for x in leases)})" if leases else "")
        try:
            resp = await self._write(what, "Txn", "KV", req)
        except NotFound as e:
            raise NotFound(f"lease {', '.join(f'{x:x}' for x in leases)} not found (expired or revoked)") from e
        ok, responses = etcd_txn.txn_outcome(resp, len(alternatives))
        rev = resp.header.revision
        return TxnResult(ok, rev, etcd_txn.events(keys, success if ok else failure, responses, rev))

    # -- leases ---------------------------------------------------------------
    async def lease_grant(self, ttl: float) -> int:
        if not ttl > 0:
            raise ConfigError(f"invalid lease TTL {ttl}: must be > 0 seconds")
        resp = await self._write("lease grant", "LeaseGrant", "Lease",
                                 self._pb.LeaseGrantRequest(TTL=max(1, math.ceil(ttl))))
        if resp.error:
            raise Unavailable(f"lease grant: etcd refused: {resp.error}")
        return resp.ID

    async def lease_keepalive(self, lease: int) -> float:
        req = self._pb.LeaseKeepAliveRequest(ID=lease)
        t = self.config.request_timeout

        async def attempt(ep: str):
            import grpc

            call = self._members.stub(ep, "Lease").LeaseKeepAlive(timeout=t, metadata=HASLEADER)
            try:
                await call.write(req)
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise Unavailable(f"lease keepalive {lease:x}: member {ep} closed the stream")
                return resp
            finally:
                call.cancel()

        # renewing twice is harmless, so a keepalive is retried like a read
        resp = await self._members.call(f"lease keepalive {lease:x}", attempt, mutation=False)
        if resp.TTL <= 0:
            raise NotFound(f"lease {lease:x} not found (expired or revoked)")
        return float(resp.TTL)

    async def lease_revoke(self, lease: int) -> None:
        try:
            await self._write(f"lease revoke {lease:x}", "LeaseRevoke", "Lease", self._pb.LeaseRevokeRequest(ID=lease))
        except NotFound:
            pass  # already expired or revoked: what the caller wanted (as the SQLite backend does)

    async def expire_leases(self) -> int:
        """Nothing to do: etcd expires leases itself (present so callers treat both backends alike)."""
        return 0

    # -- watch ----------------------------------------------------------------
    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[list[Event]]:
        """History, one empty batch (caught up), then live; see the module docstring.

        etcd does not mark the end of a watcher's history (3.4 answers a
        progress request before the history it has still to send), so the
        history is read through a watcher on the whole key space: every
        revision after 1 has at least one event there, so the event at the
        revision current when the watcher was created is the end of the
        history. The watcher then moves to the prefix alone, from there.
        """
        import grpc

        start, end = self._keys.span(prefix)
        last = from_revision
        caught_up = False
        while True:  # one pass per stream; bounded in time by watch_reconnect_timeout when no member serves
            whole = not caught_up
            call, current = await self._open_watch(prefix, (b"\0", b"\0") if whole else (start, end), last + 1)
            try:
                if whole and current <= last:
                    caught_up = True  # no history to read
                    yield []
                    continue
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:  # the member ended the stream
                        break
                    if resp.compact_revision:
                        raise Compacted(last, resp.compact_revision)
                    if resp.canceled:
                        raise Unavailable(f"watch {prefix!r}: etcd cancelled it: {resp.cancel_reason or 'no reason'}")
                    batch: list[Event] = []
                    for e in resp.events:  # one batch per revision, as the SQLite backend delivers them
                        if not start <= e.kv.key < end or e.kv.mod_revision <= last:
                            continue  # another prefix (history pass), or delivered before a reconnect
                        ev = etcd_txn.watch_event(self._keys, e)
                        if batch and ev.revision != batch[0].revision:
                            last = batch[0].revision
                            yield batch
                            batch = []
                        batch.append(ev)
                    if batch:
                        last = batch[0].revision
                        yield batch
                    if whole and resp.events:
                        # every event of the key space up to here has been seen
                        last = max(last, resp.events[-1].kv.mod_revision)
                        if last >= current:
                            caught_up = True
                            yield []
                            break  # reopen on the prefix alone
            except grpc.aio.AioRpcError:
                # the member went away or lost its leader: reopen elsewhere from `last`
                await self._sleep(0.05)  # no hot loop if members keep ending streams
            finally:
                call.cancel()

    async def _open_watch(self, prefix: str, span: tuple[bytes, bytes], start_revision: int):
        """A Watch stream on some member once etcd confirmed the watcher, and the revision it was created at."""
        pb = self._pb
        create = pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=span[0], range_end=span[1], start_revision=start_revision, prev_kv=True))
        t = self.config.request_timeout

        async def attempt(ep: str):
            import grpc

            call = self._members.stub(ep, "Watch").Watch(metadata=HASLEADER)
            try:
                await call.write(create)
                first = await asyncio.wait_for(call.read(), t)
            except asyncio.TimeoutError:
                call.cancel()
                raise Unavailable(f"watch {prefix!r}: member {ep} did not confirm the watch within {t:g}s") from None
            except BaseException:
                call.cancel()
                raise
            if first is grpc.aio.EOF:
                call.cancel()
                raise Unavailable(f"watch {prefix!r}: member {ep} closed the stream")
            if first.compact_revision:
                call.cancel()
                raise Compacted(start_revision - 1, first.compact_revision)
            return call, first.header.revision

        deadline = self._clock.monotonic() + self.config.watch_reconnect_timeout
        while True:  # bounded by the deadline
            try:
                return await self._members.call(f"watch {prefix!r}", attempt, mutation=False)
            except Compacted:
                raise
            except Unavailable:
                if self._clock.monotonic() >= deadline:
                    raise
                await self._sleep(0.2)

    async def compact(self, revision: int) -> None:
        if revision <= 0:
            return
        current = await self.revision()
        try:
            await self._write(f"compact {revision}", "Compact", "KV",
                              self._pb.CompactionRequest(revision=min(revision, current)))
        except HistoryCompacted:
            pass  # already compacted at or past it: nothing to do, as the SQLite backend does

    async def check_alarms(self) -> list[str]:
        """Ask every member for its status: alarms raised (etcd's NOSPACE makes the store read-only)
        go to `alarms`, the largest database size to `db_size`."""
        import grpc

        from meshd.store.etcdpb import rpc_pb2
        raised: set[str] = set()
        sizes = []
        for ep in self._members.endpoints:
            try:
                st = await self._members.stub(ep, "Maintenance").Status(rpc_pb2.StatusRequest(), timeout=1.0)
            except grpc.aio.AioRpcError:
                continue
            sizes.append(st.dbSize)
            for err in st.errors:
                if "NOSPACE" in err:
                    raised.add("NOSPACE: etcd reached its space quota and is read-only (compact, defragment, "
                               "then `etcdctl alarm disarm`; or raise --quota-backend-bytes)")
                elif "alarm" in err.lower():
                    raised.add(err)
        self.alarms = sorted(raised)
        if sizes:
            self.db_size = max(sizes)
        return self.alarms

    async def close(self) -> None:
        await self._members.close()
