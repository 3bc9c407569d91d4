"""Who is calling, and the one place typed errors become gRPC statuses.

Callers:
- "local": came in on meshd's unix admin socket (root-owned, 0600): admin.
- "admin": mTLS client certificate from the mesh CA with O=mesh-admin, or
  O=mesh-admin-issuer for an admin who may also issue admin certificates.
- "node":  mTLS client certificate with O=mesh-node; CN is the node id.
- "anonymous": the join port (server TLS only): may only call Join.

The TCP listener requires a client certificate from the mesh CA (the TLS
handshake refuses any other); the join listener asks for none. Both share
the servicers, which ask `caller_of(context)`, or `Callers` when the answer
depends on the mesh as it is now: a removed node's certificate stays valid
until it expires, so a node caller is also looked up.

An admin certificate can be revoked (meshd.admincerts): the error interceptor
asks whether the serial of every admin certificate that calls is revoked
before the servicer runs, on the mTLS listener's every method (unary,
server-streaming and the bidirectional Tunnel alike).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from cryptography import x509

from meshcore import limits, pki
from meshcore.errors import RETRY_PUSHBACK_KEY, InvalidArgument, MeshError, PermissionDenied, Unauthenticated
from meshcore.logs import new_request_id, request_id
from meshd import metrics


@dataclass(frozen=True)
class Caller:
    kind: str  # local | admin | node | anonymous
    id: str = ""
    #: the client certificate's serial (hex), for admins: what revocation names
    serial: str = ""
    #: whether this admin may issue admin certificates (the admin socket always may)
    issuer: bool = False

    @property
    def is_admin(self) -> bool:
        return self.kind in ("local", "admin")

    @property
    def may_issue(self) -> bool:
        return self.kind == "local" or (self.kind == "admin" and self.issuer)

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}" if self.id else self.kind


def caller_of(context: grpc.aio.ServicerContext) -> Caller:
    if context.peer().startswith("unix:"):
        return Caller("local")
    pem = (context.auth_context() or {}).get("x509_pem_cert")
    if not pem:
        return Caller("anonymous")
    return _caller_of_cert(pem[0])


@functools.lru_cache(maxsize=16384)
def _caller_of_cert(pem: bytes) -> Caller:
    """Who a (TLS-verified) client certificate names: parsed once per certificate, not on every
    call (a fleet's renewals, each checked more than once, spent their time here)."""
    cert = x509.load_pem_x509_certificate(pem)
    kind, cn = pki.identity(cert)
    if kind == pki.KIND_NODE:
        return Caller("node", cn)
    if kind in (pki.KIND_ADMIN, pki.KIND_ADMIN_ISSUER):
        return Caller("admin", cn, pki.serial_hex(cert), kind == pki.KIND_ADMIN_ISSUER)
    raise Unauthenticated(f"certificate kind {kind!r} may not call meshd")


def require_admin(caller: Caller) -> None:
    if caller.kind == "anonymous":
        raise Unauthenticated("this call needs a mesh certificate: use meshd's admin socket or an admin certificate")
    if not caller.is_admin:
        raise PermissionDenied(f"{caller} is not an admin: use meshd's admin socket (as root on the main node) "
                               f"or an admin certificate (meshctl admin-cert)")


def require_node(caller: Caller) -> str:
    if caller.kind == "anonymous":
        raise Unauthenticated("this call needs the node's mesh certificate (join first)")
    if caller.kind != "node":
        raise PermissionDenied(f"{caller} is not a node: only a node can call this for itself")
    return caller.id


class Callers:
    """Caller checks that read the store; `node_exists(id)` is Nodes.exists."""

    def __init__(self, node_exists: Callable[[str], Awaitable[bool]]) -> None:
        self._node_exists = node_exists

    async def node_caller(self, context) -> str:
        """The calling node's id; Unauthenticated if it was removed."""
        node_id = require_node(caller_of(context))
        if not await self._node_exists(node_id):
            raise Unauthenticated(f"node {node_id} was removed from the mesh: join again with a new token")
        return node_id

    async def any_member(self, context) -> Caller:
        """Any admin, or a node still in the mesh."""
        caller = caller_of(context)
        if caller.kind == "anonymous":
            raise Unauthenticated("this call needs a mesh certificate (join first) or meshd's admin socket")
        if caller.kind == "node":
            await self.node_caller(context)
        return caller


def check_request_size(method: str, request) -> None:
    """Every method has a bound on its request (meshcore.limits.REQUEST_BYTES), checked before
    the servicer sees it; the transport caps everything at GRPC_MAX_REQUEST_BYTES before that."""
    size = request.ByteSize() if hasattr(request, "ByteSize") else 0
    limit = limits.request_limit(method)
    if size > limit:
        raise InvalidArgument(f"{method} request is {size} bytes: at most {limit} accepted")


async def _not_revoked(serial: str) -> bool:
    return False


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps MeshError to its gRPC status (message = the rule broken; a suggested wait before a
    retry as the `grpc-retry-pushback-ms` trailer), bounds every request's
    size per method, refuses revoked admin certificates (`revoked(serial)`), and records RPC
    metrics."""

    def __init__(self, revoked: Callable[[str], Awaitable[bool]] = _not_revoked) -> None:
        self._revoked = revoked

    async def _check_caller(self, context) -> None:
        if context.peer().startswith("unix:") or not (context.auth_context() or {}).get("x509_pem_cert"):
            return
        caller = caller_of(context)
        if caller.kind == "admin" and await self._revoked(caller.serial):
            raise Unauthenticated(f"admin certificate {caller.serial} ({caller.id}) was revoked: "
                                  "ask an administrator for a new one")

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request, context):
                request_id.set(new_request_id())  # in this RPC's own context: log lines carry it
                t0 = time.perf_counter()
                code = "OK"
                try:
                    check_request_size(method, request)
                    await self._check_caller(context)
                    return await inner(request, context)
                except MeshError as e:
                    code = e.code
                    await _abort(context, e)
                except Exception:
                    code = "INTERNAL" if code == "OK" else code
                    raise
                finally:
                    code = _code(context, code)
                    metrics.RPCS.labels(method, code).inc()
                    metrics.RPC_SECONDS.labels(method).observe(time.perf_counter() - t0)

            return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)
        if handler.unary_stream:
            inner_s = handler.unary_stream

            async def stream(request, context):
                request_id.set(new_request_id())
                code = "OK"
                try:
                    check_request_size(method, request)
                    await self._check_caller(context)
                    async for item in inner_s(request, context):
                        yield item
                except MeshError as e:
                    code = e.code
                    await _abort(context, e)
                finally:
                    metrics.RPCS.labels(method, _code(context, code)).inc()

            return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=handler.request_deserializer,
                                                        response_serializer=handler.response_serializer)
        if handler.stream_stream:
            # servicers read and write through the context (Tunnel); each checks its messages' size itself
            inner_b = handler.stream_stream

            async def bidi(request_iterator, context):
                request_id.set(new_request_id())
                code = "OK"
                try:
                    await self._check_caller(context)
                    await inner_b(request_iterator, context)
                except MeshError as e:
                    code = e.code
                    await _abort(context, e)
                finally:
                    metrics.RPCS.labels(method, _code(context, code)).inc()

            return grpc.stream_stream_rpc_method_handler(bidi, request_deserializer=handler.request_deserializer,
                                                         response_serializer=handler.response_serializer)
        return handler


async def _abort(context, e: MeshError) -> None:
    """End the RPC with the error's status and message; a suggested wait before a retry
    (ResourceExhausted.retry_pushback_ms) goes in the standard `grpc-retry-pushback-ms` trailer."""
    pushback = getattr(e, "retry_pushback_ms", None)
    trailers = ((RETRY_PUSHBACK_KEY, str(int(pushback))),) if pushback is not None else ()
    await context.abort(getattr(grpc.StatusCode, e.code, grpc.StatusCode.UNKNOWN), str(e), trailers)


def _code(context, fallback: str) -> str:
    try:
        c = context.code()
    except Exception:  # not set yet
        c = None
    return c.name if isinstance(c, grpc.StatusCode) else fallback
