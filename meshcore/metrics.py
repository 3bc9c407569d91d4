"""Serving Prometheus metrics on a local address ("host:port", port 0 for any)."""

from __future__ import annotations

from meshcore.errors import ConfigError
from meshcore.names import parse_hostport


def split_hostport(addr: str, what: str) -> tuple[str, int]:
    """A listen address: port 0 picks a free port, an empty host means every address."""
    return parse_hostport(addr, what, allow_zero=True, default_host="0.0.0.0", error=ConfigError)


def serve_metrics(addr: str) -> int:
    """Start the exporter thread; returns the bound port."""
    from prometheus_client import start_http_server

    host, port = split_hostport(addr, "metrics address")
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as e:
        raise ConfigError(f"cannot serve metrics on {addr}: {e}") from e
    return server.server_port
