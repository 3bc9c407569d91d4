"""Talking to Consul: configuration, the py-consul client, and error translation.

Model: one `ConsulConfig` says where Consul is and how to authenticate (ACL
token, TLS CA file, client certificate, verification). `ConsulAPI` wraps the
blocking py-consul client: every call runs in a worker thread
(`asyncio.to_thread`) so the event loop never waits on Consul, is counted
(`calls`, `writes`) for reports and benchmarks, and has its failures
translated into mesh errors with one clear line:

- 403 from Consul (bad or insufficient ACL token) -> PermissionDenied naming
  the token rule; retrying cannot fix it, so the message says what to change;
- connection refused, timeout, 5xx -> Unavailable (the SyncLoop retries);
- other 4xx -> InvalidArgument (a registration Consul refuses).

py-consul is imported lazily so meshd starts without it when sync is off.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from meshcore.errors import ConfigError, InvalidArgument, PermissionDenied, Unavailable


@dataclass
class ConsulConfig:
    """How to reach Consul. Mirrors the CONSUL_HTTP_* settings of Consul's own CLI."""

    # scheme://host:port of a Consul agent or server HTTP API.
    address: str = "http://127.0.0.1:8500"
    # ACL token sent as X-Consul-Token; needs node:write and service:write
    # on the mesh's node names (empty: anonymous, fine when ACLs are off).
    token: str = ""
    # CA bundle to verify Consul's certificate (https only; empty: system CAs).
    ca_file: str = ""
    # Client certificate and key for mutual TLS (verify_incoming on Consul).
    client_cert: str = ""
    client_key: str = ""
    # Verify Consul's certificate. Turn off only for a lab.
    verify: bool = True
    # Datacenter to register in (empty: the agent's own).
    datacenter: str = ""
    # Seconds to wait for one HTTP call before counting Consul as unreachable.
    timeout_s: float = 10.0
    # Follow our entries with a blocking query, so an entry deregistered or
    # re-tagged by hand is repaired at once rather than at the next resync.
    watch: bool = True
    # How long one blocking query may wait for a change (Consul's `wait`;
    # it caps it at 10 min). Also how long a closed target's watch may linger.
    watch_wait_s: int = 60

    def __post_init__(self) -> None:
        parts = urlsplit(self.address if "//" in self.address else "http://" + self.address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"invalid consul address {self.address!r}: must be http(s)://host:port")
        if bool(self.client_cert) != bool(self.client_key):
            raise ConfigError("invalid consul TLS options: client_cert and client_key must be given together")
        if self.timeout_s <= 0:
            raise ConfigError(f"invalid consul timeout_s {self.timeout_s}: must be positive")
        if not 1 <= self.watch_wait_s <= 600:
            raise ConfigError(f"invalid consul watch_wait_s {self.watch_wait_s}: must be 1-600 seconds")

    @property
    def scheme(self) -> str:
        return urlsplit(self.address if "//" in self.address else "http://" + self.address).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.address if "//" in self.address else "http://" + self.address).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.address if "//" in self.address else "http://" + self.address)
        return parts.port or (443 if parts.scheme == "https" else 8500)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


