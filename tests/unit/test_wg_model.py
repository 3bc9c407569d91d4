"""Validation of WireGuard desired state and the diff between two states."""

from __future__ import annotations

import base64

import pytest

from meshcore.errors import InvalidArgument
from meshagent.wg.keys import generate_private_key, public_key
from meshagent.wg.model import (InterfaceConfig, PeerConfig, check_cidr, check_endpoint, check_ifname, check_key,
                                diff)

PRIV = generate_private_key()
K1, K2, K3 = (public_key(generate_private_key()) for _ in range(3))


def iface(*peers, **kw) -> InterfaceConfig:
    base = dict(name="wg0", private_key=PRIV, address="100.64.0.1/32", listen_port=51820, mtu=1420, peers=peers)
    base.update(kw)
    return InterfaceConfig(**base).validated()


@pytest.mark.parametrize("bad", ["", "abc", "A" * 44, base64.b64encode(b"x" * 31).decode(),
                                 base64.b64encode(b"x" * 33).decode(), base64.b64encode(bytes(32)).decode(),
                                 # a real key with one character swapped (fixed: test ids stay the same)
                                 public_key(base64.b64encode(bytes(range(32))).decode())[:-1] + "!", 42])
def test_bad_keys_are_refused_naming_the_rule(bad):
    with pytest.raises(InvalidArgument) as e:
        check_key(bad)
    assert "invalid" in str(e.value) or "all-zero" in str(e.value)


def test_good_key_passes():
    assert check_key(K1) == K1


@pytest.mark.parametrize("raw, norm", [
    ("198.18.0.4:51820", "198.18.0.4:51820"), ("[fd00::1]:1", "[fd00::1]:1"),
    ("[FD00:0::1]:00080", "[fd00::1]:80"),
])
def test_endpoints_are_normalised(raw, norm):
    assert check_endpoint(raw) == norm


@pytest.mark.parametrize("bad", ["", "198.18.0.4", "198.18.0.4:0", "198.18.0.4:65536", "host.example:51820",
                                 "fd00::1:51820", "0.0.0.0:51820", "224.0.0.5:51820", "255.255.255.255:1",
                                 "[::]:51820", ":51820", "198.18.0.4:-1", "198.18.0.4:5x"])
def test_bad_endpoints_are_refused(bad):
    with pytest.raises(InvalidArgument, match="endpoint"):
        check_endpoint(bad)


def test_cidr_and_ifname_rules():
    assert check_cidr("10.0.0.1/32") == "10.0.0.1/32"
    with pytest.raises(InvalidArgument, match="host bits"):
        check_cidr("10.0.0.1/24")
    with pytest.raises(InvalidArgument, match="CIDR"):
        check_cidr("nonsense")
    for bad in ("", "a" * 16, "wg 0", "wg/0", "..", None):
        with pytest.raises(InvalidArgument, match="interface name"):
            check_ifname(bad)


def test_interface_rules():
    with pytest.raises(InvalidArgument, match="MTU"):
        iface(mtu=1000)
    with pytest.raises(InvalidArgument, match="listen port"):
        iface(listen_port=70000)
    with pytest.raises(InvalidArgument, match="interface address"):
        iface(address="nope")
    with pytest.raises(InvalidArgument, match="twice"):
        iface(PeerConfig(K1), PeerConfig(K1))
    with pytest.raises(InvalidArgument, match="two peers"):
        iface(PeerConfig(K1, allowed_ips=("10.0.0.1/32",)), PeerConfig(K2, allowed_ips=("10.0.0.1/32",)))
    with pytest.raises(InvalidArgument, match="keepalive"):
        iface(PeerConfig(K1, persistent_keepalive=-1))
    with pytest.raises(InvalidArgument, match="peer public key"):
        iface(PeerConfig("bad"))


def test_validated_sorts_and_normalises():
    c = iface(PeerConfig(K2, "[FD00::1]:5", ("10.0.0.2/32", "10.0.0.1/32")), PeerConfig(K1))
    assert [p.public_key for p in c.peers] == sorted([K1, K2])
    p2 = c.peer_map()[K2]
    assert p2.allowed_ips == ("10.0.0.1/32", "10.0.0.2/32") and p2.endpoint == "[fd00::1]:5"
    assert c.validated() == c


def test_diff_of_nothing_creates_everything():
    d = diff(None, iface(PeerConfig(K1)))
    assert d.created and d.added == [K1] and not d.empty


def test_diff_of_equal_states_is_empty():
    c = iface(PeerConfig(K1, "198.18.0.4:51820", ("10.0.0.1/32",), 25))
    d = diff(c, c)
    assert d.empty and str(d) == "no change"


def test_diff_names_each_change():
    cur = iface(PeerConfig(K1, "198.18.0.4:1", ("10.0.0.1/32",)), PeerConfig(K2))
    want = iface(PeerConfig(K1, "198.18.0.4:2", ("10.0.0.1/32",)), PeerConfig(K3), mtu=1280)
    d = diff(cur, want)
    assert (d.added, d.removed, d.changed, d.interface) == ([K3], [K2], [K1], ["mtu"])
    assert "added 1" in str(d) and "removed 1" in str(d)


def test_learned_endpoint_is_not_a_change_and_port_zero_accepts_any_port():
    cur = iface(PeerConfig(K1, "198.18.0.30:40000", ("10.0.0.1/32",)), listen_port=43210)
    want = iface(PeerConfig(K1, None, ("10.0.0.1/32",)), listen_port=0)
    assert diff(cur, want).empty


def test_allowed_ips_order_does_not_matter_but_content_does():
    a = iface(PeerConfig(K1, None, ("10.0.0.1/32", "10.0.0.2/32")))
    b = InterfaceConfig("wg0", PRIV, "100.64.0.1/32", 51820, 1420, (PeerConfig(K1, None, ("10.0.0.2/32", "10.0.0.1/32")),))
    assert diff(b, a).empty
    c = iface(PeerConfig(K1, None, ("10.0.0.1/32",)))
    assert diff(a, c).changed == [K1]
