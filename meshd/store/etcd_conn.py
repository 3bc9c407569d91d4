"""Connections to the members of an etcd cluster, with failover.

Model: one gRPC channel per member endpoint, opened lazily inside the event
loop. A call goes to the leader first (asked of the members with Status):
it answers without a forwarding hop, and when it dies the request in flight
fails at once, whereas a follower that has not yet noticed would forward it
to the dead leader and hold it until the deadline. After the leader's
connection fails, the next call waits until the members name a new leader
(an election), then goes there. When a member cannot be used the call moves
on to the next one, round after round, until `failover_timeout` has passed.
What may be retried depends on what the error proves about the request:

- *not applied*: the connection could not be made, or the member refused the
  request before proposing it ("etcdserver: no leader", "too many requests",
  a dropped raft proposal). Any call may go to another member.
- *outcome unknown*: the connection broke while the request was in flight, the
  attempt's deadline passed, or etcd gave up waiting ("request timed out",
  "leader changed"). A read is retried elsewhere; a write is not (it may have
  been applied, and repeating it would apply it twice): the caller gets
  `Unavailable` saying the outcome is unknown, and re-reads before retrying.
- *answered*: anything else is etcd's verdict on the request itself and is
  mapped to a meshcore error (NotFound, InvalidArgument, ...).

Every request carries etcd's `hasleader` metadata, so a member that has lost
its leader says so at once instead of accepting a write it cannot commit.
When every reachable member says it has no leader, there is no quorum: writes
fail with a message saying the store is read-only, and reads (when
`stale_reads` is on) are served by one member alone (etcd's serializable
reads; they may lag the last committed write).

With `tls` (an etcds:// store) every channel is TLS with meshd's client
certificate; a refused handshake is "unreachable" (the request never left).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meshcore.clock import SYSTEM, Clock
from meshcore.errors import (
    FailedPrecondition, InvalidArgument, MeshError, NotFound, PermissionDenied, ResourceExhausted, Unauthenticated,
    Unavailable,
)

# etcd's rpctypes: the metadata key and value that make a member refuse
# requests while it knows no leader.
HASLEADER = (("hasleader", "true"),)

# gRPC channel options. Reconnect quickly to a member that comes back (gRPC's
# default backoff grows to two minutes), keep idle connections probed so a
# dead member is noticed on a quiet watch stream, and accept large responses
# (a big range or a watch batch of one large transaction).
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # etcd's default --grpc-keepalive-min-time is 5 s; probing more often gets a GOAWAY
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)

NOT_APPLIED_DETAILS = ("etcdserver: no leader", "etcdserver: too many requests", "proposal dropped",
                       "etcdserver: not capable")
CONNECT_FAILED_DETAILS = ("failed to connect", "connection refused", "dns resolution failed",
                          "name resolution", "no route to host")


class HistoryCompacted(FailedPrecondition):
    """etcd no longer has the revision a request asked for."""


class ReadOnly(Unavailable):
    """No quorum: reads may be served, writes are refused."""


class OutcomeUnknown(Unavailable):
    """A write was sent but not confirmed; it may or may not have been applied."""


@dataclass(frozen=True, slots=True)
class Failure:
    endpoint: str
    kind: str  # "unreachable" | "no_leader" | "refused" | "unknown"
    detail: str


def classify(e: Any) -> str:
    """Which of not-applied ('unreachable', 'no_leader', 'refused'), 'unknown' or 'answered' an RpcError is."""
    import grpc

    code = e.code()
    detail = (e.details() or "").lower()
    if code == grpc.StatusCode.UNAVAILABLE and any(s in detail for s in CONNECT_FAILED_DETAILS):
        return "unreachable"
    if "etcdserver: no leader" in detail:
        return "no_leader"
    if any(s in detail for s in NOT_APPLIED_DETAILS):
        return "refused"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return "unknown"
    if code == grpc.StatusCode.UNKNOWN and ("timed out" in detail or "leader changed" in detail):
        return "unknown"
    return "answered"


def map_answer(e: Any, what: str) -> MeshError:
    """etcd's verdict on a request, as a meshcore error naming the rule."""
    import grpc

    code = e.code()
    detail = e.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what}: {detail.removeprefix('etcdserver: ')}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if "duplicate key" in detail:
            return InvalidArgument(f"{what}: a transaction may write each key at most once (etcd refuses "
                                   f"overlapping puts and deletes in one transaction)")
        return InvalidArgument(f"{what}: etcd refused the request: {detail}")
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in detail:
        return HistoryCompacted(f"{what}: {detail.removeprefix('etcdserver: ')}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"{what}: etcd is out of space or overloaded: {detail} "
                                 f"(compact and defragment, or raise --quota-backend-bytes)")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(f"{what}: etcd requires authentication: {detail}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"{what}: etcd denied the request: {detail}")
    return Unavailable(f"{what}: etcd answered {code.name}: {detail}")


class Members:
    """Channels to every member and the failover policy described in the module docstring."""

    def __init__(self, endpoints: tuple[str, ...], request_timeout: float, failover_timeout: float,
                 clock: Clock = SYSTEM,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, tls: Any = None) -> None:
        self.endpoints = endpoints
        self._tls = tls  # etcd_tls.EtcdTls or None
        self.request_timeout = request_timeout
        self.failover_timeout = failover_timeout
        self._clock = clock
        self._sleep = sleep
        self._channels: dict[str, Any] = {}
        self._stubs: dict[tuple[str, str], Any] = {}
        self._preferred = 0
        self._member_ids: dict[str, int] = {}  # endpoint -> etcd member id, learned from Status
        self._leader: str | None = None  # endpoint of the member believed to lead
        self._failed_leader = 0  # member id of a leader whose connection just failed

    def stub(self, endpoint: str, service: str) -> Any:
        """The generated stub of `service` ("KV", "Watch", "Lease", "Maintenance") on `endpoint`."""
        import grpc

        from meshd.store.etcdpb import rpc_pb2_grpc

        key = (endpoint, service)
        if key not in self._stubs:
            if endpoint not in self._channels:
                self._channels[endpoint] = (
                    grpc.aio.secure_channel(endpoint, self._tls.credentials(), options=CHANNEL_OPTIONS)
                    if self._tls is not None else grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS))
            self._stubs[key] = getattr(rpc_pb2_grpc, f"{service}Stub")(self._channels[endpoint])
        return self._stubs[key]

    def order(self) -> list[int]:
        """Member indexes to try: the leader first when known, then from the one that answered last."""
        n = len(self.endpoints)
        out = [(self._preferred + k) % n for k in range(n)]
        if self._leader in self.endpoints:
            first = self.endpoints.index(self._leader)
            out.remove(first)
            out.insert(0, first)
        return out

    def _lost(self, endpoint: str) -> bool:
        """The connection to `endpoint` failed: if it led, find the leader again (returns True)."""
        if endpoint != self._leader:
            return False
        self._leader = None
        self._failed_leader = self._member_ids.get(endpoint, 0)
        return True

    async def locate_leader(self, deadline: float) -> None:
        """Ask the members (Status) who leads. Requests go to the leader first: it answers without a
        forwarding hop, and when it dies the request in flight fails at once instead of waiting on a
        follower that forwards to a dead leader. While the members still name a leader whose
        connection just failed (the election is not over), wait for a new one, until `deadline`."""
        import grpc

        from meshd.store.etcdpb import rpc_pb2

        while True:  # bounded by `deadline`
            named: set[int] = set()
            answered: set[int] = set()
            for ep in self.endpoints:
                try:
                    st = await self.stub(ep, "Maintenance").Status(
                        rpc_pb2.StatusRequest(), timeout=min(self.request_timeout, 1.0))
                except grpc.aio.AioRpcError:
                    continue
                self._member_ids[ep] = st.header.member_id
                answered.add(st.header.member_id)
                if st.leader:
                    named.add(st.leader)
            if self._failed_leader in answered:
                self._failed_leader = 0  # it is alive after all: only our connection broke
            by_id = {mid: ep for ep, mid in self._member_ids.items()}
            live = [m for m in named if m != self._failed_leader and m in by_id and m in answered]
            if live:
                self._leader, self._failed_leader = by_id[live[0]], 0
                return
            if self._failed_leader not in named or self._clock.monotonic() >= deadline:
                return  # no leader to wait for (no quorum, or unknown): plain order
            await self._sleep(0.05)

    async def call(self, what: str, attempt: Callable[[str], Awaitable[Any]], *, mutation: bool,
                   wait_for_leader: bool = True) -> Any:
        """Run `attempt(endpoint)` on the members in turn until one answers (see the module docstring).

        With `wait_for_leader` off, a round in which every member is either
        unreachable or leaderless raises `ReadOnly` at once (a reader then
        falls back to a serializable read) instead of waiting out an election.
        """
        import grpc

        deadline = self._clock.monotonic() + self.failover_timeout
        pause = 0.05
        while True:  # bounded by `deadline`
            if self._leader is None and len(self.endpoints) > 1:
                await self.locate_leader(deadline)
            failures: list[Failure] = []
            relocate = False
            for i in self.order():
                ep = self.endpoints[i]
                try:
                    result = await attempt(ep)
                except grpc.aio.AioRpcError as e:
                    kind = classify(e)
                    if kind == "answered":
                        raise map_answer(e, what) from None
                    relocate = kind in ("unreachable", "unknown", "no_leader") and self._lost(ep)
                    if kind == "unknown" and mutation:
                        self._preferred = (i + 1) % len(self.endpoints)
                        raise OutcomeUnknown(
                            f"{what}: etcd member {ep} did not confirm the write ({e.code().name}: {e.details()}); "
                            f"it may or may not have been applied: re-read before retrying") from None
                    failures.append(Failure(ep, kind, e.details() or e.code().name))
                    if relocate:
                        break  # the leader went away: ask who leads now (waits out the election)
                    continue
                except (Unavailable, asyncio.TimeoutError) as e:  # an attempt's own "no answer in time"
                    relocate = self._lost(ep)
                    if mutation:
                        raise
                    failures.append(Failure(ep, "unknown", str(e) or "timed out"))
                    if relocate:
                        break
                    continue
                self._preferred = i
                return result
            no_quorum = any(f.kind == "no_leader" for f in failures) and all(
                f.kind in ("no_leader", "unreachable") for f in failures)
            if self._clock.monotonic() >= deadline or (no_quorum and not wait_for_leader):
                raise self.no_service(what, failures, mutation)
            if relocate:
                continue
            await self._sleep(pause)
            pause = min(pause * 2, 0.5)

    def no_service(self, what: str, failures: list[Failure], mutation: bool) -> Unavailable:
        n = len(self.endpoints)
        leaderless = [f.endpoint for f in failures if f.kind == "no_leader"]
        down = [f.endpoint for f in failures if f.kind == "unreachable"]
        if leaderless:
            return ReadOnly(
                f"{what}: the etcd store is read-only for lack of quorum: {len(leaderless)} of {n} members "
                f"answer but have no leader ({', '.join(leaderless)})"
                + (f", {len(down)} unreachable ({', '.join(down)})" if down else "")
                + f"; writes are refused until a majority ({n // 2 + 1} of {n}) is back")
        if len(down) == len(failures):
            return Unavailable(f"{what}: no etcd member is reachable ({', '.join(self.endpoints)}): "
                               f"{failures[-1].detail if failures else 'no endpoints'}")
        last = failures[-1] if failures else Failure("", "", "no endpoints")
        return Unavailable(f"{what}: no etcd member served the request within {self.failover_timeout:g}s "
                           f"(last: {last.endpoint}: {last.detail})")

    async def close(self) -> None:
        channels, self._channels, self._stubs = self._channels, {}, {}
        for ch in channels.values():
            await ch.close()
