"""SWIM membership with the Lifeguard extensions, as a sans-IO state machine.

Theory of operation
-------------------
`Swim` never touches a socket or a clock. The driver (the asyncio adapter, or
the simulator) feeds it `receive(data, addr, now)` for each datagram and
`tick(now)` when `next_timer()` is due, then drains `datagrams_to_send()`,
`pushpull_requests()` and `events()`. Randomness comes from an injected
`random.Random`, so a seeded run is reproducible.

Failure detection (SWIM): every probe interval a member pings one other
member. No ack within the probe timeout: it asks `indirect_checks` random
members to ping the target for it (they answer ack, or nack in time for the
end of the interval when they could not reach it either). No ack by the end of
the interval: the target becomes *suspect*, and that claim is gossiped.

Probe schedule (our change to SWIM's shuffled round robin): intervals are
numbered on a shared clock (the driver passes `clock_offset`, wall minus
monotonic time), and in interval s the member at place i of the sorted list of
live members probes the one at place i + 1 + s mod (N - 1). For each s that is
a permutation, so, while views agree, every member is probed by exactly one
peer per interval (each member still probes every other once per N - 1
intervals, at its own random phase). With independent shuffles the gap
between two probes of a member is random with a long tail (p99 4.5 s at 1 s
intervals); here it is at most two intervals, so a crash is first suspected
within about two intervals. Where clocks disagree the schedule degrades to
what shuffles give.

Suspicion and refutation: a suspect that hears of it raises its incarnation
number and gossips ALIVE, which overrides any claim with a lower incarnation.
A suspicion not refuted in time becomes DEAD. Only a member raises its own
incarnation, so the newest claim always wins.

Lifeguard:
- local health (awareness score 0..max-1): failed probes without the expected
  nacks, and having to refute, raise it; successful probes lower it. Probe
  interval and timeout are multiplied by (score + 1), so a node that is itself
  slow or losing packets backs off instead of accusing healthy peers.
- dynamic suspicion: a suspicion starts at max = suspicion_max_timeout_mult *
  min and shrinks logarithmically to min as independent members confirm it
  (k = suspicion_confirmations). A member that hears of a fresh suspicion
  probes the suspect at its next slot with probability 3(k + 1)/N, so the k
  confirmations (or the suspect's refutation, provoked by the buddy ping)
  arrive within about one interval. The confirmations are what make a short
  minimum safe: a healthy member that one peer failed to reach is rarely
  unreachable from k more, and an unconfirmed suspicion lasts the maximum.
- buddy system: a ping to a suspect carries the suspicion, so the suspect
  learns of it on the direct path and refutes at once.
- last chance (our addition to the buddy system): two probe timeouts and one
  probe timeout before a suspicion expires, the suspector pings the suspect
  again with the suspicion attached. A suspect that already refuted but whose
  ALIVE missed this member answers the stale accusation by gossiping its
  current ALIVE again (piggybacked on the ack), so one unlucky member under
  heavy loss does not declare a healthy peer dead.
- stall awareness (our addition): a tick or datagram arriving more than
  `stall_threshold` after a due deadline means this process was frozen; the
  deadlines that fell due during the freeze are extended so queued acks and
  refutations are read before anyone is judged.

Dissemination: membership changes and catalog records are queued as
broadcasts and piggybacked on every packet (pings, acks, gossip), each sent
retransmit_limit(N) times, least-sent first. A member that starts to suspect
someone, or declares it dead or gone, gossips at once instead of at its next
gossip phase, so failure news crosses the mesh in network time per hop. Gossip rounds go to
`gossip_nodes` random members, including recently dead ones so that a member
wrongly declared dead hears it and refutes. Periodic push-pull (full state
over TCP, requested through `pushpull_requests()`) repairs what gossip missed
and brings a late joiner the whole catalog.

Catalog records are accepted only if `verify_record` says the signature is
meshd's; records of a dead or departed member are hidden until it returns.

Packets are sealed by the keyring and carry (epoch, counter) in the sealed
header; a per-sender 64-packet window drops replays.

Authenticated membership (agents pass `verify_leave` and `sign_leave`): the
gossip key proves a sender is a member, not who may speak for whom. So a
graceful leave is a LEAVE message whose proof the leaving node made with its
own mesh key; any other claim that a member is dead or gone (a DEAD message,
a DEAD or LEFT entry in a push-pull, an unproven leave) is only a suspicion,
which this member verifies by its own probes and the accused can refute.
Death comes only through the suspicion path. Without `verify_leave` (the
simulator) peers' DEAD messages are trusted, as in memberlist.

Incarnations are compared in serial-number arithmetic (messages.newer), so a
refutation never overflows the 32-bit field.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from meshcore import limits
from meshcore.errors import InvalidArgument, PeerError
from meshcore.gossip import codec
from meshcore.gossip.broadcasts import BroadcastQueue
from meshcore.gossip.keyring import Keyring, Plaintext
from meshcore.gossip.messages import (
    Ack, Addr, Alive, Dead, IndirectPing, Leave, MemberState, Message, Nack, Ping, PushPull, Record,
    State, Suspect, at_least, newer, newest, next_incarnation,
)
from meshcore.gossip.profiles import (
    GossipProfile, push_pull_scale, remaining_suspicion, retransmit_limit,
    suspicion_confirmations, suspicion_timeout,
)
from meshcore.gossip.records import RecordStore
from meshcore.gossip.replay import ReplayWindows
from meshcore.gossip.stats import GossipStats

MAX_STREAM = limits.GOSSIP_MAX_STREAM_BYTES
# A member hearing of a fresh suspicion probes the suspect at its next slot with
# probability CONFIRM_PROBES * (k + 1) / N: about that many times k members check
# it within one interval, so the k confirmations (or the refutation the buddy
# ping provokes) come in one interval instead of k.
CONFIRM_PROBES = 3
# Last-chance pings before a suspicion ends, one probe timeout apart: at 10% loss one ping or
# its ack is lost about one time in five, two both about one in twenty-five.
LAST_CHANCES = 2


@dataclass(slots=True)
class Member:
    """One member as this node sees it."""

    node: str
    name: str
    addr: Addr
    incarnation: int
    state: State
    facts: bytes
    state_change: float

    @property
    def id(self) -> str:
        return self.node


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: str  # join, update, suspect, alive, dead, left
    member: Member


@dataclass(frozen=True, slots=True)
class RecordEvent:
    kind: str  # set, removed
    record: Record


Event = MemberEvent | RecordEvent


@dataclass(slots=True)
class _Suspicion:
    start: float
    k: int
    lo: float
    hi: float
    confirmers: set[str]
    deadline: float
    chances: int = LAST_CHANCES  # last-chance pings still to send, the last one probe_timeout before the end


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    direct_deadline: float
    end_deadline: float
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    requester: Addr
    seq: int
    deadline: float
    want_nack: bool


class Swim:
    """One member's SWIM/Lifeguard state. Single-threaded; all times are `now` seconds."""

    def __init__(self, node_id: str, name: str, addr: Addr, profile: GossipProfile,
                 rng: random.Random, keyring: Keyring | Plaintext,
                 verify_record: Callable[[Record], bool], facts: bytes = b"",
                 epoch: int = 0, now: float = 0.0, *,
                 verify_leave: Callable[[str, int, bytes], bool] | None = None,
                 sign_leave: Callable[[str, int], bytes] | None = None,
                 clock_offset: float = 0.0) -> None:
        if not node_id or len(node_id.encode()) > codec.MAX_ID:
            raise InvalidArgument(f"invalid gossip node id {node_id!r}: 1-{codec.MAX_ID} bytes")
        if len(facts) > codec.MAX_FACTS:
            raise InvalidArgument(f"node facts are {len(facts)} bytes: at most {codec.MAX_FACTS} allowed")
        addr = (addr[0], int(addr[1]))
        self.id = node_id
        self.p = profile
        # The largest broadcast that fits in one datagram next to our header.
        self._max_item = profile.max_datagram - keyring.overhead - len(codec.encode_header(0, 0, node_id))
        self._check_fits(Alive(2**32 - 1, node_id, name, addr, facts), "node facts")
        self.rng = rng
        self.keyring = keyring
        self.verify_record = verify_record
        self.verify_leave = verify_leave
        self.sign_leave = sign_leave
        self.stats = GossipStats()
        self._epoch = epoch
        self._counter = 0
        self._seq = 0
        self._lhm = 0
        self._leaving = False
        self._members: dict[str, Member] = {
            node_id: Member(node_id, name, addr, 0, State.ALIVE, bytes(facts), now)}
        self._peers: list[str] = []
        self._peer_index: dict[str, int] = {}
        # Slots count from the shared clock's zero; kept as whole slots plus a fraction
        # so that `now` (small monotonic seconds) is never added to a huge offset.
        self._slot_base = math.floor(clock_offset / profile.probe_interval)
        self._slot_frac = clock_offset - self._slot_base * profile.probe_interval
        self._ring: list[str] | None = None  # sorted ids of live members and self; None: recompute
        self._probe_first: str | None = None
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, _Suspicion] = {}
        self._gone: dict[str, float] = {}  # dead or departed members -> since when
        self._queue = BroadcastQueue()
        self._outbox: list[tuple[bytes, Addr]] = []
        self._pushpull_out: list[Addr] = []
        self._events: list[Event] = []
        self._windows = ReplayWindows()
        self._records = RecordStore(profile.tombstone_ttl)
        # Random phases keep members from probing and gossiping in lockstep.
        self._probe_phase = rng.random() * profile.probe_interval
        self._next_probe = self._probe_time(self._probe_slot(now) + 1)
        self._gossip_phase = rng.random() * profile.gossip_interval
        self._next_gossip = now + self._gossip_phase
        self._next_pushpull = now + rng.random() * profile.push_pull_interval
        self._next_reconnect = now + profile.reconnect_interval
        self._next_housekeeping = now + profile.probe_interval
        self._broadcast_member(self._members[node_id], now)

    # ------------------------------------------------------------------ API

    @property
    def incarnation(self) -> int:
        return self._members[self.id].incarnation

    @property
    def local_health(self) -> int:
        return self._lhm

    def members(self) -> list[Member]:
        return [replace(m) for m in self._members.values()]

    def member(self, node_id: str) -> Member | None:
        m = self._members.get(node_id)
        return replace(m) if m else None

    def records(self) -> dict[str, Record]:
        return self._records.visible()

    def all_records(self) -> list[Record]:
        """Every stored record, including hidden ones and tombstones."""
        return self._records.all()

    def num_alive(self) -> int:
        return len(self._members) - len(self._gone) - (1 if self._leaving else 0)

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._outbox = self._outbox, []
        return out

    def pushpull_requests(self) -> list[Addr]:
        """Addresses the driver should open a push-pull (TCP) exchange with."""
        out, self._pushpull_out = self._pushpull_out, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def pending_broadcasts(self) -> int:
        return len(self._queue)

    def next_timer(self) -> float:
        t = min(self._next_probe, self._next_pushpull, self._next_housekeeping)
        if self._queue and self._next_gossip < t:
            t = self._next_gossip
        p = self._probe
        if p is not None:
            t = min(t, p.end_deadline if p.indirect_sent else p.direct_deadline)
        for r in self._relays.values():
            if r.deadline < t:
                t = r.deadline
        pt = self.p.probe_timeout
        for s in self._suspicions.values():
            due = s.deadline - s.chances * pt
            if due < t:
                t = due
        return t

    def seed_members(self, states: list[MemberState], now: float) -> None:
        """Install known members without gossiping them (restoring a snapshot, or the
        simulator's warm start). Unknown members only; no events."""
        for s in states:
            if s.node not in self._members and s.node != self.id:
                self._members[s.node] = Member(s.node, s.name, s.addr, s.incarnation, s.state, s.facts, now)
                self._peer_index[s.node] = len(self._peers)
                self._peers.append(s.node)
                if s.state in (State.DEAD, State.LEFT):
                    self._gone[s.node] = now
        self._ring = None
        self._next_pushpull = now + self.rng.random() * push_pull_scale(
            self.p.push_pull_interval, len(self._members))

    def update_facts(self, facts: bytes, now: float) -> None:
        """Change this node's facts; gossiped with a new incarnation."""
        if len(facts) > codec.MAX_FACTS:
            raise InvalidArgument(f"node facts are {len(facts)} bytes: at most {codec.MAX_FACTS} allowed")
        me = self._members[self.id]
        self._check_fits(Alive(next_incarnation(me.incarnation), me.node, me.name, me.addr, facts), "node facts")
        me.facts = bytes(facts)
        me.incarnation = next_incarnation(me.incarnation)
        self._broadcast_member(me, now)

    def publish(self, record: Record, now: float) -> bool:
        """Publish a meshd-signed record. Returns False when a newer one is already known."""
        self._check_fits(record, f"record {record.key!r}")
        if not self.verify_record(record):
            raise InvalidArgument(f"record {record.key!r} refused: its signature is not meshd's "
                                  "(catalog records must be signed by meshd)")
        return self._accept_record(record, now)

    def _check_fits(self, msg: Message, what: str) -> None:
        size = len(codec.frame(codec.encode_message(msg)))  # also checks every field
        if size > self._max_item:
            raise InvalidArgument(f"{what} needs {size} bytes on the wire: a gossip message must fit "
                                  f"one {self.p.max_datagram}-byte datagram ({self._max_item} bytes)")

    def leave(self, now: float) -> None:
        """Start a graceful leave: gossip LEFT about ourselves; probing stops."""
        if self._leaving:
            return
        self._leaving = True
        me = self._members[self.id]
        me.incarnation = next_incarnation(me.incarnation)
        me.state = State.LEFT
        me.state_change = now
        if self.sign_leave is not None:  # proved with our own key: nobody else can say it
            msg: Message = Leave(me.incarnation, self.id, self.sign_leave(self.id, me.incarnation))
        else:
            msg = Dead(me.incarnation, self.id, self.id)
        self._broadcast(f"m:{self.id}", msg, now)
        self._probe = None

    # --------------------------------------------------------------- timers

    def tick(self, now: float) -> None:
        self._check_stall(now)
        p = self._probe
        if p is not None:
            if not p.indirect_sent and now >= p.direct_deadline:
                self._probe_indirect(p, now)
            elif p.indirect_sent and now >= p.end_deadline:
                self._probe_failed(p, now)
        if now >= self._next_probe:
            if self._probe is not None:
                # The previous probe is still waiting for indirect acks (local
                # health changed the interval): let it finish first.
                self._next_probe = self._probe_time(self._probe_slot(self._probe.end_deadline) + 1)
            else:
                slot = self._probe_slot(now)
                self._next_probe = self._probe_time(slot + self._lhm + 1)
                if not self._leaving:
                    self._start_probe(now, slot)
        for seq in [s for s, r in self._relays.items() if now >= r.deadline]:
            r = self._relays.pop(seq)
            if r.want_nack:
                self._send(r.requester, [Nack(r.seq)], now, piggyback=False)
        for node, sus in list(self._suspicions.items()):
            if now >= sus.deadline:
                self._suspicion_expired(node, now)
            elif sus.chances and now >= sus.deadline - sus.chances * self.p.probe_timeout:
                self._last_chance(node, sus, now)
        if now >= self._next_gossip:
            if self._queue:
                self._gossip(now)
            self._next_gossip = self._next_phase(now)
        if now >= self._next_pushpull:
            self._schedule_pushpull(now)
        if now >= self._next_housekeeping:
            self._housekeeping(now)

    def _next_phase(self, now: float) -> float:
        """The first gossip tick of our own phase strictly after `now`."""
        iv = self.p.gossip_interval
        k = math.floor((now - self._gossip_phase) / iv) + 1
        t = self._gossip_phase + k * iv
        return t if t > now else t + iv  # float rounding can land exactly on `now`

    def _check_stall(self, now: float) -> None:
        due = self.next_timer()
        late = now - due
        if late <= self.p.stall_threshold:
            return
        # Our own process was frozen: whatever fell due meanwhile is judged
        # only after the datagrams queued during the freeze have been read.
        self.stats.stalls_detected += 1
        self._set_lhm(self._lhm + 1)
        grace = now + self.p.probe_timeout
        p = self._probe
        if p is not None:
            p.direct_deadline = max(p.direct_deadline, grace)
            p.end_deadline = max(p.end_deadline, grace + self.p.probe_timeout)
        for r in self._relays.values():
            r.deadline = max(r.deadline, grace)
        for s in self._suspicions.values():
            s.deadline = max(s.deadline, grace + self.p.probe_interval)

    # -------------------------------------------------------------- probing

    def _probe_slot(self, t: float) -> int:
        """The interval `t` falls in on the shared clock (a probe time is the start of its own)."""
        return self._slot_base + math.floor((t + self._slot_frac - self._probe_phase) / self.p.probe_interval + 1e-6)

    def _probe_time(self, slot: int) -> float:
        return (slot - self._slot_base) * self.p.probe_interval + self._probe_phase - self._slot_frac

    def _live_ring(self) -> list[str]:
        if self._ring is None:
            self._ring = sorted(n for n, m in self._members.items()
                                if n == self.id or m.state in (State.ALIVE, State.SUSPECT))
        return self._ring

    def _slot_target(self, slot: int) -> str | None:
        ring = self._live_ring()
        n = len(ring)
        if n < 2:
            return None
        i = bisect.bisect_left(ring, self.id)
        return ring[(i + 1 + slot % (n - 1)) % n]

    def _start_probe(self, now: float, slot: int) -> None:
        target = None
        if self._probe_first is not None:
            node, self._probe_first = self._probe_first, None
            m = self._members.get(node)
            if m is not None and m.state == State.SUSPECT:
                target = node
        if target is None:
            target = self._slot_target(slot)
        if target is None:
            return
        m = self._members[target]
        self._seq += 1
        scale = self._lhm + 1
        self._probe = _Probe(self._seq, target, now + self.p.probe_timeout * scale,
                             self._next_probe)
        msgs: list[Message] = [Ping(self._seq, target)]
        if m.state == State.SUSPECT:  # buddy system: tell the suspect directly
            msgs.insert(0, Suspect(m.incarnation, target, self.id))
        self.stats.probes_sent += 1
        self._send(m.addr, msgs, now)

    def _probe_indirect(self, p: _Probe, now: float) -> None:
        p.indirect_sent = True
        target = self._members.get(p.target)
        if target is None:
            self._probe = None
            return
        helpers = self._random_members(self.p.indirect_checks, exclude=p.target, include_dead=False)
        p.expected_nacks = len(helpers)
        for h in helpers:
            self.stats.indirect_probes_sent += 1
            self._send(self._members[h].addr, [IndirectPing(p.seq, p.target, target.addr, True)], now)

    def _probe_failed(self, p: _Probe, now: float) -> None:
        self._probe = None
        self.stats.probes_failed += 1
        # Lifeguard: helpers that did not even nack point at our own links.
        missed = p.expected_nacks - p.nacks if p.expected_nacks else 1
        self._set_lhm(self._lhm + missed)
        m = self._members.get(p.target)
        if m is not None and m.state in (State.ALIVE, State.SUSPECT):
            # Already suspect: our own failed probe is one more independent confirmation.
            self._on_suspect(Suspect(m.incarnation, p.target, self.id), now)

    def _set_lhm(self, v: int) -> None:
        self._lhm = max(0, min(self.p.awareness_max_multiplier - 1, v))
        self.stats.local_health = self._lhm

    # ------------------------------------------------------------- receiving

    def receive(self, data: bytes, addr: Addr, now: float) -> None:
        """Handle one datagram. Bad packets are counted and dropped, never raised."""
        self._check_stall(now)
        st = self.stats
        st.packets_received += 1
        st.bytes_received += len(data)
        if len(data) > self.p.max_datagram:
            st.oversized_packets += 1
            return
        try:
            plain = self.keyring.open(data)
        except PeerError:
            st.decrypt_failures += 1
            return
        try:
            epoch, counter, sender, raws = codec.decode_packet(plain)
        except PeerError:
            st.bad_packets += 1
            return
        if sender == self.id or not self._windows.fresh(sender, epoch, counter):
            st.replayed_packets += 1
            return
        for raw in raws:
            try:
                msg = codec.decode_message(raw)
            except PeerError:
                st.bad_messages += 1
                continue
            self._dispatch(msg, addr, now)

    def _dispatch(self, msg: Message, addr: Addr, now: float) -> None:
        t = type(msg)
        if t is Ping:
            if msg.target == self.id:
                self._send(addr, [Ack(msg.seq)], now)
        elif t is Ack:
            self._on_ack(msg.seq, now)
        elif t is Nack:
            p = self._probe
            if p is not None and p.seq == msg.seq:
                p.nacks += 1
                self.stats.nacks_received += 1
        elif t is IndirectPing:
            if self._leaving:
                return
            self._seq += 1
            # The nack must reach the requester before its probe ends (it asked us
            # probe_timeout into its interval), or it counts against its own health.
            wait = min(self.p.probe_timeout, 0.8 * (self.p.probe_interval - self.p.probe_timeout))
            self._relays[self._seq] = _Relay(addr, msg.seq, now + wait, msg.want_nack)
            self._send(msg.addr, [Ping(self._seq, msg.target)], now)
        elif t is Alive:
            self._on_alive(msg, now)
        elif t is Suspect:
            self._on_suspect(msg, now)
        elif t is Dead:
            self._on_dead_claim(msg, now)
        elif t is Leave:
            self._on_leave(msg, now)
        elif t is Record:
            self._on_record(msg, now)
        else:  # a push-pull has no business in a datagram
            self.stats.bad_messages += 1

    def _on_ack(self, seq: int, now: float) -> None:
        p = self._probe
        if p is not None and p.seq == seq:
            self._probe = None
            self.stats.acks_received += 1
            self._set_lhm(self._lhm - 1)
            return
        r = self._relays.pop(seq, None)
        if r is not None:
            self._send(r.requester, [Ack(r.seq)], now, piggyback=False)

    # ------------------------------------------------------ membership rules

    def _on_alive(self, a: Alive, now: float) -> None:
        if a.node == self.id:
            me = self._members[self.id]
            if self._leaving:
                return
            if newer(a.incarnation, me.incarnation) or (
                    a.incarnation == me.incarnation and (a.addr, a.facts, a.name) != (me.addr, me.facts, me.name)):
                self._refute(a.incarnation, now)
            return
        m = self._members.get(a.node)
        if m is None:
            m = Member(a.node, a.name, tuple(a.addr), a.incarnation, State.ALIVE, a.facts, now)
            self._add_member(m)
            self._broadcast(f"m:{a.node}", a, now)
            self._events.append(MemberEvent("join", replace(m)))
            return
        if not newer(a.incarnation, m.incarnation):
            return  # stale or already known
        prev = m.state
        changed = (m.addr, m.facts, m.name) != (tuple(a.addr), a.facts, a.name)
        m.incarnation, m.addr, m.facts, m.name = a.incarnation, tuple(a.addr), a.facts, a.name
        self._suspicions.pop(a.node, None)
        self._broadcast(f"m:{a.node}", a, now)
        if prev == State.ALIVE:
            if changed:
                self._events.append(MemberEvent("update", replace(m)))
            return
        m.state = State.ALIVE
        m.state_change = now
        self._gone.pop(a.node, None)
        self._ring = None
        if prev == State.DEAD:
            self.stats.false_positives += 1
        self._events.append(MemberEvent("alive", replace(m)))
        for r in self._records.show_origin(a.node):
            self._events.append(RecordEvent("set", r))

    def _on_suspect(self, s: Suspect, now: float) -> None:
        if s.node == self.id:
            if not self._leaving:
                self._answer_accusation(s.incarnation, now)
            return
        m = self._members.get(s.node)
        if m is None or newer(m.incarnation, s.incarnation) or m.state in (State.DEAD, State.LEFT):
            return
        sus = self._suspicions.get(s.node)
        if m.state == State.SUSPECT and newer(s.incarnation, m.incarnation):
            # A suspicion of a newer incarnation than the one we suspect: the member refuted
            # ours (its ALIVE missed us) and has been accused again. A new episode: the old
            # timer and its confirmations count for nothing, or the new claims would confirm
            # a suspicion that started before the member last answered.
            self._suspicions.pop(s.node, None)
            self.stats.suspicions_restarted += 1
        elif m.state == State.SUSPECT:
            # Only the first k independent confirmations change anything (and
            # are re-gossiped); more would flood the mesh after every crash.
            if sus is not None and s.sender not in sus.confirmers and len(sus.confirmers) - 1 < sus.k:
                sus.confirmers.add(s.sender)
                self.stats.suspicions_confirmed += 1
                sus.deadline = max(now, sus.start + remaining_suspicion(
                    len(sus.confirmers) - 1, sus.k, 0.0, sus.lo, sus.hi))
                pt = self.p.probe_timeout
                if sus.chances and now >= sus.deadline - sus.chances * pt:
                    # The confirmation brought the end within the last chances, or to now: those
                    # still in time go now, the rest never. Left as timers in the past, they would
                    # read as this process having stalled, and the stall rule would extend the
                    # suspicion.
                    if now < sus.deadline:
                        self._last_chance(s.node, sus, now)
                    sus.chances = min(sus.chances, max(0, math.ceil((sus.deadline - now) / pt) - 1))
                self._broadcast(f"m:{s.node}", s, now)
            return
        again = m.state == State.SUSPECT
        m.incarnation = s.incarnation
        m.state = State.SUSPECT
        m.state_change = now
        n = max(1, self.num_alive())
        lo = max(self.p.suspicion_min_timeout, suspicion_timeout(self.p.suspicion_mult, n, self.p.probe_interval))
        hi = self.p.suspicion_max_timeout_mult * lo
        k = suspicion_confirmations(self.p.suspicion_confirmations, n)
        self._suspicions[s.node] = _Suspicion(now, k, lo, hi, {s.sender},
                                              now + remaining_suspicion(0, k, 0.0, lo, hi))
        self.stats.suspicions += 1
        self._broadcast(f"m:{s.node}", s, now)
        self._next_gossip = now  # news of a failure goes out at once, not at our next gossip phase
        if not again:
            self._events.append(MemberEvent("suspect", replace(m)))
        if s.sender != self.id and self.rng.random() < CONFIRM_PROBES * (k + 1) / n:
            self._probe_first = s.node

    def _last_chance(self, node: str, sus: _Suspicion, now: float) -> None:
        # LAST_CHANCES probe timeouts before declaring a suspect dead, and one
        # after the other, ping it with the suspicion attached (buddy system).
        # If it is alive and we merely missed its refutation (one member can,
        # at 10% loss), it answers with its current ALIVE piggybacked on the ack.
        sus.chances -= 1
        m = self._members[node]
        self._seq += 1
        self._send(m.addr, [Suspect(m.incarnation, node, self.id), Ping(self._seq, node)], now)

    def _suspicion_expired(self, node: str, now: float) -> None:
        self._suspicions.pop(node, None)
        m = self._members.get(node)
        if m is not None and m.state == State.SUSPECT:
            self._on_dead(Dead(m.incarnation, node, self.id), now)

    def _on_dead_claim(self, d: Dead, now: float) -> None:
        """A peer says a member is dead (or, sender == node, that it left). With authenticated
        membership that is only a suspicion: we verify it ourselves, the accused can refute."""
        if self.verify_leave is None or d.node == self.id:
            self._on_dead(d, now)
        else:
            self._on_suspect(Suspect(d.incarnation, d.node, d.sender), now)

    def _on_leave(self, lv: Leave, now: float) -> None:
        if lv.node == self.id:
            if not self._leaving:
                self._answer_accusation(lv.incarnation, now)
            return
        m = self._members.get(lv.node)
        if m is None or newer(m.incarnation, lv.incarnation) or m.state in (State.DEAD, State.LEFT):
            return
        if self.verify_leave is None or not self.verify_leave(lv.node, lv.incarnation, lv.proof):
            self.stats.leave_proof_failures += 1
            self._on_suspect(Suspect(lv.incarnation, lv.node, lv.node), now)
            return
        self._mark_down(m, lv.incarnation, State.LEFT, lv, now)

    def _on_dead(self, d: Dead, now: float) -> None:
        if d.node == self.id:
            if not self._leaving:
                self._answer_accusation(d.incarnation, now)
            return
        m = self._members.get(d.node)
        if m is None or newer(m.incarnation, d.incarnation) or m.state in (State.DEAD, State.LEFT):
            return
        self._mark_down(m, d.incarnation, State.LEFT if d.sender == d.node else State.DEAD, d, now)

    def _mark_down(self, m: Member, incarnation: int, state: State, msg: Message, now: float) -> None:
        m.incarnation = incarnation
        m.state = state
        m.state_change = now
        self._gone[m.node] = now
        self._ring = None
        self._suspicions.pop(m.node, None)
        if m.state == State.DEAD:
            self.stats.members_declared_dead += 1
        self._broadcast(f"m:{m.node}", msg, now)
        self._next_gossip = now  # news of a failure goes out at once, not at our next gossip phase
        self._events.append(MemberEvent(m.state.label, replace(m)))
        for r in self._records.hide_origin(m.node):
            self._events.append(RecordEvent("removed", r))

    def _answer_accusation(self, incarnation: int, now: float) -> None:
        if at_least(incarnation, self.incarnation):
            self._refute(incarnation, now)
        else:
            # A stale accusation: its sender missed our refutation. Gossip our
            # current ALIVE again (fresh retransmits) instead of a new incarnation.
            self._broadcast_member(self._members[self.id], now)

    def _refute(self, incarnation: int, now: float) -> None:
        me = self._members[self.id]
        me.incarnation = next_incarnation(newest(me.incarnation, incarnation))
        self.stats.refutations += 1
        self._set_lhm(self._lhm + 1)  # being suspected hints that we are the slow one
        self._broadcast_member(me, now)

    def _broadcast_member(self, m: Member, now: float) -> None:
        self._broadcast(f"m:{m.node}", Alive(m.incarnation, m.node, m.name, m.addr, m.facts), now)

    # --------------------------------------------------------------- records

    def _on_record(self, r: Record, now: float) -> None:
        old = self._records.get(r.key)
        if old is not None and not r.wins_over(old):
            return  # duplicate or older: no need to check its signature
        if not self.verify_record(r):
            self.stats.signature_failures += 1
            return
        self._accept_record(r, now)

    def _accept_record(self, r: Record, now: float) -> bool:
        was_visible = (old := self._records.get(r.key)) is not None and self._records.is_visible(old)
        stored, _ = self._records.offer(r, now)
        if not stored:
            return False
        self.stats.records_accepted += 1
        self._broadcast(f"r:{r.key}", r, now)
        if self._records.is_visible(r):
            self._events.append(RecordEvent("set", r))
        elif was_visible:
            self._events.append(RecordEvent("removed", old))
        return True

    # --------------------------------------------------------------- sending

    def _broadcast(self, key: str, msg: Message, now: float) -> None:
        framed = codec.frame(codec.encode_message(msg))
        if len(framed) > self._max_item:
            return  # a peer with larger datagrams sent it; push-pull still carries it
        if not self._queue and self._next_gossip < now:
            self._next_gossip = self._next_phase(now)
        self._queue.put(key, framed)

    def _send(self, addr: Addr, msgs: list[Message], now: float, piggyback: bool = True) -> None:
        framed = [codec.frame(codec.encode_message(m)) for m in msgs]
        self._send_framed(addr, framed, piggyback)

    def _send_framed(self, addr: Addr, framed: list[bytes], piggyback: bool) -> None:
        self._counter += 1
        head = codec.encode_header(self._epoch, self._counter, self.id)
        if piggyback and self._queue:
            budget = self.p.max_datagram - self.keyring.overhead - len(head) - sum(map(len, framed))
            framed = framed + self._queue.take(budget, retransmit_limit(self.p.retransmit_mult, len(self._members)))
        data = self.keyring.seal(head + b"".join(framed))
        self.stats.packets_sent += 1
        self.stats.bytes_sent += len(data)
        self._outbox.append((data, addr))

    def _gossip(self, now: float) -> None:
        for node in self._random_members(self.p.gossip_nodes, exclude=None, include_dead=True, now=now):
            if not self._queue:
                break
            self._send_framed(self._members[node].addr, [], True)

    def _random_members(self, k: int, exclude: str | None, include_dead: bool,
                        now: float = 0.0) -> list[str]:
        peers = self._peers
        n = len(peers)
        if n == 0:
            return []
        picked: list[str] = []
        if n <= 3 * k:
            cands = peers[:]
            self.rng.shuffle(cands)
        else:
            cands = [peers[self.rng.randrange(n)] for _ in range(3 * k)]
        for node in cands:
            if node == exclude or node in picked:
                continue
            m = self._members[node]
            if m.state in (State.ALIVE, State.SUSPECT) or (
                    include_dead and m.state == State.DEAD
                    and now - m.state_change < self.p.gossip_to_the_dead_time):
                picked.append(node)
                if len(picked) == k:
                    break
        return picked

    # ------------------------------------------------------------ push-pull

    def _schedule_pushpull(self, now: float) -> None:
        n = len(self._members)
        self._next_pushpull = now + push_pull_scale(self.p.push_pull_interval, n)
        picked = self._random_members(1, exclude=None, include_dead=False)
        if picked:
            self._pushpull_out.append(self._members[picked[0]].addr)

    def make_pushpull(self, now: float, join: bool = False, reply: bool = False) -> bytes:
        """Our full state as one sealed stream packet (the driver frames it on TCP)."""
        members = tuple(MemberState(m.node, m.name, m.addr, m.incarnation, m.state, m.facts)
                        for m in self._members.values())
        msg = PushPull(reply, join, members, tuple(self._records.all()))
        self._counter += 1
        data = self.keyring.seal(codec.encode_stream(self._epoch, self._counter, self.id, msg))
        self.stats.bytes_sent += len(data)
        self.stats.pushpull_bytes_sent += len(data)
        return data

    def receive_stream(self, data: bytes, addr: Addr, now: float) -> bytes | None:
        """Handle a push-pull packet from TCP. Returns our reply to a request, None otherwise
        (also when the packet was refused: it is counted, and the driver closes the stream)."""
        self._check_stall(now)
        st = self.stats
        st.bytes_received += len(data)
        if len(data) > MAX_STREAM:
            st.oversized_packets += 1
            return None
        try:
            plain = self.keyring.open(data)
        except PeerError:
            st.decrypt_failures += 1
            return None
        try:
            epoch, counter, sender, msg = codec.decode_stream(plain)
        except PeerError:
            st.bad_packets += 1
            return None
        if sender == self.id or not self._windows.fresh(sender, epoch, counter):
            st.replayed_packets += 1
            return None
        if not isinstance(msg, PushPull):
            st.bad_messages += 1
            return None
        st.push_pulls += 1
        reply = None if msg.reply else self.make_pushpull(now, reply=True)
        self._merge(msg, sender, now)
        return reply

    def _merge(self, pp: PushPull, sender: str, now: float) -> None:
        for s in pp.members:
            if s.state == State.ALIVE:
                self._on_alive(Alive(s.incarnation, s.node, s.name, s.addr, s.facts), now)
            elif s.state == State.LEFT:
                self._on_dead_claim(Dead(s.incarnation, s.node, s.node), now)
            elif s.node in self._members or s.node == self.id:
                # Remote suspicion or death is only a hint: verify it ourselves
                # (as suspicion) instead of trusting one peer's verdict.
                self._on_suspect(Suspect(s.incarnation, s.node, sender), now)
            elif s.state == State.SUSPECT:
                self._add_member(Member(s.node, s.name, s.addr, s.incarnation, State.ALIVE, s.facts, now))
                self._on_suspect(Suspect(s.incarnation, s.node, sender), now)
            else:  # unknown and dead: remember it (its records stay hidden) but do not gossip
                self._add_member(Member(s.node, s.name, s.addr, s.incarnation, State.DEAD, s.facts, now))
                self._gone[s.node] = now
                self._records.hide_origin(s.node)
        for r in pp.records:
            self._on_record(r, now)

    # ---------------------------------------------------------- housekeeping

    def _add_member(self, m: Member) -> None:
        self._members[m.node] = m
        self._ring = None
        self._peer_index[m.node] = len(self._peers)
        self._peers.append(m.node)

    def _remove_member(self, node: str) -> None:
        del self._members[node]
        self._ring = None
        i = self._peer_index.pop(node)
        last = self._peers.pop()
        if last != node:
            self._peers[i] = last
            self._peer_index[last] = i
        self._windows.forget(node)
        self._suspicions.pop(node, None)
        self._gone.pop(node, None)
        self._records.forget_origin(node)

    def _housekeeping(self, now: float) -> None:
        self._next_housekeeping = now + self.p.probe_interval
        gone = [n for n, since in self._gone.items() if now - since > self.p.dead_reclaim_time]
        for n in gone:
            self._remove_member(n)
        self._records.expire_tombstones(now)
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.p.reconnect_interval
            dead = [n for n in self._gone if self._members[n].state == State.DEAD]
            if dead:  # a healed partition is found again through its dead members
                self._pushpull_out.append(self._members[self.rng.choice(dead)].addr)
