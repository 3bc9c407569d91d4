"""meshd's claim rules: each refused claim is named, and honest nodes pass."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.v1 import types_pb2
from meshd.claims import ClaimRules, Holders, Refused, check

RULES = ClaimRules(endpoint_ranges=("198.18.0.0/15",))
KEY_A, KEY_B = "A" * 43 + "=", "B" * 43 + "="


def aws(name="a", private="10.4.1.20", cidr="10.4.0.0/16", **kw) -> types_pb2.Node:
    return types_pb2.Node(id=f"n-{name}", name=name, cloud="aws", vpc_id="vpc-1", vpc_cidr=cidr,
                          private_address=private, mesh_address=private, **kw)


def test_honest_nodes_pass():
    other = aws("b", "10.4.1.21", wireguard_public_key=KEY_B)
    check(aws(public_address="54.1.2.3", wireguard_public_key=KEY_A), [other], RULES)
    check(types_pb2.Node(id="n-c", name="c", cloud="gcp", private_address="10.128.0.2",
                         public_address="198.18.0.20"), [other], RULES)


@pytest.mark.parametrize("node, why", [
    (aws(private="169.254.169.254", cidr="169.254.0.0/16"), "link-local"),
    (aws(private="127.0.0.1", cidr="127.0.0.0/8"), "loopback"),
    (aws(private="8.8.8.8", cidr="8.8.8.0/24"), "public address"),
    (aws(private="100.96.0.5", cidr="100.96.0.0/16"), "overlay pool"),
    (aws(private="224.0.0.1", cidr="224.0.0.0/8"), "multicast"),
    (aws(private="10.9.0.1", cidr="10.4.0.0/16"), "not inside the VPC CIDR 10.4.0.0/16"),
    (aws(private="172.31.0.5", cidr="172.31.0.0/16"), "outside the mesh's VPC ranges"),
    (aws(cidr=""), "must report its VPC CIDR"),
    (aws(public_address="10.0.0.1"), "public unicast"),
    (aws(public_address="169.254.169.254"), "public unicast"),
])
def test_refused_claims_name_the_fact(node, why):
    with pytest.raises(Refused, match=why):
        check(node, [], RULES)


def test_another_nodes_address_or_key_is_refused():
    holder = aws("b", "10.4.1.21", wireguard_public_key=KEY_B)
    with pytest.raises(Refused, match="private address 10.4.1.21: it belongs to node b"):
        check(aws(private="10.4.1.21"), [holder], RULES)
    with pytest.raises(Refused, match="WireGuard public key: it belongs to node b"):
        check(aws(wireguard_public_key=KEY_B), [holder], RULES)
    with pytest.raises(Refused, match="private address 10.4.1.21: it belongs to node b"):
        check(types_pb2.Node(id="n-x", name="x", cloud="gcp", private_address="10.4.1.21"), [holder], RULES)
    # The same node renewing with its own address and key is fine.
    check(holder, [holder], RULES)


def test_two_home_networks_may_share_a_private_address():
    a = types_pb2.Node(id="n-a", name="a", cloud="onprem", private_address="192.168.1.10", mesh_address="100.96.0.2")
    b = types_pb2.Node(id="n-b", name="b", cloud="onprem", private_address="192.168.1.10")
    check(b, [a], RULES)


def test_token_labels_are_binding():
    node = aws(labels={"team": "ml", "gpu.model": "L4"})
    check(node, [], RULES, token_labels={"team": "ml"})
    with pytest.raises(Refused, match="label team: the join token sets team='ml' and the node sets 'ops'"):
        check(aws(labels={"team": "ops"}), [], RULES, token_labels={"team": "ml"})
    with pytest.raises(Refused, match="drops it"):
        check(aws(labels={}), [], RULES, token_labels={"team": "ml"})


@given(st.ip_addresses(v=4))
def test_any_accepted_public_endpoint_is_public_or_allowed(ip):
    node = types_pb2.Node(id="n-x", name="x", cloud="gcp", public_address=str(ip))
    try:
        check(node, [], RULES)
    except Refused:
        assert not ip.is_global or ip.is_multicast
    else:
        assert ip.is_global or ip in __import__("ipaddress").ip_network("198.18.0.0/15")


def test_holders_follow_changes():
    """meshd keeps who holds each unique fact change by change: a key or address a node gave up,
    or a removed node's, is free at once; one still held is refused."""
    holder = aws(name="holder", private="10.4.1.21", wireguard_public_key=KEY_A)
    holders = Holders.of([holder])
    with pytest.raises(Refused, match="belongs to node holder"):
        check(aws(wireguard_public_key=KEY_A), holders, RULES)
    moved = aws(name="holder", private="10.4.1.22", wireguard_public_key=KEY_B)
    holders.change(holder, moved)
    check(aws(private="10.4.1.21", wireguard_public_key=KEY_A), holders, RULES)
    with pytest.raises(Refused, match="private address 10.4.1.22: it belongs to node holder"):
        check(aws(private="10.4.1.22"), holders, RULES)
    holders.change(moved, None)
    check(aws(private="10.4.1.22", wireguard_public_key=KEY_B), holders, RULES)
