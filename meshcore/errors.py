"""Typed errors.

Domain code raises these; only the edges translate them: the gRPC interceptor
maps `code` to a gRPC status, the CLI prints `str(err)` as one line and exits
non-zero. Two families, as h11 has them: `MeshError` subclasses are the
caller's mistake or a refused request; `PeerError` is something a remote peer
sent that we could not accept.

Every message names the rule that was broken, e.g.
"invalid name 'Foo_1': must be lowercase letters, digits or '-' (RFC 1123 label)".
"""

from __future__ import annotations


class MeshError(Exception):
    """Base of all errors a user or caller can cause. `code` is a gRPC status name."""

    code = "UNKNOWN"

    def __init__(self, message: str, **details: str) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class InvalidArgument(MeshError):
    code = "INVALID_ARGUMENT"


class NotFound(MeshError):
    code = "NOT_FOUND"


class AlreadyExists(MeshError):
    code = "ALREADY_EXISTS"


class PermissionDenied(MeshError):
    code = "PERMISSION_DENIED"


class Unauthenticated(MeshError):
    code = "UNAUTHENTICATED"


class FailedPrecondition(MeshError):
    code = "FAILED_PRECONDITION"


class Unavailable(MeshError):
    code = "UNAVAILABLE"


class ResourceExhausted(MeshError):
    """Too much of something: the request may succeed later, or once something is freed.
    `retry_pushback_ms`, when set, is the wait the refusing side suggests before a retry: the
    interceptor sends it as the standard `grpc-retry-pushback-ms` trailer (RETRY_PUSHBACK_KEY); a
    negative value says "do not retry", as in gRPC's retry design."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_pushback_ms: int | None = None, **details: str) -> None:
        super().__init__(message, **details)
        self.retry_pushback_ms = retry_pushback_ms


class Conflict(MeshError):
    """A compare-and-swap lost a race; the caller may retry."""

    code = "ABORTED"


class StateError(MeshError):
    """Local state (state directory, database, config file) is unreadable or corrupt."""

    code = "DATA_LOSS"


class ConfigError(InvalidArgument):
    """A configuration file or option breaks a rule."""


#: the gRPC trailer carrying the suggested wait before a retry, in milliseconds (gRPC proposal A6)
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


class PeerError(Exception):
    """Something a remote peer sent could not be accepted (bad datagram, bad record)."""


_BY_CODE = {cls.code: cls for cls in (InvalidArgument, NotFound, AlreadyExists, PermissionDenied, Unauthenticated,
                                      FailedPrecondition, Unavailable, ResourceExhausted, Conflict, StateError)}


def from_code(code: str, message: str) -> MeshError:
    """The typed error for a gRPC status name (e.g. from a refused call to meshd)."""
    return _BY_CODE.get(code, MeshError)(message)
