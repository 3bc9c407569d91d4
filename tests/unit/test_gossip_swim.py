"""The SWIM/Lifeguard state machine, driven by hand: fed packets and `now`, checked
through its datagrams, events and counters."""

from __future__ import annotations

import random

import pytest

from meshcore.errors import InvalidArgument
from meshcore.gossip import codec
from meshcore.gossip.keyring import Plaintext
from meshcore.gossip.messages import (
    Ack, Alive, Dead, IndirectPing, MemberState, Nack, Ping, Record, State, Suspect,
)
from meshcore.gossip.profiles import lan
from meshcore.gossip.swim import MemberEvent, Swim
from tests.sim.invariants import check_invariants

PLAIN = Plaintext()


def good_sig(r: Record) -> bool:
    return r.signature == b"meshd"


def addr(i: int) -> tuple[str, int]:
    return (f"10.0.0.{i}", 7946)


def make(i: int = 1, peers: int = 0, profile=None, now: float = 0.0) -> Swim:
    s = Swim(f"n{i}", f"vm-{i}", addr(i), profile or lan(), random.Random(i), PLAIN, good_sig, now=now)
    s.seed_members([MemberState(f"n{j}", f"vm-{j}", addr(j), 0, State.ALIVE, b"")
                    for j in range(2, 2 + peers)], now)
    return s


class Peer:
    """Writes packets as member `node` would (its own epoch and counter)."""

    def __init__(self, node: str, epoch: int = 1) -> None:
        self.node, self.epoch, self.counter = node, epoch, 0

    def packet(self, *msgs) -> bytes:
        self.counter += 1
        framed = [codec.frame(codec.encode_message(m)) for m in msgs]
        return PLAIN.seal(codec.encode_packet(self.epoch, self.counter, self.node, framed))


def sent(s: Swim) -> list[tuple[tuple[str, int], list]]:
    out = []
    for data, to in s.datagrams_to_send():
        _, _, _, raws = codec.decode_packet(PLAIN.open(data))
        out.append((to, [codec.decode_message(r) for r in raws]))
    return out


def run(s: Swim, until: float, collect: list | None = None) -> None:
    """Tick `s` at its own timers until `until` (bounded)."""
    for _ in range(100_000):
        t = s.next_timer()
        if t > until:
            return
        s.tick(t)
        out = sent(s)
        if collect is not None:
            collect.extend(out)
    raise AssertionError("timer loop did not converge")


def test_refutes_a_suspicion_about_itself():
    s = make(peers=3)
    s.receive(Peer("n2").packet(Suspect(0, "n1", "n2")), addr(2), 0.1)
    assert s.incarnation == 1 and s.stats.refutations == 1
    out: list = []
    run(s, 1.0, out)
    assert any(isinstance(m, Alive) and m.node == "n1" and m.incarnation == 1 for _, ms in out for m in ms)
    check_invariants(s)


def test_an_accusation_of_a_newer_incarnation_starts_a_new_suspicion():
    """We suspect n2 at incarnation 0 and miss its refutation (incarnation 1). Claims that
    incarnation 1 is suspect are a new episode: its timer starts when they arrive. Were they
    counted as confirmations of our old suspicion, its floor would run from before n2 last
    answered, and a member frozen for less than the floor would be declared dead."""
    s = make(peers=20)
    s.receive(Peer("n3").packet(Suspect(0, "n2", "n3")), addr(3), 1.0)
    lo = max(lan().suspicion_min_timeout, lan().suspicion_mult * 1.3222 * lan().probe_interval)
    later = 1.0 + lo - 0.5  # n2 refuted meanwhile (we missed it) and is suspected again
    for i in (4, 5, 6, 7):
        s.receive(Peer(f"n{i}").packet(Suspect(1, "n2", f"n{i}")), addr(i), later)
    sus = s._suspicions["n2"]
    assert (sus.start, s.member("n2").incarnation) == (later, 1)
    assert sus.deadline == pytest.approx(later + lo, abs=0.01)
    assert s.stats.suspicions_restarted == 1
    run(s, 1.0 + lo + 0.5)  # where the old episode would have ended
    assert s.member("n2").state == State.SUSPECT
    assert [e.kind for e in s.events() if isinstance(e, MemberEvent) and e.member.node == "n2"] == ["suspect"]


