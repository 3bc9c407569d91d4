"""The agent's gossip: SWIM membership and signed catalog records among agents.

Why: with meshd as the only source, its loss stops failure detection and a
new node could learn nothing. With gossip:
- every catalog change the agent receives from meshd carries meshd's
  signature; the agent passes the record on, and peers accept it only if the
  signature verifies (no node can forge another node's service);
- a node that crashes is declared dead by its peers (SWIM + Lifeguard) and
  its services leave every agent's DNS within the failure-detection bound,
  with or without meshd;
- a node that starts while meshd is away learns the catalog from any peer by
  push-pull.

The keyring and meshd's catalog keys arrive over mTLS (Join, Renew) and are
kept in the state directory (gossip.json, 0600) for restarts; a rotation is
applied in place: install, switch primary, retire (no restart). A record is
accepted only if signed by a catalog key meshd handed out that has not
retired, before its expiry; a refused one is counted by reason
(mesh_agent_gossip_records_refused_total) and logged, and the stream goes
on. Renewals bring our own services signed again, which we pass on.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from mesh.v1 import admission_pb2, types_pb2
from meshagent import metrics
from meshcore import limits, pki
from meshcore.clock import SYSTEM, Clock
from meshcore.errors import InvalidArgument, PeerError, StateError
from meshcore.gossip.adapter import GossipNode, decode_facts
from meshcore.gossip.codec import decode_message
from meshcore.gossip.keyring import Keyring
from meshcore.gossip.messages import Record, State
from meshcore.gossip.profiles import GossipProfile
from meshcore.gossip.codec import KEY_ID_BYTES
from meshcore.gossip.records import CatalogVerifier
from meshcore.gossip.swim import MemberEvent

log = logging.getLogger("meshagent.gossip")
DOWN = (State.DEAD, State.LEFT)
# Membership changes as this agent sees them, one line each (as Serf logs its member events):
# the way to follow a failure across the mesh from the agents' logs. Joins only at debug level
# (every agent logs every join).
_MEMBER_LOG = {"join": logging.DEBUG, "suspect": logging.INFO, "alive": logging.INFO,
               "dead": logging.INFO, "left": logging.INFO}
_MEMBER_SAYS = {"join": "joined", "suspect": "is suspect (no ack to a probe)", "alive": "is alive again",
                "dead": "failed (its suspicion ran out): its services leave DNS", "left": "left the mesh"}


def save_config(path: Path, cfg: admission_pb2.GossipConfig) -> None:
    data = {"keys": [k.hex() for k in cfg.keys], "catalog_public_key": cfg.catalog_public_key.hex(),
            "catalog_keys": [{"id": k.id, "public_key": k.public_key.hex(), "signs_from": k.signs_from,
                              "retires_at": k.retires_at} for k in cfg.catalog_keys]}
    pki.write_file(path, json.dumps(data).encode(), private=True)


def load_config(path: Path) -> admission_pb2.GossipConfig | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return admission_pb2.GossipConfig(
            keys=[bytes.fromhex(k) for k in data["keys"]], catalog_public_key=bytes.fromhex(data["catalog_public_key"]),
            catalog_keys=[admission_pb2.CatalogKey(id=k["id"], public_key=bytes.fromhex(k["public_key"]),
                                                   signs_from=k["signs_from"], retires_at=k["retires_at"])
                          for k in data.get("catalog_keys", [])])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StateError(f"{path} is unreadable ({e}): remove it; the agent gets the keyring again from meshd") from e


def catalog_keys(cfg: admission_pb2.GossipConfig) -> dict[str, tuple[bytes, int]]:
    """The catalog keys meshd handed out, bounded at the door: at most limits.MAX_CATALOG_KEYS,
    each an 8-character id and a 32-byte Ed25519 key (others are skipped, with a log line)."""
    out: dict[str, tuple[bytes, int]] = {}
    for k in cfg.catalog_keys[:limits.MAX_CATALOG_KEYS]:
        if len(k.id) != KEY_ID_BYTES or len(k.public_key) != 32 or k.retires_at < 0:
            log.warning("catalog key %r from meshd skipped: an id of %d characters and a 32-byte key expected",
                        k.id[:16], KEY_ID_BYTES)
            continue
        out[k.id] = (bytes(k.public_key), int(k.retires_at))
    if len(cfg.catalog_keys) > limits.MAX_CATALOG_KEYS:
        log.warning("meshd handed out %d catalog keys: the first %d kept", len(cfg.catalog_keys),
                    limits.MAX_CATALOG_KEYS)
    return out


def decode_record(raw: bytes) -> Record:
    msg = decode_message(bytes([Record.TYPE]) + raw)
    if not isinstance(msg, Record):
        raise PeerError("not a catalog record")
    return msg


class AgentGossip:
    def __init__(self, node_id: str, name: str, host: str, port: int, advertise: str,
                 cfg: admission_pb2.GossipConfig, facts: dict, profile: GossipProfile | None = None,
                 rng: random.Random | None = None, clock: Clock = SYSTEM, identity=None) -> None:
        self.cfg = cfg
        self._refusals_logged: dict[str, float] = {}
        self._monotonic = clock.monotonic
        self._verify = CatalogVerifier(clock.wall, self._refused)
        self._verify.update(catalog_keys(cfg), cfg.catalog_public_key)
        keys = list(cfg.keys)
        self.keyring = Keyring(keys[0], keys[1:])
        self.node = GossipNode(node_id, name, host, port, profile=profile, keyring=self.keyring,
                               verify_record=self._verify, facts=facts, advertise_host=advertise, clock=clock,
                               rng=rng, **_membership_proofs(identity, clock))
        self.rng = rng or random.Random()
        self.listeners: list = []
        self.node.on_event(self._event)

    async def start(self) -> int:
        await self.node.start()
        return self.node.port

    async def stop(self, leave: bool = False) -> None:
        await self.node.stop(leave=leave)

    def _event(self, ev) -> None:
        if isinstance(ev, MemberEvent) and ev.kind in _MEMBER_LOG:
            m = ev.member
            log.log(_MEMBER_LOG[ev.kind], "member %s (%s, incarnation %d) %s", m.name, m.node, m.incarnation,
                    _MEMBER_SAYS[ev.kind])
        for fn in self.listeners:
            fn()

    # -- membership -----------------------------------------------------------
    def down(self) -> set[str]:
        """Node ids gossip believes dead or departed."""
        return {m.node for m in self.node.members() if m.state in DOWN}

    def alive_count(self) -> int:
        return sum(1 for m in self.node.members() if m.state not in DOWN)

    async def join_peers(self, nodes: list[types_pb2.Node], self_id: str, fanout: int = 3) -> int:
        """Push-pull with a few known peers when we are alone (first start, or after a partition)."""
        if self.alive_count() > 1:
            return 0
        peers = [n for n in nodes if n.id != self_id and n.gossip_port and n.mesh_address
                 and n.state == types_pb2.NODE_STATE_READY]
        if not peers:
            return 0
        picked = self.rng.sample(peers, min(fanout, len(peers)))
        return await self.node.join([f"{n.mesh_address}:{n.gossip_port}" for n in picked])

    def save_peers(self, path: Path) -> None:
        """Remember live peers' gossip addresses, so a restart while meshd is away can rejoin (as serf's snapshot)."""
        peers = sorted(f"{m.addr[0]}:{m.addr[1]}" for m in self.node.members()
                       if m.state not in DOWN and m.node != self.node.node_id)
        if peers and peers != getattr(self, "_saved_peers", None):
            pki.write_file(path, json.dumps(peers).encode(), private=True)
            self._saved_peers = peers

    async def join_saved_peers(self, path: Path) -> int:
        try:
            peers = json.loads(path.read_text()) if path.exists() else []
        except (OSError, ValueError):
            return 0
        return await self.node.join(peers[:8]) if peers else 0

    # -- records --------------------------------------------------------------
    def publish(self, raw: bytes) -> None:
        """Pass on a record meshd signed (from the watch stream). One that cannot be passed on
        is skipped with a metric and a log line: the stream, and every other record, go on."""
        try:
            self.node.publish(decode_record(raw))
        except (PeerError, InvalidArgument) as e:
            metrics.RECORDS_SKIPPED.inc()
            log.warning("a catalog record from meshd cannot be gossiped, skipped: %s", e)

    def services(self) -> dict[str, types_pb2.Service]:
        """Live services from gossip records (origins not down, not tombstones, not expired or
        of a retired key: such a record is kept, as peers may still hold a newer one, but not used)."""
        out: dict[str, types_pb2.Service] = {}
        down = self.down()
        for rec in self.node.records().values():
            if rec.deleted or rec.origin in down or not self._verify.current(rec):
                continue
            try:
                svc = types_pb2.Service.FromString(rec.payload)
            except Exception:  # signed by meshd, so only a version skew could get here
                continue
            out[svc.name] = svc
        return out

    def _refused(self, reason: str, r: Record) -> None:
        """A record refused by the catalog key check: counted; one log line per reason every
        10 s at most (a peer replaying records cannot flood the log). Never an error."""
        metrics.RECORDS_REFUSED.labels(reason).inc()
        now = self._monotonic()
        if now - self._refusals_logged.get(reason, float("-inf")) >= 10:
            self._refusals_logged[reason] = now
            log.warning("gossip record %r (revision %d, key %r, expires %d) refused: %s; known keys %s",
                        r.key[:64], r.revision, r.key_id, r.expires, reason.replace("_", " "),
                        ", ".join(self._verify.key_ids()) or "none")

    def publish_resigned(self, records) -> int:
        """Records of our own services that meshd signed again at a renewal (a new key or
        expiry period): passed on like the watch stream's. At most MAX_SERVICES_PER_NODE."""
        records = list(records)
        if len(records) > limits.MAX_SERVICES_PER_NODE:
            log.warning("meshd sent %d signed records at renewal: the first %d passed on", len(records),
                        limits.MAX_SERVICES_PER_NODE)
        for raw in records[:limits.MAX_SERVICES_PER_NODE]:
            self.publish(raw)
        return min(len(records), limits.MAX_SERVICES_PER_NODE)

    # -- keys -----------------------------------------------------------------
    def update_keys(self, cfg: admission_pb2.GossipConfig) -> None:
        """Follow meshd's catalog keys, and its keyring: install new keys, switch primary,
        retire removed ones."""
        self._verify.update(catalog_keys(cfg), cfg.catalog_public_key)
        if not cfg.keys or list(cfg.keys) == list(self.cfg.keys):
            self.cfg = admission_pb2.GossipConfig(keys=self.cfg.keys, catalog_public_key=cfg.catalog_public_key,
                                                  catalog_keys=cfg.catalog_keys)
            return
        wanted = list(cfg.keys)
        have = set(self.cfg.keys)
        for k in wanted:
            if k not in have:
                self.node.install_key(k)
        if wanted[0] != self.cfg.keys[0]:
            self.node.use_key(wanted[0])
        for k in have - set(wanted):
            self.node.remove_key(k)
        self.cfg = cfg
        log.info("gossip keyring updated: primary %s, %d key(s)", self.keyring.primary_id, len(wanted))

    def stats(self) -> dict[str, int]:
        return {f"gossip_{k}": int(v) for k, v in self.node.stats().items() if isinstance(v, (int, float))}


def _membership_proofs(identity, clock: Clock) -> dict:
    """Leaves signed with this node's mesh key and checked against the mesh CA (identity: meshagent.identity)."""
    if identity is None:
        return {}
    from meshcore.gossip.leaveproof import leave_signer, leave_verifier
    def sign_leave(node: str, incarnation: int) -> bytes:  # the identity's current key: it is renewed in place
        return leave_signer(identity.key_pem, identity.cert_pem, clock.wall)(node, incarnation)
    return {"sign_leave": sign_leave,
            "verify_leave": leave_verifier(identity.ca_pem, clock.wall)}


def facts_of(node: types_pb2.Node) -> dict:
    return {"mesh_address": node.mesh_address, "region": node.region, "cloud": node.cloud,
            "labels": dict(node.labels)}


__all__ = ["AgentGossip", "decode_facts", "facts_of", "load_config", "save_config"]
