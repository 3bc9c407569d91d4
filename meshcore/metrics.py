"""Serving Prometheus metrics on a local address ("host:port", port 0 for any).

Every metric of the mesh is named `mesh_...` with its unit in the name and
`_total` on counters (docs/metrics.md lists them). Both daemons export
`mesh_build_info{component, version, python}` = 1. The HTTP server answers
`/metrics` and, on meshd, `/v1/http_sd`: Prometheus HTTP service discovery
(a JSON list of target groups) built per request by a callback.
"""

from __future__ import annotations

import json
import platform
import threading
from collections.abc import Callable

from meshcore import __version__
from meshcore.errors import ConfigError
from meshcore.names import parse_hostport

HTTP_SD_PATH = "/v1/http_sd"
#: http_sd(host the request was sent to) -> target groups
HttpSd = Callable[[str], list[dict]]


def split_hostport(addr: str, what: str) -> tuple[str, int]:
    """A listen address: port 0 picks a free port, an empty host means every address."""
    return parse_hostport(addr, what, allow_zero=True, default_host="0.0.0.0", error=ConfigError)


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "[::]")


_build_info_done: set[str] = set()


def build_info(component: str) -> None:
    """Export mesh_build_info for this process (once per component)."""
    if component in _build_info_done:
        return
    from prometheus_client import Gauge
    g = Gauge("mesh_build_info", "Build of the running daemon: always 1", ["component", "version", "python"])
    g.labels(component, __version__, platform.python_version()).set(1)
    _build_info_done.add(component)


class _Exporter:
    """The answers; mixed into http.server's request handler when serving starts (a daemon
    with metrics off never imports http.server)."""
    http_sd: HttpSd | None = None

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path in ("/metrics", "/"):
            from prometheus_client import REGISTRY, exposition
            encoder, ctype = exposition.choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, ctype, encoder(REGISTRY))
        elif path == HTTP_SD_PATH and self.http_sd is not None:
            try:
                groups = self.http_sd(self.headers.get("Host", ""))
            except Exception as e:  # an answer Prometheus can show, not a dropped connection
                self._reply(503, "text/plain; charset=utf-8", f"service discovery failed: {e}\n".encode())
                return
            self._reply(200, "application/json", json.dumps(groups).encode())
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found: /metrics"
                        + (f" and {HTTP_SD_PATH}".encode() if self.http_sd else b"") + b"\n")

    def _reply(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # scrapes every few seconds are not news
        pass


def serve_metrics(addr: str, http_sd: HttpSd | None = None) -> int:
    """Start the exporter thread; returns the bound port."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    host, port = split_hostport(addr, "metrics address")
    handler = type("Handler", (_Exporter, BaseHTTPRequestHandler),
                   {"http_sd": staticmethod(http_sd) if http_sd else None})
    server_class = ThreadingHTTPServer
    if ":" in host:
        import socket
        server_class = type("Server6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    try:
        server = server_class((host.strip("[]"), port), handler)
    except OSError as e:
        raise ConfigError(f"cannot serve metrics on {addr}: {e}") from e
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server.server_address[1]
