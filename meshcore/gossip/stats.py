"""Gossip counters: what one node's state machine has seen since it started.

Plain integers incremented by the state machine (no locking: it is driven
from one thread). `as_dict()` is what the agent's local API and
`meshctl status` show. "False positives" counts members this node saw come
back alive after being declared dead: either a wrong verdict or a restart; the
simulator, which knows the truth, counts the wrong verdicts exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class GossipStats:
    probes_sent: int = 0
    probes_failed: int = 0
    indirect_probes_sent: int = 0
    acks_received: int = 0
    nacks_received: int = 0
    suspicions: int = 0
    suspicions_confirmed: int = 0
    suspicions_restarted: int = 0  # a suspect accused again at a newer incarnation: a new timer
    refutations: int = 0
    members_declared_dead: int = 0
    false_positives: int = 0
    packets_sent: int = 0
    packets_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    pushpull_bytes_sent: int = 0
    bad_packets: int = 0
    oversized_packets: int = 0
    decrypt_failures: int = 0
    replayed_packets: int = 0
    bad_messages: int = 0
    signature_failures: int = 0
    records_accepted: int = 0
    push_pulls: int = 0
    stalls_detected: int = 0
    local_health: int = 0
    leave_proof_failures: int = 0  # leave messages whose proof did not verify (treated as suspicion)
    tcp_refused: int = 0  # inbound push-pull connections over the limits, or too slow to send

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