def test_stale_incarnation_is_ignored():
    s = make(peers=1)
    p = Peer("n2")
    s.receive(p.packet(Alive(5, "n2", "vm-2", addr(2), b"new")), addr(2), 0.1)
    assert s.member("n2").incarnation == 5 and s.member("n2").facts == b"new"
    s.receive(p.packet(Alive(3, "n2", "vm-2", ("6.6.6.6", 1), b"old")), addr(2), 0.2)
    s.receive(p.packet(Suspect(4, "n2", "n2")), addr(2), 0.3)
    m = s.member("n2")
    assert (m.addr, m.state, m.incarnation) == (addr(2), State.ALIVE, 5)


def test_suspicion_shrinks_with_confirmations_then_declares_dead():
    s = make(peers=20)
    s.receive(Peer("n3").packet(Suspect(0, "n2", "n3")), addr(3), 1.0)
    assert s.member("n2").state == State.SUSPECT
    hi = s._suspicions["n2"].deadline
    s.receive(Peer("n4").packet(Suspect(0, "n2", "n4")), addr(4), 1.1)
    s.receive(Peer("n4").packet(Suspect(0, "n2", "n4")), addr(4), 1.2)  # same confirmer twice
    mid = s._suspicions["n2"].deadline
    s.receive(Peer("n5").packet(Suspect(0, "n2", "n5")), addr(5), 1.3)
    mid2 = s._suspicions["n2"].deadline
    assert lan().suspicion_confirmations == 3
    s.receive(Peer("n6").packet(Suspect(0, "n2", "n6")), addr(6), 1.4)
    lo = s._suspicions["n2"].deadline
    # mult * log10(21) * probe interval, at least the floor
    floor = max(lan().suspicion_min_timeout, lan().suspicion_mult * 1.3222 * lan().probe_interval)
    assert hi > mid > mid2 > lo == pytest.approx(1.0 + floor, abs=0.01)
    s.receive(Peer("n7").packet(Suspect(0, "n2", "n7")), addr(7), 1.5)  # past k: changes nothing
    assert s._suspicions["n2"].deadline == lo
    assert s.stats.suspicions_confirmed == 3
    s.events()
    run(s, lo + 0.01)
    assert s.member("n2").state == State.DEAD
    # (our own probes meanwhile go unanswered in this harness: look at n2 only)
    assert [e.kind for e in s.events() if isinstance(e, MemberEvent) and e.member.node == "n2"] == ["dead"]
    check_invariants(s)


@pytest.mark.parametrize("past_floor", [0.3, 0.0, -0.1])
def test_a_confirmation_at_or_past_the_floor_ends_the_suspicion_without_a_false_stall(past_floor):
    """We heard the suspicion of n2 with two confirmations (a long timer); the third arrives
    when the floor has (nearly) run, as when the first member to decide gossips its verdict. The
    suspicion ends then, not a second later: a last chance or deadline moved into the past is
    not this process stalling (which extends every suspicion by a probe interval)."""
    s = make(peers=20)
    for i, t in ((3, 1.0), (4, 1.1), (5, 1.2)):
        run(s, t)
        s.receive(Peer(f"n{i}").packet(Suspect(0, "n2", f"n{i}")), addr(i), t)
    floor = s._suspicions["n2"].lo
    assert s._suspicions["n2"].deadline > 1.0 + floor + 1
    when = 1.0 + floor + past_floor
    run(s, when)  # the harness ticks every timer on time: no stall of ours
    stalls = s.stats.stalls_detected
    sent(s)
    # the third confirmation (an agent reads a peer's verdict as one: membership is authenticated)
    s.receive(Peer("n6").packet(Suspect(0, "n2", "n6")), addr(6), when)
    pinged = [m for to, ms in sent(s) if to == addr(2) for m in ms if isinstance(m, Ping)]
    assert len(pinged) == (1 if past_floor < 0 else 0)  # the last chance, when time is left for it
    s.receive(Peer("n7").packet(Alive(0, "n7", "vm-7", addr(7))), addr(7), when + 0.01)
    run(s, max(when, 1.0 + floor) + 0.02)
    assert s.stats.stalls_detected == stalls
    assert s.member("n2").state == State.DEAD
    check_invariants(s)


