"""Invariants every `Swim` state must keep, whatever it was fed (used by the
property, unit and simulator tests)."""

from __future__ import annotations

from meshcore.gossip.messages import State
from meshcore.gossip.swim import Swim


def check_invariants(s: Swim) -> None:
    me = s._members[s.id]
    assert me.state == (State.LEFT if s._leaving else State.ALIVE), "self must be alive unless leaving"
    suspects = {n for n, m in s._members.items() if m.state == State.SUSPECT}
    assert set(s._suspicions) == suspects, "a suspicion timer exists exactly for each suspect"
    gone = {n for n, m in s._members.items() if m.state in (State.DEAD, State.LEFT) and n != s.id}
    assert set(s._gone) == gone, "the dead/left index matches member states"
    assert sorted(s._peers) == sorted(n for n in s._members if n != s.id), "peers are all members but self"
    assert all(s._peers[i] == n for n, i in s._peer_index.items()), "peer index is consistent"
    assert 0 <= s.local_health < s.p.awareness_max_multiplier, "local health stays in range"
    for n, m in s._members.items():
        assert m.incarnation >= 0 and isinstance(m.addr, tuple)
    for key, r in s.records().items():
        assert key == r.key and not r.deleted and r.origin not in s._gone, "visible records are live"
    assert s.next_timer() < float("inf"), "there is always a next timer"
