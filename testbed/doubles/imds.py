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
- any other /latest/meta-data/<path> from `meta` (path -> text), e.g.
  `instance-type`, `local-ipv4`, `mac`, `network/interfaces/macs/<mac>/vpc-id`;
  `aws_instance(...)` builds the set an instance in a VPC has. A path not in
  it is 404 (as public-ipv4 is for an instance without a public address).
- `imdsv1_only`: the token call is unknown (405) and GETs need no token, as
  on a metadata service that predates IMDSv2.

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
    def __init__(self, lifecycle: str = "spot", clock: Callable[[], float] = time.monotonic,
                 meta: dict[str, str] | None = None, imdsv1_only: bool = False) -> None:
        super().__init__()
        self.lifecycle = lifecycle
        self.meta = dict(meta or {})
        self.imdsv1_only = imdsv1_only
        #: answer the token call with this status instead of a token (None: a token)
        self.token_status: int | None = None
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
            if path != "/latest/api/token" or self.imdsv1_only:
                return 405, b"", {}
            if self.token_status is not None:
                return self.token_status, b"", {}
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
        if (expiry is None or expiry <= self.clock()) and not self.imdsv1_only:
            return 401, b"", {}
        if path == "/latest/meta-data/instance-life-cycle":
            return 200, self.lifecycle.encode(), {}
        if path == "/latest/meta-data/spot/instance-action":
            notice = self.notice
            return (404, b"", {}) if notice is None else (200, json.dumps(notice).encode(), {})
        value = self.meta.get(path.removeprefix("/latest/meta-data/")) if path.startswith("/latest/meta-data/") else None
        return (404, b"", {}) if value is None else (200, value.encode(), {})


def aws_instance(private: str, vpc_id: str, vpc_cidr: str, *, region: str = "us-east-1", zone: str = "",
                 instance_type: str = "g6.xlarge", public: str = "", instance_id: str = "i-0123456789abcdef0",
                 subnet_id: str = "subnet-0123abcd", mac: str = "0e:00:00:00:00:01") -> dict[str, str]:
    """The meta-data paths of an EC2 instance in a VPC (for ImdsDouble(meta=...); its life cycle is
    ImdsDouble's own `lifecycle`)."""
    iface = f"network/interfaces/macs/{mac}/"
    meta = {"instance-id": instance_id, "instance-type": instance_type, "placement/region": region,
            "placement/availability-zone": zone or f"{region}a", "local-ipv4": private, "mac": mac, iface + "vpc-id": vpc_id, iface + "vpc-ipv4-cidr-blocks": vpc_cidr,
            iface + "subnet-id": subnet_id}
    if public:
        meta["public-ipv4"] = public
    return meta
