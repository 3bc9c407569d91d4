"""Consul to mesh: named Consul services as records the mesh DNS can serve.

Model: the reverse of ConsulTarget, and deliberately narrow. Only the
Consul services listed in `ConsulImportConfig.services` are read (never the
whole catalog), through /v1/health/service/<name>?passing so only healthy
instances are answered, as Consul's own DNS does. Entries the mesh itself
registered (service meta managed-by=mesh) are skipped, so a name never loops
back. Each instance becomes a `ConsulRecord` (the name, an address, a port);
the agent DNS answers `<name>.<domain>` with the addresses of a name.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from meshcore.names import check_name
from meshd.sync.base import MANAGED_BY
from meshd.sync.consul_client import ConsulAPI, ConsulConfig


@dataclass
class ConsulImportConfig:
    """Which Consul services to make resolvable through the mesh."""

    # Consul service names to import (each must be a valid mesh name, RFC 1123 label).
    services: list[str] = field(default_factory=list)
    # Answer only instances whose checks all pass.
    passing_only: bool = True

    def __post_init__(self) -> None:
        for name in self.services:
            check_name(name, "Consul service name to import")


@dataclass(frozen=True)
class ConsulRecord:
    name: str
    address: str
    port: int
    node: str


async def list_consul_records(api: ConsulAPI | ConsulConfig, config: ConsulImportConfig) -> list[ConsulRecord]:
    """The instances of the configured Consul services, as (name, address, port) records."""
    if isinstance(api, ConsulConfig):
        api = ConsulAPI(api)
    out: list[ConsulRecord] = []
    for name in config.services:
        for entry in await api.health_service(name, passing=config.passing_only):
            svc, node = entry.get("Service") or {}, entry.get("Node") or {}
            if (svc.get("Meta") or {}).get("managed-by") == MANAGED_BY:
                continue  # our own registration: already in the mesh catalog
            # A service address overrides its node's, as in Consul's DNS.
            address = svc.get("Address") or node.get("Address") or ""
            try:
                ipaddress.ip_address(address)
            except ValueError:
                continue  # a host name is not an A/AAAA record; skip rather than guess
            out.append(ConsulRecord(name, address, int(svc.get("Port") or 0), node.get("Node", "")))
    return sorted(out, key=lambda r: (r.name, r.address, r.port))
