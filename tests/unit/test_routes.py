"""Routes and firewall as desired state: MTU choice, the nft table we render, route diffs."""

from __future__ import annotations

import pytest

from meshcore.errors import InvalidArgument
from meshagent.routes import Route, RouteDiff, RouteState, _digest, choose_mtu, diff_routes, render_nft


def test_mtu_follows_the_path():
    assert choose_mtu(1500) == 1420
    assert choose_mtu(9001) == 8921      # AWS jumbo frames inside a VPC
    assert choose_mtu(1280) == 1280      # never below the IPv6 minimum
    assert choose_mtu(1500, configured=1280) == 1280
    with pytest.raises(InvalidArgument, match="1280"):
        choose_mtu(1500, configured=1000)


def test_no_relay_means_no_table():
    assert render_nft(RouteState()) is None


def test_relay_table_is_ours_deterministic_and_hashed():
    a = render_nft(RouteState(relay_ifaces=("wg0",)))
    assert a.startswith("table inet mesh {") and a == render_nft(RouteState(relay_ifaces=("wg0",)))
    assert 'iifname "wg0" oifname "wg0" accept' in a and "maxseg size set rt mtu" in a
    assert "policy accept" in a  # we add accepts; we never drop what other tables allow
    b = render_nft(RouteState(relay_ifaces=("wg1",)))
    assert _digest(a) != _digest(b) and _digest(a) and _digest(None) is None


def test_route_diff_adds_and_removes_only_the_difference():
    r1, r2, r3 = (Route(f"100.64.0.{i}/32", "wg0", "10.4.0.10") for i in (1, 2, 3))
    assert diff_routes({r1, r2}, {r2, r3}) == ([r3], [r1])
    assert diff_routes({r1}, {r1}) == ([], [])
    assert RouteDiff().empty and not RouteDiff(added=[r1]).empty
