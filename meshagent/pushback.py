"""A join refused for load is tried again after the wait meshd suggests.

meshd lets only so many joins wait for their turn (meshd/joinqueue.py); one
more is refused at once with RESOURCE_EXHAUSTED and the standard
`grpc-retry-pushback-ms` trailer, as gRPC servers push back on retries
(gRPC's retry design, A6): the milliseconds to wait before trying again.
`retry_after` turns a refused join into that wait:

- a trailer with a wait: that wait, capped at PUSHBACK_CAP_S and spread
  upward by up to JITTER (never sooner than asked), so that callers refused
  together do not come back together;
- no trailer (a proxy, or a server that does not say): the caller's own
  backoff;
- a negative or unreadable trailer ("do not retry", as in gRPC), or any
  other status code: None, the refusal stands.

`join_retry` is the whole answer to a failed join: a push back is waited out,
a refusal with a FATAL code stands (the token, the name or the request is
wrong), anything else (meshd unreachable, a join that lost its races with
concurrent joins) is tried again after the caller's backoff. The agent's
uplink and the fleet bench's simulated agents both decide with it.
"""

from __future__ import annotations

import grpc

from meshcore.backoff import Backoff
from meshcore.errors import RETRY_PUSHBACK_KEY

#: a join refused with one of these stands, unless meshd pushes back with a wait
FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
         grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.RESOURCE_EXHAUSTED}
#: the longest wait honoured, whatever the trailer says
PUSHBACK_CAP_S = 30.0
#: the wait is spread over [1, 1 + JITTER) of what meshd suggests
JITTER = 0.2


def pushback_trailer(err: grpc.aio.AioRpcError) -> str | None:
    """The `grpc-retry-pushback-ms` trailer of a failed call, as sent; None without one."""
    for key, value in err.trailing_metadata() or ():
        if key == RETRY_PUSHBACK_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def retry_after(err: grpc.aio.AioRpcError, backoff: Backoff) -> float | None:
    """Seconds to wait before trying a join refused for load again; None when the refusal stands."""
    if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    raw = pushback_trailer(err)
    if raw is None:
        return backoff.next()
    try:
        ms = int(raw.strip())
    except ValueError:
        return None
    if ms < 0:
        return None
    return min(PUSHBACK_CAP_S, ms / 1000.0) * (1 + JITTER * backoff.rng.random())


def join_retry(err: grpc.aio.AioRpcError, backoff: Backoff) -> tuple[float, bool] | None:
    """How an agent answers a join that failed with `err`: (seconds to wait before trying again,
    whether meshd pushed back), or None when the refusal stands."""
    wait = retry_after(err, backoff)
    if wait is not None and pushback_trailer(err) is not None:
        return wait, True
    if err.code() in FATAL and wait is None:
        return None
    return (wait if wait is not None else backoff.next()), False
