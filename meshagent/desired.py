"""This node's own services: what it exposed, kept on disk, re-asserted when the catalog lacks them.

Anti-entropy: every service exposed through this agent is remembered in
state_dir/services.json (0600) and forgotten when it is unexposed. Whenever
the services watch reaches SYNCED, and after every lease renewal while the
copy is in sync, `reassert()` exposes again each one the catalog lacks or
holds differently: meshd restarted on an old backup, or removed the services
while it judged the node unreachable (a lost renewal, a clock step) though
the agent never disconnected. meshd stays the judge:
a name another node now holds is logged, not fought over.

A service with a health check is exposed with its last checked state, or
CRITICAL before its first check, so it stays out of DNS until it passes (as
Consul does with a new check). After a spot notice (`uplink.left`) nothing is
exposed again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import json_format

from mesh.v1 import types_pb2
from meshagent.uplink import Uplink
from meshagent.view import Catalog
from meshcore import pki
from meshcore.errors import StateError

log = logging.getLogger("meshagent")
#: answers after which exposing the same service again cannot help
REFUSED = {grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
           grpc.StatusCode.FAILED_PRECONDITION}


class Desired:
    def __init__(self, state_dir: Path, catalog: Catalog, uplink: Uplink,
                 health_states: Callable[[], dict[str, int]] = dict) -> None:
        self.path = Path(state_dir) / "services.json"
        self.catalog = catalog
        self.uplink = uplink
        # Last check result per service name (the health checker's); read at each expose.
        self.health_states = health_states
        self.services: dict[str, types_pb2.Service] = {}
        self._refused: dict[str, str] = {}  # service name -> the refusal last logged

    def load(self) -> None:
        if not self.path.exists():
            return
        try:
            items = json.loads(self.path.read_text())
            self.services = {d["name"]: json_format.ParseDict(d, types_pb2.Service()) for d in items}
        except (OSError, ValueError, KeyError, json_format.ParseError) as e:
            raise StateError(f"{self.path} is unreadable ({e}): fix or remove it, "
                             f"then expose the services again") from e

    def _save(self) -> None:
        data = [json_format.MessageToDict(s) for s in self.services.values()]
        pki.write_file(self.path, json.dumps(data, indent=2).encode(), private=True)

    def remember(self, svc: types_pb2.Service) -> None:
        want = types_pb2.Service(name=svc.name, port=svc.port, protocol=svc.protocol, tags=svc.tags)
        want.health.CopyFrom(svc.health)
        self.services[svc.name] = want
        self._save()

    def forget(self, name: str) -> None:
        if self.services.pop(name, None) is not None:
            self._save()

    def health_state(self, name: str) -> int:
        """The state to expose a checked service with: its last result, CRITICAL before the first."""
        return self.health_states().get(name, types_pb2.HEALTH_STATE_CRITICAL)

    async def report_health(self, svc: types_pb2.Service, state: int) -> None:
        """Expose `svc` again with a new check result (the health checker's report)."""
        if self.uplink.left:
            return
        report = types_pb2.Service()
        report.CopyFrom(svc)
        report.health_state = state
        await self.uplink.expose(report)

    def _held(self, want: types_pb2.Service, node_id: str) -> bool:
        have = self.catalog.services.items.get(want.name)
        return (have is not None and have.node_id == node_id and have.port == want.port
                and have.protocol == (want.protocol or types_pb2.PROTOCOL_TCP) and have.health == want.health)

    async def reassert(self, node_id: str) -> None:
        """Expose again every desired service the catalog lacks or holds differently."""
        if self.uplink.left:
            return
        for name, want in list(self.services.items()):
            if self._held(want, node_id):
                continue
            again = types_pb2.Service()
            again.CopyFrom(want)
            if want.health.WhichOneof("kind"):
                again.health_state = self.health_state(name)
            try:
                await self.uplink.expose(again)
                log.info("re-asserted service %s", name)
            except grpc.aio.AioRpcError as e:
                if e.code() in REFUSED:  # meshd is the judge: said once per refusal, not fought over
                    if self._refused.get(name) != e.details():
                        log.error("cannot re-assert service %s: %s", name, e.details())
                        self._refused[name] = e.details()
                else:
                    raise
