"""Profiles and timing formulas."""

from __future__ import annotations

import pytest

from meshcore.errors import ConfigError
from meshcore.gossip.profiles import (
    GossipProfile, lan, local, profile, push_pull_scale, remaining_suspicion, retransmit_limit,
    suspicion_confirmations, suspicion_timeout, wan,
)


def test_formulas_match_the_swim_and_lifeguard_shapes():
    assert suspicion_timeout(4, 100, 1.0) == pytest.approx(8.0)
    assert suspicion_timeout(4, 1000, 1.0) == pytest.approx(12.0)
    assert suspicion_timeout(4, 3, 1.0) == pytest.approx(4.0)  # log10 floored at 1
    assert retransmit_limit(4, 9) == 4 and retransmit_limit(4, 1000) == 16
    # k is at most the n - 2 members that are neither the suspect nor the first suspector
    assert suspicion_confirmations(3, 100) == 3 and suspicion_confirmations(3, 4) == 2
    assert suspicion_confirmations(3, 2) == 0 and suspicion_confirmations(3, 1) == 0
    lo, hi = 8.0, 48.0
    steps = [remaining_suspicion(c, 2, 0.0, lo, hi) for c in range(4)]
    assert steps[0] == hi and steps[2] == pytest.approx(lo) and steps[3] == lo
    assert steps[0] > steps[1] > steps[2]
    assert remaining_suspicion(0, 2, 10.0, lo, hi) == hi - 10.0
    assert push_pull_scale(30.0, 32) == 30.0 and push_pull_scale(30.0, 1000) == 180.0


def test_profiles_order_their_trade_offs():
    assert local().probe_interval < lan().probe_interval < wan().probe_interval
    assert lan().suspicion_mult <= wan().suspicion_mult
    assert profile("wan") == wan()


def test_bad_profiles_name_the_rule():
    with pytest.raises(ConfigError, match="unknown gossip profile 'moon'"):
        profile("moon")
    with pytest.raises(ConfigError, match="positive"):
        GossipProfile(probe_interval=0)
    with pytest.raises(ConfigError, match="shorter than probe_interval"):
        lan().with_(probe_timeout=2.0)
    with pytest.raises(ConfigError, match="max_datagram"):
        lan().with_(max_datagram=100)