def test_replayed_and_old_epoch_packets_are_dropped():
    s = make(peers=2)
    p = Peer("n2", epoch=10)
    pkt = p.packet(Alive(1, "n2", "vm-2", addr(2)))
    s.receive(pkt, addr(2), 0.1)
    s.receive(pkt, addr(2), 0.2)
    assert s.stats.replayed_packets == 1
    for _ in range(70):
        s.receive(p.packet(Ack(99)), addr(2), 0.3)
    p.counter = 2  # far behind the window
    s.receive(p.packet(Ack(99)), addr(2), 0.4)
    old = Peer("n2", epoch=9)
    s.receive(old.packet(Ack(99)), addr(2), 0.5)
    assert s.stats.replayed_packets == 3
    newer = Peer("n2", epoch=11)  # the sender restarted: a new window
    s.receive(newer.packet(Ack(99)), addr(2), 0.6)
    assert s.stats.replayed_packets == 3


def test_bad_packets_are_counted_and_dropped():
    s = make(peers=2)
    before = s.members()
    s.receive(b"\x00" * 2000, addr(2), 0.1)            # oversized
    s.receive(b"\x01" + b"\x00" * 40, addr(2), 0.1)     # encrypted, but we are plaintext
    s.receive(b"\x00\x01\x02", addr(2), 0.1)            # truncated header
    s.receive(Peer("n2").packet(Ping(1, "n1"))[:-2], addr(2), 0.1)  # truncated message
    s.receive(PLAIN.seal(codec.encode_packet(1, 1, "n3", [codec.frame(b"\x63junk")])), addr(3), 0.1)
    st = s.stats
    assert (st.oversized_packets, st.decrypt_failures, st.bad_packets, st.bad_messages) == (1, 1, 2, 1)
    assert st.packets_received == 5
    assert s.members() == before
    check_invariants(s)


def test_forged_record_is_refused():
    s = make(peers=1)
    forged = Record("svc", 1, "n2", b"10.6.6.6", False, b"forged")
    s.receive(Peer("n2").packet(forged), addr(2), 0.1)
    assert s.stats.signature_failures == 1 and s.records() == {}
    with pytest.raises(InvalidArgument, match="signed by meshd"):
        s.publish(forged, 0.2)
    ok = Record("svc", 1, "n2", b"10.0.0.2", False, b"meshd")
    s.receive(Peer("n3").packet(ok), addr(3), 0.3)
    assert s.records() == {"svc": ok}


def test_records_of_a_dead_member_hide_and_return_on_refutation():
    s = make(peers=2)
    rec = Record("svc", 1, "n2", b"x", False, b"meshd")
    assert s.publish(rec, 0.0)
    s.events()
    s.receive(Peer("n3").packet(Dead(0, "n2", "n3")), addr(3), 0.1)
    assert s.records() == {}
    assert [(type(e).__name__, e.kind) for e in s.events()] == [("MemberEvent", "dead"), ("RecordEvent", "removed")]
    s.receive(Peer("n2").packet(Alive(1, "n2", "vm-2", addr(2))), addr(2), 0.2)
    assert s.records() == {"svc": rec}
    assert [e.kind for e in s.events()] == ["alive", "set"]
    assert s.stats.false_positives == 1
    check_invariants(s)


def test_buddy_system_tells_the_suspect_on_the_ping():
    s = make(peers=1)
    s.receive(Peer("n3").packet(Suspect(0, "n2", "n3")), addr(3), 0.0)
    out: list = []
    run(s, 1.5, out)
    pings = [ms for to, ms in out if any(isinstance(m, Ping) for m in ms)]
    assert pings and isinstance(pings[0][0], Suspect) and pings[0][0].node == "n2"


def _probe_round(s: Swim, nack: bool) -> None:
    out: list = []
    t0 = s.next_timer()
    run(s, t0 + 0.6, out)  # past the direct timeout: indirect pings sent
    reqs = [(to, m) for to, ms in out for m in ms if isinstance(m, IndirectPing)]
    assert len(reqs) == 3
    if nack:
        for to, m in reqs:
            helper = next(n for n in s._members.values() if n.addr == to)
            s.receive(Peer(helper.node).packet(Nack(m.seq)), to, t0 + 0.7)
    run(s, t0 + 1.05)


def test_local_health_rises_only_when_helpers_do_not_even_nack():
    quiet = make(peers=5)
    _probe_round(quiet, nack=False)
    assert quiet.local_health == 3 and quiet.stats.probes_failed == 1
    helped = make(peers=5)
    _probe_round(helped, nack=True)
    assert helped.local_health == 0 and helped.stats.nacks_received == 3
    assert helped.stats.suspicions == 1  # the target is still suspected


