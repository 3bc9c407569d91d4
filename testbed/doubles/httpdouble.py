"""A tiny threaded HTTP server base for vendor API doubles, with fault injection.

Model: a double is a real HTTP/1.1 server on 127.0.0.1, port 0, served from a
background thread (stdlib `ThreadingHTTPServer`), so the code under test talks
to it through its ordinary client library exactly as it would to the vendor.
A subclass provides `route(req) -> Reply`; this module owns the socket, the
request log and the faults:

- `faults.fail_next(n, status)`: the next `n` API calls answer `status`
  (500, 409, 503...) without touching state;
- `faults.latency_s`: every API call waits this long before it is served;
- `faults.unreachable = True`: every API call has its connection dropped
  without an answer, as a crashed or partitioned server would.

Discovery and health paths can be exempted (`EXEMPT`), so faults hit only the
calls a sync loop makes. `calls` counts API calls by method; `writes` counts
the ones that changed state.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Faults:
    """Faults applied to every API call the double serves."""

    latency_s: float = 0.0
    unreachable: bool = False
    _fail: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self._fail.extend([status] * n)

    def clear(self) -> None:
        with self._lock:
            self._fail.clear()
        self.latency_s = 0.0
        self.unreachable = False

    @property
    def pending(self) -> int:
        """Injected failures not served yet."""
        with self._lock:
            return len(self._fail)

    def take_failure(self) -> int | None:
        with self._lock:
            return self._fail.pop(0) if self._fail else None


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    # Every query pair in order, for parameters that may repeat.
    query_list: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # A stream of already-encoded chunks (Kubernetes watch); sent chunked.
    stream: Iterator[bytes] | None = None


class HTTPDouble:
    """Base class: start(), stop(), url, faults, calls, writes."""

    EXEMPT: tuple[str, ...] = ()
    WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")

    def __init__(self) -> None:
        # Set before start() to listen elsewhere: a lab namespace's 169.254.169.254:80, say.
        self.bind: tuple[str, int] = ("127.0.0.1", 0)
        # Set before start() to serve HTTPS: (certfile, keyfile) and, for mutual TLS,
        # a CA file that client certificates must chain to.
        self.tls: tuple[str, str] | None = None
        self.tls_client_ca: str | None = None
        self.faults = Faults()
        self.calls: dict[str, int] = {}
        self.writes = 0
        self.log: list[tuple[str, str, int]] = []
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.closing = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- to be provided by subclasses -------------------------------------
    def route(self, req: Request) -> Reply:  # pragma: no cover - abstract
        raise NotImplementedError

    def is_write(self, req: Request, reply: Reply) -> bool:
        return req.method in self.WRITE_METHODS and reply.status < 300

    # --- lifecycle ---------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "double not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.bind[0]}:{self.port}"

    def start(self) -> "HTTPDouble":
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's
            # algorithm and the client's delayed ACK add ~40 ms to every keep-alive call.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _serve(self) -> None:
                double._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self._server = _QuietServer(self.bind, Handler)
        self._server.daemon_threads = True
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            if self.tls_client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(self.tls_client_ca)
            # Handshake in the handler thread (not in accept), so one bad client cannot stall the server.
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True,
                                                  do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "HTTPDouble":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def reset_counters(self) -> None:
        with self.lock:
            self.calls.clear()
            self.writes = 0
            self.log.clear()

    def total_calls(self) -> int:
        with self.lock:
            return sum(self.calls.values())

    # --- request handling ---------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        req = Request(h.command, parts.path, dict(pairs), {k.lower(): v for k, v in h.headers.items()}, body, pairs)
        exempt = self.is_exempt(req.path)
        if not exempt:
            if self.faults.latency_s:
                time.sleep(self.faults.latency_s)
            if self.faults.unreachable:
                h.close_connection = True
                try:
                    h.connection.shutdown(2)
                except OSError:
                    pass
                return
            status = self.faults.take_failure()
            if status is not None:
                reply = self.fault_reply(req, status)
                self._record(req, reply, counted=True)
                self._send(h, reply)
                return
        try:
            reply = self.route(req)
        except Exception as e:  # a bug in the double must show, not hang the client
            reply = Reply(500, {"error": f"double failed: {type(e).__name__}: {e}"})
        self._record(req, reply, counted=not exempt)
        self._send(h, reply)

    def is_exempt(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.EXEMPT)

    def fault_reply(self, req: Request, status: int) -> Reply:
        return Reply(status, {"error": f"injected fault {status}"})

    def _record(self, req: Request, reply: Reply, counted: bool) -> None:
        with self.lock:
            self.log.append((req.method, req.path, reply.status))
            if counted:
                self.calls[req.method] = self.calls.get(req.method, 0) + 1
                if self.is_write(req, reply):
                    self.writes += 1

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, reply: Reply) -> None:
        try:
            h.send_response(reply.status)
            for k, v in reply.headers.items():
                h.send_header(k, v)
            if reply.stream is not None:
                h.send_header("Content-Type", "application/json")
                h.send_header("Transfer-Encoding", "chunked")
                h.end_headers()
                for chunk in reply.stream:
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    h.wfile.flush()
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()
                return
            data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            if "Content-Type" not in reply.headers:
                h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up or fails the TLS handshake is the test's business, not stderr's


class AWSError(Exception):
    """An AWS error reply: `kind` becomes `__type`, as the service names it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


class JSON11Double(HTTPDouble):
    """An AWS service on the JSON 1.1 protocol: POST / with `X-Amz-Target: <TARGET_PREFIX><Operation>`
    and a JSON body, answered by the subclass's `_op_<Operation>`; errors come back as 400 with
    `{"__type": kind, <MESSAGE_KEY>: message}`, a malformed request as BAD_REQUEST. `operate`
    calls one operation under the double's lock (a subclass logs and passes what its operations
    take)."""

    TARGET_PREFIX = ""
    MESSAGE_KEY = "message"  # services differ: "Message" in some, "message" in others
    BAD_REQUEST = "ValidationException"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def operate(self, op: str, handler: Any, req: Request, body: dict[str, Any]) -> dict[str, Any]:
        return handler(body)

    def route(self, req: Request) -> Reply:
        target = req.headers.get("x-amz-target", "")
        try:
            if not target.startswith(self.TARGET_PREFIX):
                raise AWSError("UnknownOperationException", f"unknown target {target!r}")
            op = target[len(self.TARGET_PREFIX):]
            handler = getattr(self, "_op_" + op, None)
            if handler is None:
                raise AWSError("UnknownOperationException", f"operation {op} is not implemented")
            body = json.loads(req.body or b"{}")
            with self._lock:
                status, payload = 200, self.operate(op, handler, req, body)
        except AWSError as e:
            status, payload = 400, {"__type": e.kind, self.MESSAGE_KEY: e.message}
        except (ValueError, KeyError, TypeError) as e:
            status, payload = 400, {"__type": self.BAD_REQUEST, self.MESSAGE_KEY: f"bad request: {e}"}
        return Reply(status, payload, {"Content-Type": "application/x-amz-json-1.1",
                                       "x-amzn-RequestId": str(uuid.uuid4())})