class ConsulAPI:
    """The few Consul calls the sync needs, off the event loop, counted and with clear errors."""

    def __init__(self, config: ConsulConfig) -> None:
        import consul  # lazily: optional dependency

        self.config = config
        verify: bool | str = (config.ca_file or True) if config.verify else False
        cert = (config.client_cert, config.client_key) if config.client_cert else None
        self._client = consul.Consul(host=config.host, port=config.port, scheme=config.scheme, verify=verify,
                                     cert=cert, dc=config.datacenter or None, connections_timeout=config.timeout_s)
        # py-consul prefers CONSUL_HTTP_TOKEN from the environment; the config is the one source of truth.
        self._client.token = config.token or None
        self.calls = 0
        self.writes = 0
        self.watch_calls = 0  # blocking queries, counted apart: they run outside reconciles

    async def _call(self, what: str, fn: Callable[[], Any], write: bool = False) -> Any:
        self.calls += 1
        try:
            result = await asyncio.to_thread(fn)
        except Exception as e:
            raise self._translate(what, e) from e
        if write:
            self.writes += 1
        return result

    def _translate(self, what: str, e: Exception) -> Exception:
        import consul
        import requests

        where = f"Consul at {self.config.address}"
        if isinstance(e, consul.ACLPermissionDenied):
            body = str(e).strip() or "permission denied"
            return PermissionDenied(
                f"{where} refused the ACL token ({body}) on {what}: the consul sync token must exist and "
                "grant node:write and service:write for the mesh's node names")
        if isinstance(e, consul.ACLDisabled):
            return PermissionDenied(f"{where} answered 401 on {what}: {e}")
        if isinstance(e, requests.exceptions.SSLError):
            return Unavailable(f"{where}: TLS failed on {what} (check consul ca_file, client_cert and "
                               f"client_key): {_first_line(e)}")
        if isinstance(e, (requests.ConnectionError, requests.Timeout)):
            return Unavailable(f"{where} is unreachable on {what}: {type(e).__name__}")
        if isinstance(e, (consul.BadRequest, consul.ClientError, consul.NotFound)):
            return InvalidArgument(f"{where} refused {what}: {e}")
        if isinstance(e, consul.ConsulException):
            return Unavailable(f"{where} failed {what}: {e}")
        return Unavailable(f"{where} failed {what}: {type(e).__name__}: {e}")

    # --- reads -------------------------------------------------------------------
    async def agent_self(self) -> dict[str, Any]:
        from consul.callback import CB

        # py-consul's agent.self() sends no token; go through its HTTP layer with one.
        headers = self._client.prepare_headers()
        return await self._call("agent self", lambda: self._client.http.get(CB.json(), "/v1/agent/self",
                                                                            headers=headers))

    async def nodes(self, node_meta: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
        return await self._call("list nodes", lambda: self._client.catalog.nodes(node_meta=node_meta))

    async def node(self, name: str) -> dict[str, Any] | None:
        _, data = await self._call(f"read node {name}", lambda: self._client.catalog.node(name))
        return data

    async def checks(self, node_meta: dict[str, str]) -> list[dict[str, Any]]:
        _, data = await self._call("list checks", lambda: self._client.health.state("any", node_meta=node_meta))
        return data or []

    async def service_tags(self, node_meta: dict[str, str]) -> dict[str, list[str]]:
        """Service name -> tags, over the nodes matching `node_meta` (one call)."""
        _, data = await self._call("list services", lambda: self._client.catalog.services(node_meta=node_meta))
        return data or {}

    def wait_for_change(self, node_meta: dict[str, str], index: str | None, wait_s: int) -> str:
        """Blocking (call from a thread): the catalog's X-Consul-Index once it passes
        `index` or `wait_s` elapses. Raises the same mesh errors as every other call."""
        self.watch_calls += 1
        try:
            new_index, _ = self._client.catalog.services(index=index, wait=f"{wait_s}s", node_meta=node_meta)
        except Exception as e:
            raise self._translate("watch services", e) from e
        return str(new_index)

    async def health_service(self, name: str, passing: bool) -> list[dict[str, Any]]:
        _, data = await self._call(f"read service {name}",
                                   lambda: self._client.health.service(name, passing=passing))
        return data or []

    # --- writes ------------------------------------------------------------------
    async def register(self, body: dict[str, Any]) -> None:
        # The catalog endpoint takes NodeMeta and a full Check in its body; py-consul's
        # register() helper cannot pass NodeMeta, so its HTTP layer is used directly.
        from consul.callback import CB

        if self.config.datacenter:
            body = {**body, "Datacenter": self.config.datacenter}
        data = json.dumps(body)
        headers = self._client.prepare_headers()
        name = body.get("Service", {}).get("Service") or body.get("Node")
        await self._call(f"register {name}", lambda: self._client.http.put(
            CB.boolean(), "/v1/catalog/register", data=data, headers=headers), write=True)

    async def deregister(self, node: str, service_id: str | None = None) -> None:
        what = f"deregister {service_id or 'node ' + node}"
        await self._call(what, lambda: self._client.catalog.deregister(node, service_id=service_id), write=True)

    def close(self) -> None:
        self._client.http.session.close()
