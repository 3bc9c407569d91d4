"""Gossip configuration profiles and the timing formulas they feed.

A `GossipProfile` holds every timing knob of the SWIM/Lifeguard state machine.
Three constructors give tuned defaults:

- `lan()`: one region or data centre, round trips well under 10 ms.
- `wan()`: members spread over regions and clouds, round trips up to ~300 ms
  and more loss; slower to detect failures, fewer false alarms.
- `local()`: loopback and tests; aggressive timings on a link that never
  loses packets.

The formulas are small pure functions so tests and benchmarks can compute the
bounds a profile promises (for instance the suspicion timeout at N members)
without running the protocol. The shapes follow the SWIM and Lifeguard papers:
dissemination needs O(log N) rounds, so retransmits and suspicion timeouts
grow with log10(N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from meshcore.errors import ConfigError


@dataclass(frozen=True)
class GossipProfile:
    """Timings in seconds. Every field is a trade-off between speed and noise."""

    name: str = "lan"
    # How often each member probes one other member. Shorter detects crashes
    # sooner but costs N pings per interval across the mesh. memberlist's LAN
    # default is 1 s; 0.7 s suspects a crash ~0.6 s sooner (a crash waits on
    # average half an interval for its next probe, then a whole one for the
    # probe to fail) for 1/0.7 times the probe traffic. The suspicion floor
    # below, not the interval, is what lets a frozen member live.
    probe_interval: float = 0.7
    # How long a direct ping waits for its ack before asking helpers. Must
    # exceed the 99th-percentile round trip, or slow links look dead.
    probe_timeout: float = 0.35
    # Helpers asked to ping a member that missed its direct ack. More helpers
    # ride out loss on one path (fewer false suspicions) at k extra pings each.
    indirect_checks: int = 3
    # How often pending news (membership changes, catalog records) is pushed
    # to `gossip_nodes` random members. Only sent while there is news, so a
    # shorter interval costs bandwidth only while something changes.
    gossip_interval: float = 0.2
    # Fan-out per gossip round. Higher spreads faster (fewer rounds) at the
    # price of more duplicates.
    gossip_nodes: int = 3
    # Each piece of news is sent retransmit_mult * ceil(log10(N+1)) times.
    # Higher reaches every member even under loss; lower saves bytes.
    retransmit_mult: int = 4
    # Suspicion lasts at least suspicion_mult * max(1, log10(N)) probe
    # intervals before a suspect is declared dead: the time it has to refute.
    # memberlist uses 4 with k = 2; 2.5 with k = 3 (and the floor below)
    # detects about a third sooner at 50-1,000 members with no more false
    # positives in the simulator (10% loss, members freezing for up to 4 s):
    # the minimum applies only once k more members failed to reach the suspect.
    suspicion_mult: float = 2.5
    # ...and never less than this many seconds: a member frozen for up to this
    # long (a stop-the-world pause, a stalled VM) is still alive when it is
    # judged, even if a suspicion (a lost ping) was already running when it
    # froze. With 10% loss and members freezing 2-4 s at 20 members (30 seeded
    # runs of 5 minutes), 3.5 s declared a frozen member dead; 4 s did not.
    suspicion_min_timeout: float = 4.0
    # Lifeguard: with no independent confirmation a suspicion lasts this many
    # times the minimum; confirmations shrink it towards the minimum.
    suspicion_max_timeout_mult: int = 6
    # Lifeguard's k: independent confirmations (suspect claims from distinct
    # members) that bring a suspicion from its maximum down to its minimum.
    suspicion_confirmations: int = 3
    # Full state exchange over TCP with one random member (scaled up with
    # log2(N) above 32 members). Repairs anything gossip missed; costs a
    # full-state transfer each time.
    push_pull_interval: float = 30.0
    # Keep gossiping to members declared dead for this long, so a member that
    # was only partitioned or stalled hears about it and refutes.
    gossip_to_the_dead_time: float = 30.0
    # Lifeguard local health: probe interval and timeout are multiplied by
    # (score + 1), score in [0, awareness_max_multiplier - 1]. A node that
    # misses its own deadlines slows itself instead of accusing others.
    awareness_max_multiplier: int = 8
    # Forget dead or departed members after this long (their records go too).
    dead_reclaim_time: float = 300.0
    # Try a push-pull with one dead (not departed) member this often, so two
    # sides of a healed partition find each other again.
    reconnect_interval: float = 10.0
    # Deleted catalog records are kept this long so an older copy cannot
    # resurrect them.
    tombstone_ttl: float = 3600.0
    # Largest datagram sent (and accepted) on UDP; below a typical 1500-byte MTU.
    max_datagram: int = 1400
    # A tick arriving this much later than due means our own process stalled:
    # pending probe deadlines are extended instead of blaming the peers.
    stall_threshold: float = 0.25
    # A graceful leave waits at most this long for the leave message to spread.
    leave_propagate_time: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "name" and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                raise ConfigError(f"invalid gossip profile field {f.name}={v!r}: must be a positive number")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError(
                f"invalid gossip profile: probe_timeout {self.probe_timeout} must be shorter than "
                f"probe_interval {self.probe_interval} (indirect probes need the rest of the interval)")
        if self.max_datagram < 512 or self.max_datagram > 65000:
            raise ConfigError(f"invalid gossip profile: max_datagram {self.max_datagram} must be 512-65000 bytes")

    def with_(self, **changes: object) -> GossipProfile:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def lan() -> GossipProfile:
    return GossipProfile()


def wan() -> GossipProfile:
    return GossipProfile(
        name="wan", probe_interval=5.0, probe_timeout=3.0, gossip_interval=0.5, gossip_nodes=4,
        suspicion_mult=6, suspicion_confirmations=4, push_pull_interval=60.0, gossip_to_the_dead_time=60.0,
        reconnect_interval=30.0, stall_threshold=1.0, leave_propagate_time=3.0)


def local() -> GossipProfile:
    return GossipProfile(
        name="local", probe_interval=0.5, probe_timeout=0.2, indirect_checks=2, gossip_interval=0.05,
        gossip_nodes=3, suspicion_mult=3, suspicion_confirmations=1, suspicion_min_timeout=1.5,
        push_pull_interval=5.0, gossip_to_the_dead_time=10.0,
        dead_reclaim_time=30.0, reconnect_interval=2.0, stall_threshold=0.2, leave_propagate_time=0.5)


PROFILES = {"lan": lan, "wan": wan, "local": local}


def profile(name: str) -> GossipProfile:
    """The named profile, or ConfigError naming the choices."""
    try:
        return PROFILES[name]()
    except KeyError:
        raise ConfigError(f"unknown gossip profile {name!r}: choose one of {', '.join(PROFILES)}") from None


# --- timing formulas -------------------------------------------------------


def retransmit_limit(mult: int, n: int) -> int:
    """How many times one piece of news is sent: mult * ceil(log10(n + 1))."""
    return mult * max(1, math.ceil(math.log10(n + 1)))


def suspicion_timeout(mult: float, n: int, interval: float) -> float:
    """Minimum suspicion time: mult * max(1, log10(n)) * interval (memberlist's bound)."""
    return mult * max(1.0, math.log10(max(1, n))) * interval


def suspicion_confirmations(k: int, n: int) -> int:
    """Independent confirmations that bring a suspicion down to its minimum (Lifeguard's k), at
    most the n - 2 members that are neither the suspect nor the first suspector."""
    return max(0, min(int(k), n - 2))


def remaining_suspicion(confirmations: int, k: int, elapsed: float, lo: float, hi: float) -> float:
    """Lifeguard's dynamic timeout: starts at `hi`, falls logarithmically with each
    independent confirmation to `lo` after k of them; minus the time already spent."""
    frac = math.log(confirmations + 1) / math.log(k + 1) if k > 0 else 1.0
    timeout = max(lo, hi - (hi - lo) * frac)
    return timeout - elapsed


def push_pull_scale(interval: float, n: int) -> float:
    """Push-pull interval grows with log2(N) beyond 32 members, keeping total TCP load flat."""
    threshold = 32
    if n <= threshold:
        return interval
    return interval * (math.ceil(math.log2(n) - math.log2(threshold)) + 1)