def test_a_helper_nacks_in_time_for_the_requesters_probe_to_count_it():
    # The requester asks for help once its direct ping timed out, and judges its own
    # health when its interval ends: the nack must arrive in between, with room for
    # the round trip, or every failed probe of a crashed member counts against it.
    p = lan()
    helper = make(1, peers=3)
    start = 5.0  # the requester's probe began here
    helper.receive(Peer("n2").packet(IndirectPing(77, "n3", addr(3), True)), addr(2), start + p.probe_timeout)
    out: list = []
    run(helper, start + p.probe_interval - 0.05, out)
    assert any(to == addr(2) and isinstance(m, Nack) and m.seq == 77 for to, ms in out for m in ms)


def test_a_stall_extends_deadlines_instead_of_blaming_the_peer():
    s = make(peers=3)
    out: list = []
    t0 = s.next_timer()
    run(s, t0, out)
    ping = next(m for _, ms in out for m in ms if isinstance(m, Ping))
    s.tick(t0 + 3.0)  # woke up three seconds late: the ack is still queued
    assert s.stats.stalls_detected == 1 and s.stats.probes_failed == 0
    target = ping.target
    s.receive(Peer(target).packet(Ack(ping.seq)), s.member(target).addr, t0 + 3.0)
    assert s.stats.suspicions == 0 and s.stats.acks_received == 1 and s.stats.probes_failed == 0
    assert s.member(target).state == State.ALIVE and s._probe is None


def test_restart_with_stale_incarnation_refutes_through_push_pull():
    a = make(1, peers=0)
    a.receive(Peer("n2", epoch=1).packet(Alive(5, "n2", "vm-2", addr(2))), addr(2), 0.0)
    a.receive(Peer("n3").packet(Dead(5, "n2", "n3")), addr(3), 0.1)
    assert a.member("n2").state == State.DEAD
    b = Swim("n2", "vm-2", addr(2), lan(), random.Random(2), PLAIN, good_sig, epoch=2, now=1.0)
    reply = a.receive_stream(b.make_pushpull(1.0, join=True), addr(2), 1.0)
    assert a.member("n2").state == State.DEAD  # its Alive(0) is stale
    assert b.receive_stream(reply, addr(1), 1.1) is None
    assert b.incarnation == 6 and b.stats.refutations == 1
    for _ in range(50):
        for data, to in b.datagrams_to_send():
            if to == addr(1):
                a.receive(data, addr(2), 1.2)
        if a.member("n2").state == State.ALIVE:
            break
        b.tick(b.next_timer())
    assert a.member("n2").state == State.ALIVE and a.member("n2").incarnation == 6
    check_invariants(a)
    check_invariants(b)


def test_graceful_leave_and_facts_update():
    a, p = make(1, peers=1), Peer("n2")
    a.receive(p.packet(Alive(1, "n2", "vm-2", addr(2), b"gpus=4")), addr(2), 0.0)
    assert [e.kind for e in a.events()] == ["update"]
    a.receive(p.packet(Dead(2, "n2", "n2")), addr(2), 0.1)
    assert a.member("n2").state == State.LEFT
    a.leave(0.2)
    out: list = []
    run(a, 0.5, out)  # n2 is gone, so nothing to gossip to: no crash either
    check_invariants(a)
    with pytest.raises(InvalidArgument, match="facts"):
        a.update_facts(b"x" * 5000, 0.3)


def test_messages_that_cannot_fit_a_datagram_are_refused_up_front():
    s = make(peers=1)
    big = Record("s" * 200, 1, "n" * 200, b"x" * 1024, False, b"meshd")
    with pytest.raises(InvalidArgument, match="must fit one 1400-byte datagram"):
        s.publish(big, 0.0)
    with pytest.raises(InvalidArgument, match="facts"):
        Swim("n1", "vm-1", addr(1), lan().with_(max_datagram=512), random.Random(1), PLAIN, good_sig,
             facts=b"f" * 600)


