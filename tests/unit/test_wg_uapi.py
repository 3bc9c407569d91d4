"""The UAPI text protocol: requests we send and answers we parse."""

from __future__ import annotations

import pytest

from meshcore.errors import PeerError, Unavailable
from meshagent.wg.keys import generate_private_key, public_key, to_hex
from meshagent.wg.model import InterfaceConfig, PeerConfig, diff
from meshagent.wg.uapi import check_errno, encode_set, parse_get

PRIV = generate_private_key()
K1, K2, K3 = (public_key(generate_private_key()) for _ in range(3))


def cfg(*peers, port=51820) -> InterfaceConfig:
    return InterfaceConfig("wg0", PRIV, "100.64.0.1/32", port, 1420, peers).validated()


def test_set_for_a_new_device_carries_key_port_and_peers():
    want = cfg(PeerConfig(K1, "198.18.0.4:51820", ("10.0.0.1/32",), 25))
    text = encode_set(want, diff(None, want))
    assert text.startswith("set=1\n") and text.endswith("\n\n")
    assert f"private_key={to_hex(PRIV)}" in text and "listen_port=51820" in text
    assert (f"public_key={to_hex(K1)}\nendpoint=198.18.0.4:51820\npersistent_keepalive_interval=25\n"
            "replace_allowed_ips=true\nallowed_ip=10.0.0.1/32") in text
    assert "replace_peers" not in text  # only the difference, never a wholesale replace


def test_set_for_a_change_touches_only_the_changed_peers():
    cur = cfg(PeerConfig(K1, "198.18.0.4:1", ("10.0.0.1/32",)), PeerConfig(K2, None, ("10.0.0.2/32",)))
    want = cfg(PeerConfig(K1, "198.18.0.4:2", ("10.0.0.1/32",)), PeerConfig(K3, None, ("10.0.0.3/32",)))
    text = encode_set(want, diff(cur, want))
    assert "private_key" not in text and "listen_port" not in text
    assert f"public_key={to_hex(K2)}\nremove=true" in text
    assert f"public_key={to_hex(K1)}\nupdate_only=true\nendpoint=198.18.0.4:2" in text
    assert f"public_key={to_hex(K3)}\npersistent_keepalive_interval=0" in text  # no endpoint line: learned


def test_remembered_endpoint_is_used_only_when_adding_a_nat_peer():
    want = cfg(PeerConfig(K1, None, ("10.0.0.1/32",)), PeerConfig(K2, "198.18.0.9:7", ("10.0.0.2/32",)))
    text = encode_set(want, diff(None, want), hints={K1: "198.18.0.30:40000", K2: "198.18.0.99:1"})
    assert f"public_key={to_hex(K1)}\nendpoint=198.18.0.30:40000" in text
    assert "198.18.0.99" not in text  # a desired endpoint wins over a remembered one


GET = f"""private_key={to_hex(PRIV)}
listen_port=51820
public_key={to_hex(K1)}
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
protocol_version=1
endpoint=198.18.0.4:51820
last_handshake_time_sec=1700000000
last_handshake_time_nsec=5
tx_bytes=100
rx_bytes=200
persistent_keepalive_interval=25
allowed_ip=10.0.0.1/32
allowed_ip=10.0.0.5/32
public_key={to_hex(K2)}
protocol_version=1
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
errno=0
"""


def test_get_is_parsed_into_config_and_stats():
    key, port, peers, stats = parse_get(GET)
    assert key == PRIV and port == 51820
    assert peers[0] == PeerConfig(K1, "198.18.0.4:51820", ("10.0.0.1/32", "10.0.0.5/32"), 25)
    assert peers[1] == PeerConfig(K2, None, (), 0)
    assert (stats[0].rx_bytes, stats[0].tx_bytes, stats[0].last_handshake_s) == (200, 100, 1700000000)


def test_errors_in_answers():
    with pytest.raises(PeerError, match="errno=2"):
        parse_get("errno=2\n")
    with pytest.raises(PeerError, match="key=value"):
        parse_get("garbage\n")
    check_errno("errno=0\n")
    with pytest.raises(Unavailable, match="refused"):
        check_errno("errno=22\n")
    with pytest.raises(Unavailable, match="without an errno"):
        check_errno("")
