"""Discrete-event gossip simulator: many `Swim` state machines on a simulated network.

Model. One heap of timed events drives everything; simulated time only moves
when the next event is popped, so 1,000 members for 60 simulated seconds run
in seconds of CPU. Every member is the real `Swim` class (the same code the
agents run), given `now` from the simulated clock and a generator seeded from
the simulation seed, so a run is a pure function of (config, seed).

The network (`SimNetwork`) delivers each datagram after a latency drawn from
a distribution, or drops it (uniform loss, or a partition between the
sender's and receiver's groups). Push-pull exchanges travel as reliable
messages (TCP) but still respect partitions and crashed or stalled peers.

Faults: `crash(i)` stops a member for good (its datagrams vanish);
`stall(i, seconds)` freezes its event loop: datagrams queue up and timers
fire late, all at the moment it wakes, timers first (the order libuv, hence
uvloop, runs them); `slow(i, extra)` adds processing delay to everything it
receives.

Observations: the simulator drains every member's events and records, per
member, when it first saw each record key and when it declared each member
dead. From those it computes convergence curves, detection times and false
positives (a member declared dead that had not crashed).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from meshcore.gossip.keyring import Keyring, Plaintext
from meshcore.gossip.messages import MemberState, Record, State
from meshcore.gossip.profiles import GossipProfile, lan
from meshcore.gossip.swim import MemberEvent, RecordEvent, Swim

_TIMER, _DELIVER, _WAKE, _PP_REQ, _PP_REP = range(5)


def lognormal_latency(median: float, sigma: float) -> Callable[[random.Random], float]:
    """One-way latency with a median and a long right tail."""
    mu = math.log(median)
    return lambda rng: rng.lognormvariate(mu, sigma)


LAN_LATENCY = lognormal_latency(0.0005, 0.5)   # ~0.5 ms one way, tail to a few ms
WAN_LATENCY = lognormal_latency(0.040, 0.6)    # ~40 ms one way, tail past 150 ms


@dataclass
class SimNetwork:
    latency: Callable[[random.Random], float] = LAN_LATENCY
    loss: float = 0.0
    groups: dict[int, int] = field(default_factory=dict)  # member -> partition group

    def partition(self, *sides: list[int]) -> None:
        """Split members into groups that cannot reach each other."""
        self.groups = {i: g for g, side in enumerate(sides) for i in side}

    def heal(self) -> None:
        self.groups = {}

    def connected(self, a: int, b: int) -> bool:
        return self.groups.get(a, -1) == self.groups.get(b, -1)


def allow_all(_: Record) -> bool:
    return True


class _Node:
    __slots__ = ("swim", "timer_at", "crashed", "stalled_until", "backlog", "extra_delay")

    def __init__(self, swim: Swim) -> None:
        self.swim = swim
        self.timer_at = math.inf
        self.crashed = False
        self.stalled_until = 0.0
        self.backlog: list[tuple] = []
        self.extra_delay = 0.0


class Simulation:
    """`n` members, all knowing each other at t=0 (warm start) unless `warm=False`."""

    def __init__(self, n: int, seed: int = 1, profile: GossipProfile | None = None,
                 network: SimNetwork | None = None, keyring_key: bytes | None = None,
                 verify: Callable[[Record], bool] = allow_all, warm: bool = True) -> None:
        self.rng = random.Random(seed)
        self.profile = profile or lan()
        self.net = network or SimNetwork()
        self.now = 0.0
        self._heap: list[tuple] = []
        self._seq = 0
        self.addrs = [self.addr_of(i) for i in range(n)]
        self.index = {a: i for i, a in enumerate(self.addrs)}
        self.nodes: list[_Node] = []
        self.record_seen: dict[str, dict[int, float]] = {}
        self.dead_seen: dict[str, dict[int, float]] = {}
        self.first_suspected: dict[str, float] = {}
        self.crashed_at: dict[int, float] = {}
        self.false_positives: list[tuple[float, int, str]] = []
        self.datagrams = 0
        for i in range(n):
            self.nodes.append(_Node(self._make_swim(i, keyring_key, verify)))
        if warm:
            states = [MemberState(self.node_id(i), self.node_id(i), self.addrs[i], 0, State.ALIVE, b"")
                      for i in range(n)]
            for node in self.nodes:
                node.swim.seed_members(states, 0.0)
        for i in range(n):
            self._reschedule(i)

    # --- set-up helpers

    @staticmethod
    def node_id(i: int) -> str:
        return f"node-{i}"

    @staticmethod
    def addr_of(i: int) -> tuple[str, int]:
        return (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 7946)

    def _make_swim(self, i: int, key: bytes | None, verify) -> Swim:
        rng = random.Random(self.rng.getrandbits(64))
        ring = Keyring(key, nonce=lambda n, r=rng: r.randbytes(n)) if key else Plaintext()
        return Swim(self.node_id(i), self.node_id(i), self.addrs[i], self.profile, rng, ring, verify,
                    epoch=int(self.now * 1000), now=self.now)

    def add_node(self, seeds: list[int]) -> int:
        """A late joiner: a fresh member that push-pulls with `seeds` now."""
        i = len(self.nodes)
        self.addrs.append(self.addr_of(i))
        self.index[self.addrs[i]] = i
        self.nodes.append(_Node(self._make_swim(i, None, allow_all)))
        for s in seeds:
            self._start_pushpull(i, self.addrs[s])
        self._reschedule(i)
        return i

    # --- faults

    def crash(self, i: int) -> None:
        self.nodes[i].crashed = True
        self.crashed_at[i] = self.now

    def stall(self, i: int, seconds: float) -> None:
        node = self.nodes[i]
        if node.crashed or node.stalled_until > self.now:
            return
        node.stalled_until = self.now + seconds
        self._push(node.stalled_until, _WAKE, i, None)

    def slow(self, i: int, extra: float) -> None:
        self.nodes[i].extra_delay = extra

    # --- actions

    def publish(self, i: int, record: Record) -> None:
        self.nodes[i].swim.publish(record, self.now)
        self._after(i)

    def swim(self, i: int) -> Swim:
        return self.nodes[i].swim

    # --- event loop

    def _push(self, t: float, kind: int, i: int, payload) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, i, payload))

    def _reschedule(self, i: int) -> None:
        node = self.nodes[i]
        if node.crashed:
            return
        t = node.swim.next_timer()
        if t < self.now:
            t = self.now
        if t != node.timer_at:
            node.timer_at = t
            self._push(t, _TIMER, i, None)

    def run_until(self, t_end: float, max_events: int = 50_000_000) -> None:
        heap = self._heap
        nodes = self.nodes
        count = 0
        while heap and heap[0][0] <= t_end and count < max_events:
            t, _, kind, i, payload = heapq.heappop(heap)
            count += 1
            self.now = t
            node = nodes[i]
            if node.crashed:
                continue
            if node.stalled_until > t and kind != _WAKE:
                if kind != _TIMER:
                    node.backlog.append((kind, payload))
                continue
            if kind == _TIMER:
                if t != node.timer_at:
                    continue
                node.timer_at = math.inf
                node.swim.tick(t)
            elif kind == _DELIVER:
                node.swim.receive(payload[0], payload[1], t)
            elif kind == _WAKE:
                if node.stalled_until > t:
                    continue
                node.timer_at = math.inf
                # libuv (uvloop) runs every due timer, including ones re-armed
                # at zero delay, before it polls the sockets.
                for _ in range(100):
                    node.swim.tick(t)
                    if node.swim.next_timer() > t:
                        break
                backlog, node.backlog = node.backlog, []
                for k, p in backlog:
                    self._handle(i, k, p)
            else:
                self._handle(i, kind, payload)
            self._after(i)
        if count < max_events:
            self.now = max(self.now, t_end)

    def _handle(self, i: int, kind: int, payload) -> None:
        swim = self.nodes[i].swim
        if kind == _DELIVER:
            swim.receive(payload[0], payload[1], self.now)
        elif kind == _PP_REQ:
            data, src = payload
            reply = swim.receive_stream(data, self.addrs[src], self.now)
            if reply is not None and self.net.connected(i, src) and not self.nodes[src].crashed:
                self._push(self.now + self.net.latency(self.rng), _PP_REP, src, (reply, i))
        elif kind == _PP_REP:
            data, src = payload
            swim.receive_stream(data, self.addrs[src], self.now)

    def _start_pushpull(self, i: int, addr) -> None:
        j = self.index.get(addr)
        if j is None or self.nodes[j].crashed or not self.net.connected(i, j):
            return
        data = self.nodes[i].swim.make_pushpull(self.now)
        # A TCP exchange costs a handshake round trip before the request lands.
        delay = 3 * self.net.latency(self.rng) + self.nodes[j].extra_delay
        self._push(self.now + delay, _PP_REQ, j, (data, i))

    def _after(self, i: int) -> None:
        node = self.nodes[i]
        swim = node.swim
        src = self.addrs[i]
        net = self.net
        rng = self.rng
        for data, addr in swim.datagrams_to_send():
            self.datagrams += 1
            j = self.index.get(addr)
            if j is None or (net.loss and rng.random() < net.loss) or (net.groups and not net.connected(i, j)):
                continue
            self._push(self.now + net.latency(rng) + self.nodes[j].extra_delay, _DELIVER, j, (data, src))
        for addr in swim.pushpull_requests():
            self._start_pushpull(i, addr)
        for ev in swim.events():
            if type(ev) is RecordEvent:
                if ev.kind == "set":
                    self.record_seen.setdefault(ev.record.key, {}).setdefault(i, self.now)
            elif type(ev) is MemberEvent and ev.kind == "suspect":
                self.first_suspected.setdefault(ev.member.node, self.now)
            elif type(ev) is MemberEvent and ev.kind == "alive":  # refuted: forget that episode
                self.first_suspected.pop(ev.member.node, None)
            elif type(ev) is MemberEvent and ev.kind == "dead":
                target = ev.member.node
                self.dead_seen.setdefault(target, {}).setdefault(i, self.now)
                j = self.index.get(tuple(ev.member.addr))
                if j is not None and j not in self.crashed_at:
                    self.false_positives.append((self.now, i, target))
        self._reschedule(i)

    # --- measurements

    def live(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if not n.crashed]

    def convergence_curve(self, key: str, t0: float, step: float = 0.05, until: float | None = None
                          ) -> list[tuple[float, float]]:
        """(seconds after t0, fraction of live members that know `key`) at each step."""
        live = self.live()
        seen = sorted(t - t0 for i, t in self.record_seen.get(key, {}).items() if not self.nodes[i].crashed)
        end = until if until is not None else (seen[-1] if seen else 0.0)
        curve, k, t = [], 0, 0.0
        while t <= end + step:
            while k < len(seen) and seen[k] <= t:
                k += 1
            curve.append((round(t, 4), k / len(live)))
            t += step
        return curve

    def time_to_fraction(self, key: str, t0: float, fraction: float) -> float | None:
        live = self.live()
        need = math.ceil(fraction * len(live) - 1e-9)
        seen = sorted(t for i, t in self.record_seen.get(key, {}).items() if not self.nodes[i].crashed)
        return seen[need - 1] - t0 if len(seen) >= need else None

    def detection_time(self, i: int) -> float | None:
        """Seconds from crashing member i until every live member declared it dead."""
        target = self.node_id(i)
        seen = self.dead_seen.get(target, {})
        live = [j for j in self.live()]
        if any(j not in seen for j in live):
            return None
        return max(seen[j] for j in live) - self.crashed_at[i]

    def detection_phases(self, i: int) -> dict[str, float]:
        """Where detection time goes: crash -> first suspicion -> first DEAD -> all know."""
        target = self.node_id(i)
        t0 = self.crashed_at[i]
        out = {}
        if target in self.first_suspected:
            out["first_suspicion_s"] = round(self.first_suspected[target] - t0, 3)
        seen = self.dead_seen.get(target)
        if seen:
            out["first_dead_s"] = round(min(seen.values()) - t0, 3)
            out["all_dead_s"] = round(max(seen.values()) - t0, 3)
        return out

    def total_bytes_sent(self) -> int:
        return sum(n.swim.stats.bytes_sent for n in self.nodes)

    def total_pushpull_bytes_sent(self) -> int:
        return sum(n.swim.stats.pushpull_bytes_sent for n in self.nodes)
