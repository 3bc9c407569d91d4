"""A local double of the EC2 instance metadata service, IMDSv2 only.

Written from AWS's documented behaviour ("Use the Instance Metadata Service
to access instance metadata", "Spot Instance interruption notices"):

- PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds (1-21600)
  returns a session token; a missing or out-of-range TTL is 400; a request
  carrying X-Forwarded-For is refused with 403 (IMDS refuses proxied calls).
- Every GET needs X-aws-ec2-metadata-token; missing, unknown or expired is 401
  (the instance is configured with HttpTokens=required).
- /latest/meta-data/instance-life-cycle: "spot" or "on-demand".
- /latest/meta-data/spot/instance-action: 404 until a notice is posted, then
  {"action": "terminate"|"stop"|"hibernate", "time": "YYYY-MM-DDTHH:MM:SSZ"}.

Switches for tests: `post_notice`, `clear_notice`, `fail_next(status, n)`,
`expire_tokens`. It listens on 127.0.0.1 port 0 in a thread.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ImdsDouble:
    def __init__(self, lifecycle: str = "spot", clock: Callable[[], float] = time.monotonic) -> None:
        self.lifecycle = lifecycle
        self.clock = clock
        self.notice: dict | None = None
        self.tokens: dict[str, float] = {}  # token -> expiry on `clock`
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._fail: list[int] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- switches ------------------------------------------------------------

    def post_notice(self, action: str = "terminate", when: str = "2026-11-23T18:00:00Z") -> None:
        self.notice = {"action": action, "time": when}

    def clear_notice(self) -> None:
        self.notice = None

    def fail_next(self, status: int = 500, n: int = 1) -> None:
        with self._lock:
            self._fail += [status] * n

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    # -- life cycle ------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ImdsDouble:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="imds-double")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> ImdsDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- HTTP ----------------------------------------------------------------------

    def _answer(self, method: str, path: str, headers) -> tuple[int, bytes, dict[str, str]]:
        with self._lock:
            if self._fail:
                return self._fail.pop(0), b"", {}
        if headers.get("X-Forwarded-For"):
            return 403, b"", {}
        if method == "PUT":
            if path != "/latest/api/token":
                return 405, b"", {}
            try:
                ttl = int(headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
            except ValueError:
                return 400, b"", {}
            if not 1 <= ttl <= 21600:
                return 400, b"", {}
            token = secrets.token_urlsafe(32)
            with self._lock:
                self.tokens[token] = self.clock() + ttl
            return 200, token.encode(), {"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)}
        if method != "GET":
            return 405, b"", {}
        token = headers.get("X-aws-ec2-metadata-token", "")
        with self._lock:
            expiry = self.tokens.get(token)
        if expiry is None or expiry <= self.clock():
            return 401, b"", {}
        if path == "/latest/meta-data/instance-life-cycle":
            return 200, self.lifecycle.encode(), {}
        if path == "/latest/meta-data/spot/instance-action":
            notice = self.notice
            return (404, b"", {}) if notice is None else (200, json.dumps(notice).encode(), {})
        return 404, b"", {}

    def _handler(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                status, body, extra = double._answer(method, self.path, self.headers)
                with double._lock:
                    double.requests.append((method, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        return Handler
