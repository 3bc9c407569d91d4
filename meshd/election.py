"""Leader election on the store (works on both backends).

Only one meshd replica may run the catalog sync loops and hand out addresses;
this module decides which. The recipe is etcd's, written on the Store
interface:

- A candidate holds a lease of `ttl` seconds and renews it every
  `keepalive_interval`.
- Campaign: one transaction, "if the leader key is absent, put my id there
  under my lease". Whoever commits it leads.
- A candidate that lost watches the leader key from the revision of its
  attempt (so a deletion in between is not missed) and campaigns again when
  the key is deleted: the leader resigned, or its lease expired or was revoked
  (its process died or stopped renewing).
- A leader steps down as soon as any of these holds: the key is deleted or
  holds another value (seen on its watch); a keepalive says the lease is gone;
  or it has not renewed for `ttl - step_down_margin` seconds on its own clock.
  The last rule is what makes two leaders impossible while the store is
  unreachable: the server counts the lease from a renewal it received after
  we sent it, so stepping down before `ttl` has passed since the last
  successful renewal was *sent* means we stop before anyone else can win.

With SQLite and a single meshd there is no other candidate: the first
campaign wins at once. A key left by a previous run under an old lease goes
when that lease expires; SQLite expiry is driven by its owner, so while
waiting the election calls the store's `expire_leases` (a no-op on etcd).

`on_change(is_leader)` is called on every change of leadership; `is_leader`,
`wait_leader()` and `wait_follower()` give the same information. The clock
(its monotonic time: a wall-clock step must not end or extend a term) and
sleep are injected so the renewal and step-down timing are tested with a
manual clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meshcore.clock import SYSTEM, Clock
from meshcore.errors import InvalidArgument, MeshError, NotFound
from meshd.store.base import Compacted, Compare, Delete, Put, Store, absent

log = logging.getLogger("meshd.election")


@dataclass(frozen=True, slots=True)
class ElectionConfig:
    """Timing of one election.

    key: the leader key; its value is the leader's candidate id.
    ttl: lease time to live. A leader that dies is replaced after at most
        this long (sooner when it resigns). etcd rounds it up to whole
        seconds and to its own minimum.
    keepalive_interval: how often the lease is renewed; 0 means ttl / 3, so
        two renewals can fail before the lease is at risk.
    step_down_margin: a leader that cannot renew steps down this long before
        its lease could expire; 0 means ttl / 5. Covers clock-rate drift and
        the time a renewal takes to reach the server.
    retry_interval: pause after a store error before campaigning again.
    """

    key: str = "/election/meshd"
    ttl: float = 5.0
    keepalive_interval: float = 0.0
    step_down_margin: float = 0.0
    retry_interval: float = 0.5

    def __post_init__(self) -> None:
        if not self.ttl > 0:
            raise InvalidArgument(f"invalid election ttl {self.ttl}: must be > 0 seconds")
        if self.keepalive_interval < 0 or self.step_down_margin < 0:
            raise InvalidArgument("invalid election timing: intervals must be >= 0")
        if self.interval >= self.ttl - self.margin:
            raise InvalidArgument(f"invalid election timing: keepalive_interval {self.interval:g}s must be shorter "
                                  f"than ttl - step_down_margin ({self.ttl - self.margin:g}s)")

    @property
    def interval(self) -> float:
        return self.keepalive_interval or self.ttl / 3

    @property
    def margin(self) -> float:
        return self.step_down_margin or self.ttl / 5


class _Lost(Exception):
    """This term is over (internal)."""


class Election:
    def __init__(self, store: Store, candidate: str, config: ElectionConfig = ElectionConfig(), *,
                 on_change: Callable[[bool], None] | None = None,
                 clock: Clock = SYSTEM,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not candidate:
            raise InvalidArgument("invalid election candidate id: must not be empty")
        self.store = store
        self.candidate = candidate
        self.config = config
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._leader = asyncio.Event()
        self._follower = asyncio.Event()
        self._follower.set()
        self._task: asyncio.Task | None = None
        self._lease = 0
        self._renewed = 0.0  # clock time the last successful renewal (or the grant) was sent
        self._won_revision = 0  # create revision of our leader key while we lead

    # -- what callers see -----------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    async def wait_leader(self) -> None:
        """Return once this candidate leads (at once if it does)."""
        await self._leader.wait()

    async def wait_follower(self) -> None:
        """Return once this candidate does not lead (at once if it does not)."""
        await self._follower.wait()

    async def leader(self) -> str | None:
        """The current leader's candidate id, as the store has it."""
        kv = await self.store.get(self.config.key)
        return kv.value.decode() if kv else None

    def _set(self, leading: bool) -> None:
        if leading == self.is_leader:
            return
        if leading:
            self._follower.clear()
            self._leader.set()
        else:
            self._leader.clear()
            self._follower.set()
        log.info("%s %s leadership (%s)", self.candidate, "gained" if leading else "lost", self.config.key)
        if self._on_change:
            try:
                self._on_change(leading)
            except Exception:  # a broken callback must not break the election
                log.exception("election on_change callback failed")

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        """Campaign in the background until `resign()`."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"election {self.config.key}")

    async def resign(self) -> None:
        """Stop campaigning; if leading, hand over at once (delete the key, revoke the lease)."""
        task, self._task = self._task, None
        if task:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._release()

    close = resign

    async def _release(self) -> None:
        lease, won, self._lease, self._won_revision = self._lease, self._won_revision, 0, 0
        self._set(False)
        try:
            if won:  # only our own key: another leader may already hold it
                await self.store.txn([Compare(self.config.key, "create", "=", won)], [Delete(self.config.key)])
            if lease:
                await self.store.lease_revoke(lease)
        except MeshError as e:  # the lease will expire on its own
            log.warning("%s: could not release leadership cleanly: %s", self.candidate, e)

    # -- the campaign ---------------------------------------------------------
    async def _run(self) -> None:
        while True:  # one term per pass; ends by cancellation (resign)
            try:
                await self._term()
            except asyncio.CancelledError:
                raise
            except (MeshError, _Lost) as e:
                log.info("%s: election term ended: %s", self.candidate, e)
            await self._release()
            await self._sleep(self.config.retry_interval)

    async def _term(self) -> None:
        """Grant a lease, then campaign and lead while keeping it alive; raises when the term ends."""
        sent = self._clock.monotonic()
        self._lease = await self.store.lease_grant(self.config.ttl)
        self._renewed = sent
        tasks = [asyncio.create_task(self._keepalive()), asyncio.create_task(self._campaign())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # raises why the term ended
            raise _Lost("campaign ended")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _keepalive(self) -> None:
        cfg = self.config
        ok = True
        while True:  # ends by raising _Lost, or cancellation
            deadline = self._renewed + cfg.ttl - cfg.margin
            pause = cfg.interval if ok else min(cfg.interval, cfg.retry_interval)
            await self._sleep(max(0.0, min(pause, deadline - self._clock.monotonic())))
            sent = self._clock.monotonic()
            if sent >= deadline:
                raise _Lost(f"no lease renewal for {sent - self._renewed:.1f}s: stepping down "
                            f"before the lease can expire")
            try:
                # a renewal still unanswered at the deadline is as good as failed
                await asyncio.wait_for(self.store.lease_keepalive(self._lease), deadline - sent)
                self._renewed, ok = sent, True
            except NotFound:
                raise _Lost("the lease expired or was revoked") from None
            except (MeshError, asyncio.TimeoutError) as e:
                ok = False
                log.warning("%s: lease renewal failed: %s", self.candidate, e or "timed out")
                continue
            expire = getattr(self.store, "expire_leases", None)
            if expire is not None:  # SQLite: nobody else may be expiring a stale leader's lease
                await expire()

    async def _campaign(self) -> None:
        key = self.config.key
        me = self.candidate.encode()
        while True:  # one attempt per vacancy; ends when a term as leader ends (raises)
            res = await self.store.txn([absent(key)], [Put(key, me, self._lease)])
            if res.succeeded:
                await self._lead(res.events[0].kv.create_revision)
            kv = await self.store.get(key)
            if kv is not None and kv.lease == self._lease:
                # ours: an earlier attempt whose answer was lost did commit
                await self._lead(kv.create_revision)
            if kv is not None:
                await self._wait_vacancy(res.revision)

    async def _lead(self, created: int) -> None:
        """Lead until the key is no longer ours (raises _Lost)."""
        self._won_revision = created
        self._set(True)
        key = self.config.key
        since = created
        while True:  # a compacted watch is reopened from a fresh read; bounded by the key's lifetime
            try:
                async for batch in self.store.watch(key, since):
                    for e in batch:
                        if e.kv.key == key and (e.type == "delete" or e.kv.create_revision != created):
                            raise _Lost("the leader key was deleted or taken")
            except Compacted:
                pass
            kvs, since = await self.store.range(key)
            if not any(kv.key == key and kv.create_revision == created for kv in kvs):
                raise _Lost("the leader key was deleted or taken")

    async def _wait_vacancy(self, revision: int) -> None:
        """Return when the leader key is deleted after `revision`."""
        key = self.config.key
        try:
            async for batch in self.store.watch(key, revision):
                if any(e.kv.key == key and e.type == "delete" for e in batch):
                    return
        except Compacted:
            pass  # history gone: campaigning again finds out whether the key is still held
