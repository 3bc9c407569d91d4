"""The agent's live copy of the catalog and the node list, and what DNS answers from it.

Fed by meshd's watch streams. Events are applied in revision order; RESET
starts a fresh copy that replaces the old one only at SYNCED, so lookups
never see a half-loaded catalog. `revision` is what the agent resumes from
after a reconnect.

Lookup policy (`Catalog.lookup`, the DNS responder's callback):
- a service failing its health check (CRITICAL) is left out, as Consul's DNS
  leaves out critical instances;
- with gossip (`Catalog.peers`), a service of a node its peers declared dead
  or departed is left out: a crashed node's names go within the
  failure-detection bound, with or without meshd;
- before the first SYNCED from meshd (it is away since this agent started),
  names come from what peers passed on by push-pull.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from mesh.v1 import types_pb2
from meshagent.dns import Target

PROTO = {types_pb2.PROTOCOL_UDP: "udp"}


class View:
    """Objects keyed by a field (name for services, id for nodes) at a revision."""

    def __init__(self, key: Callable[[object], str]) -> None:
        self._key = key
        self.items: dict[str, object] = {}
        self.revision = 0
        #: meshd's store identity the copy came from ("<id>/<epoch>"; meshd/storeid.py)
        self.store = ""
        self.synced = False
        self._staging: dict[str, object] | None = None
        self.listeners: list[Callable[[], None]] = []

    def apply(self, event_type: int, obj, revision: int) -> None:
        if event_type == types_pb2.EVENT_TYPE_RESET:
            self._staging = {}
            return
        if event_type == types_pb2.EVENT_TYPE_SYNCED:
            if self._staging is not None:
                # a fresh copy: its revision is the store's, even below ours (a restored store)
                self.items, self._staging = self._staging, None
                self.revision = revision
            self.revision = max(self.revision, revision)
            self.synced = True
            self._changed()
            return
        target = self._staging if self._staging is not None else self.items
        if event_type == types_pb2.EVENT_TYPE_PUT:
            target[self._key(obj)] = obj
        elif event_type == types_pb2.EVENT_TYPE_DELETE:
            target.pop(self._key(obj), None)
        if self._staging is None:
            self.revision = max(self.revision, revision)
            self._changed()

    def reset_revision(self) -> None:
        """Forget the revision (meshd's store was replaced): the next watch starts from a full copy."""
        self.revision = 0

    def _changed(self) -> None:
        for fn in self.listeners:
            fn()


def strip_zone(name: str, namespace: str = "default") -> str:
    """'qwen.mesh' / 'qwen.default.svc.cluster.local' / 'qwen' -> 'qwen'."""
    n = name.rstrip(".").lower()
    for suffix in (".mesh", f".{namespace}.svc.cluster.local"):
        if n.endswith(suffix):
            return n[: -len(suffix)]
    return n


class Peers(Protocol):
    """What gossip tells the lookup policy (meshagent.gossip.AgentGossip)."""

    def services(self) -> dict[str, types_pb2.Service]:
        """Live services from signed records peers passed on."""

    def down(self) -> set[str]:
        """Ids of nodes declared dead or departed."""


class Catalog:
    def __init__(self, peers: Peers | None = None) -> None:
        self.services = View(lambda s: s.name)
        self.nodes = View(lambda n: n.id)
        self.peers = peers

    def lookup(self, name: str) -> list[Target]:
        """DNS lookup callback: the targets of a service name, by the policy in the module docstring."""
        svc = self.services.items.get(name)
        if svc is not None and svc.health_state == types_pb2.HEALTH_STATE_CRITICAL:
            return []
        if self.peers is not None:
            if not self.services.synced:
                svc = self.peers.services().get(name)
            elif svc is not None and svc.node_id in self.peers.down():
                return []
        if svc is None or svc.health_state == types_pb2.HEALTH_STATE_CRITICAL:
            return []
        return self.targets(svc)

    @staticmethod
    def targets(svc: types_pb2.Service) -> list[Target]:
        return [Target(svc.address, svc.port, PROTO.get(svc.protocol, "tcp"), svc.node_name)]