def test_last_chance_ping_lets_a_member_that_missed_the_refutation_recover():
    holdout = make(1, peers=20)
    holdout.receive(Peer("n3").packet(Suspect(0, "n2", "n3")), addr(3), 0.0)
    out: list = []
    # Our own probes go unanswered (our failed probe of n2 confirms the suspicion and
    # moves its deadline): tick until the last-chance ping is out, bounded.
    for _ in range(100_000):
        sus = holdout._suspicions["n2"]
        if sus.chances == 0:
            break
        holdout.tick(holdout.next_timer())
        out.extend(sent(holdout))
    deadline = holdout._suspicions["n2"].deadline
    last = [ms for to, ms in out if to == addr(2) and isinstance(ms[0], Suspect) and ms[0].node == "n2"]
    assert last, "a ping carrying the suspicion goes to the suspect"
    assert holdout._suspicions["n2"].chances == 0, "the last-chance pings were sent before the deadline"
    # The suspect refuted long ago (incarnation 1); the stale accusation makes it re-gossip ALIVE.
    suspect = Swim("n2", "vm-2", addr(2), lan(), random.Random(2), PLAIN, good_sig, now=0.0)
    suspect.receive(Peer("n9").packet(Suspect(0, "n2", "n9")), addr(9), 0.0)
    assert suspect.incarnation == 1
    suspect.datagrams_to_send()
    suspect._queue.clear()  # its refutation has been fully gossiped meanwhile
    framed = [codec.frame(codec.encode_message(m)) for m in last[-1]]
    suspect.receive(PLAIN.seal(codec.encode_packet(0, 999, "n1", framed)), addr(1), deadline - 0.4)
    assert suspect.incarnation == 1 and suspect.stats.refutations == 1  # no new incarnation
    for data, to in suspect.datagrams_to_send():
        holdout.receive(data, addr(2), deadline - 0.3)
    run(holdout, deadline + 0.1)
    assert holdout.member("n2").state == State.ALIVE and holdout.member("n2").incarnation == 1


def test_each_interval_every_member_is_probed_by_exactly_one_peer():
    n = 12
    # Different monotonic clocks, one wall clock: the offsets differ, the shared slots do not.
    members = [Swim(f"n{i}", f"vm-{i}", addr(i), lan(), random.Random(i), PLAIN, good_sig, now=0.0,
                    clock_offset=1.7e9 + 37.25 * i) for i in range(n)]
    for s in members:
        s.seed_members([MemberState(f"n{j}", f"vm-{j}", addr(j), 0, State.ALIVE, b"")
                        for j in range(n)], 0.0)
    wall_slot = 1_700_000_123
    seen = {s.id: set() for s in members}
    for slot in range(wall_slot, wall_slot + n - 1):
        targets = [s._slot_target(slot) for s in members]
        assert sorted(targets) == sorted(s.id for s in members), "a permutation: one prober per member"
        assert all(t != s.id for s, t in zip(members, targets))
        for s, t in zip(members, targets):
            seen[s.id].add(t)
    assert all(len(v) == n - 1 for v in seen.values()), "every member probes every other once per round"
    # The slot a probe is sent in is the same on every member's own clock.
    a, b = members[0], members[5]
    t_a = a._probe_time(wall_slot)  # a's monotonic time of the slot
    assert b._probe_slot(t_a + (a._slot_base - b._slot_base) * lan().probe_interval + (a._slot_frac - b._slot_frac)
                         + b._probe_phase - a._probe_phase) == wall_slot


def test_probes_follow_the_slots_and_a_dead_member_leaves_the_ring():
    s = make(1, peers=5)  # n1..n6, every peer answers every ping at once
    peers = {f"n{j}": Peer(f"n{j}") for j in range(2, 7)}

    def probe_targets(until: float) -> list[str]:
        targets = []
        for _ in range(10_000):  # bounded
            t = s.next_timer()
            if t > until:
                return targets
            s.tick(t)
            for to, ms in sent(s):
                for m in ms:
                    if isinstance(m, Ping):
                        targets.append(m.target)
                        s.receive(peers[m.target].packet(Ack(m.seq)), to, t + 0.001)
        raise AssertionError("timer loop did not converge")

    first = probe_targets(10.0)
    assert len(first) >= 9 and set(first) == set(peers), "one probe per interval, every peer in turn"
    assert all(set(first[k:k + 5]) == set(peers) for k in range(0, len(first) - 4, 5)), "round robin"
    s.receive(peers["n3"].packet(Dead(0, "n4", "n3")), addr(3), 10.0)  # no verify_leave: trusted
    assert s.member("n4").state == State.DEAD and "n4" not in s._live_ring()
    later = probe_targets(30.0)
    assert len(later) >= 19 and set(later) == set(peers) - {"n4"}
    assert s.local_health == 0
    check_invariants(s)
