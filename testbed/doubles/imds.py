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
`expire_tokens`. Served by testbed/doubles/httpdouble.py (127.0.0.1, port 0).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable

from testbed.doubles.httpdouble import HTTPDouble, Reply, Request


class ImdsDouble(HTTPDouble):
    def __init__(self, lifecycle: str = "spot", clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.lifecycle = lifecycle
        self.clock = clock
        self.notice: dict | None = None
        self.tokens: dict[str, float] = {}  # token -> expiry on `clock`
        self._lock = threading.Lock()

    # -- switches ------------------------------------------------------------

    def post_notice(self, action: str = "terminate", when: str = "2026-11-23T18:00:00Z") -> None:
        self.notice = {"action": action, "time": when}

    def clear_notice(self) -> None:
        self.notice = None

    def fail_next(self, status: int = 500, n: int = 1) -> None:
        self.faults.fail_next(n, status)

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """Every request served, as (method, path, status)."""
        return self.log

    # -- HTTP ----------------------------------------------------------------------

    def route(self, req: Request) -> Reply:
        status, body, extra = self._answer(req.method, req.path, req.headers)
        return Reply(status, body, {"Content-Type": "text/plain", **extra})

    def fault_reply(self, req: Request, status: int) -> Reply:
        return Reply(status, b"", {"Content-Type": "text/plain"})

    def _answer(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        if headers.get("x-forwarded-for"):
            return 403, b"", {}
        if method == "PUT":
            if path != "/latest/api/token":
                return 405, b"", {}
            try:
                ttl = int(headers.get("x-aws-ec2-metadata-token-ttl-seconds", ""))
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
        token = headers.get("x-aws-ec2-metadata-token", "")
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
