"""Serving Prometheus metrics on a local address ("host:port", port 0 for any)."""

from __future__ import annotations

from meshcore.errors import ConfigError


def split_hostport(addr: str, what: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"invalid {what} {addr!r}: expected host:port with a port of 0-65535")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve_metrics(addr: str) -> int:
    """Start the exporter thread; returns the bound port."""
    from prometheus_client import start_http_server

    host, port = split_hostport(addr, "metrics address")
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as e:
        raise ConfigError(f"cannot serve metrics on {addr}: {e}") from e
    return server.server_port
