"""A profile switch keeps every node's identity and name: a real meshd on SQLite, its store copied into a
real three-member etcd and served from there at the same address, then copied back to SQLite, with real
agents connected throughout (testbed/storeswitch.py does the moves; this checks what they kept)."""

from __future__ import annotations

from testbed import storeswitch


def test_a_profile_switch_keeps_every_nodes_identity_and_name(tmp_path):
    run = storeswitch.run(tmp_path / "switch")
    assert sorted(run.before) == sorted(storeswitch.AGENTS)
    assert all(node_id and address for node_id, address in run.before.values())
    assert [h.to.split(":")[0] for h in run.hops] == ["etcds", "sqlite"]  # etcd over TLS, as on replicas
    for after in run.after:  # same ids, names and mesh addresses after each hop
        assert after == run.before
    for tokens in run.tokens_after:  # use counts and revocations moved with the store
        assert tokens == run.tokens_before
    assert [t["revoked"] for t in run.tokens_before].count(True) == 1
    # no node joined again: the new meshd admitted nobody, every agent process joined once and still runs
    assert [h.joins for h in run.hops] == [0, 0]
    assert run.agent_joins == {a: 1 for a in storeswitch.AGENTS}
    assert run.agent_pids_unchanged
    # the store keeps its id and takes a new epoch at each import, so every agent resynced in full
    ids = {t.split("/")[0] for t in run.store_tokens}
    epochs = [int(t.split("/")[1]) for t in run.store_tokens]
    assert len(ids) == 1 and epochs[0] < epochs[1]
    assert all("store " + t.split("/")[0] in h.copy_output for h, t in zip(run.hops, run.store_tokens))
