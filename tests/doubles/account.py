"""A small AWS Account API endpoint (region opt-in), which moto does not implement.

From the AWS Account Management API reference (REST-JSON): `POST /enableRegion`
and `POST /getRegionOptStatus`, bodies `{"RegionName": ...}`. A region's
status is one of ENABLED, ENABLING, DISABLING, DISABLED, ENABLED_BY_DEFAULT;
enabling a region that is not DISABLED is a ConflictException, an unknown
region a ValidationException. Errors carry the `x-amzn-ErrorType` header and
a `{"message": ...}` body. A real HTTP server on 127.0.0.1, port 0, in a thread.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class AccountDouble:
    def __init__(self, statuses: dict[str, str]) -> None:
        self.statuses = dict(statuses)
        self.calls: list[tuple[str, str]] = []  # (operation, region name)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
        region = body.get("RegionName", "")
        if region not in self.statuses:
            return 400, {"message": f"Invalid region {region!r}"}, "ValidationException"
        if path == "/getRegionOptStatus":
            self.calls.append(("GetRegionOptStatus", region))
            return 200, {"RegionName": region, "RegionOptStatus": self.statuses[region]}, None
        if path == "/enableRegion":
            self.calls.append(("EnableRegion", region))
            if self.statuses[region] != "DISABLED":
                return 409, {"message": f"Region {region} is {self.statuses[region]}"}, "ConflictException"
            self.statuses[region] = "ENABLING"
            return 200, {}, None
        return 404, {"message": f"unknown path {path}"}, "ResourceNotFoundException"

    def start(self) -> "AccountDouble":
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                status, payload, error = double._handle(self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if error:
                    self.send_header("x-amzn-ErrorType", error)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="account-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
