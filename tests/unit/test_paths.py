"""Path selection and per-node plans: every rule, the lab's topology, and invariants on random meshes."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.errors import InvalidArgument
from meshagent.paths import (DIRECT, RELAY, TUNNEL, UNREACHABLE, NodeFacts, PlanSettings, endpoint_address, peered,
                             plan, relayed_nodes, select_path)
from meshagent.routes import MAIN_TABLE, RELAY_TABLE
from meshagent.wg.keys import generate_private_key, public_key

MAIN = "us-east-1"
KEYS = {}


def key(name: str) -> str:
    if name not in KEYS:
        KEYS[name] = generate_private_key()
    return public_key(KEYS[name])


def node(name, cloud="aws", region=MAIN, vpc="", private="", public="", mesh="", port=51820) -> NodeFacts:
    return NodeFacts(name, cloud, region, vpc, "", private, public, key(name), port, mesh or private)


HUB = node("hub", vpc="vpc-hub", private="10.4.0.10", public="198.18.0.4")
HUB2 = node("hub2", vpc="vpc-hub", private="10.4.0.11")                         # same VPC as the hub
MAIN_OTHER_VPC = node("mo", vpc="vpc-other", private="10.5.0.10")              # main region, another VPC
RA = node("ra", region="eu-west-1", vpc="vpc-ra", private="10.21.0.10")
RA2 = node("ra2", region="eu-west-1", vpc="vpc-ra", private="10.21.0.11")
RB = node("rb", region="ap-northeast-1", vpc="vpc-rb", private="10.31.0.10")
RPUB = node("rpub", region="eu-central-1", vpc="vpc-rp", private="10.41.0.10", public="198.18.0.41")
CLOUD = node("cloud", cloud="gcp", region="us-central1", public="198.18.0.20", mesh="100.64.0.20")
CLOUD2 = node("cloud2", cloud="azure", region="westeurope", public="198.18.0.22", mesh="100.64.0.22")
NAT = node("nat", cloud="onprem", region="home", private="192.168.77.10", mesh="100.64.0.30")
NAT2 = node("nat2", cloud="lambda", region="us-west", private="192.168.78.10", mesh="100.64.0.31")
ALL = [HUB, HUB2, MAIN_OTHER_VPC, RA, RA2, RB, RPUB, CLOUD, CLOUD2, NAT, NAT2]

# The expected path for every unordered pair; the rules in meshagent.paths say why.
EXPECTED = {
    ("hub", "hub2"): DIRECT, ("hub", "mo"): TUNNEL, ("hub", "ra"): DIRECT, ("hub", "ra2"): DIRECT,
    ("hub", "rb"): DIRECT, ("hub", "rpub"): DIRECT, ("hub", "cloud"): TUNNEL, ("hub", "cloud2"): TUNNEL,
    ("hub", "nat"): TUNNEL, ("hub", "nat2"): TUNNEL,
    ("hub2", "mo"): RELAY, ("hub2", "ra"): DIRECT, ("hub2", "ra2"): DIRECT, ("hub2", "rb"): DIRECT,
    ("hub2", "rpub"): DIRECT, ("hub2", "cloud"): TUNNEL, ("hub2", "cloud2"): TUNNEL, ("hub2", "nat"): RELAY,
    ("hub2", "nat2"): RELAY,
    ("mo", "ra"): DIRECT, ("mo", "ra2"): DIRECT, ("mo", "rb"): DIRECT, ("mo", "rpub"): DIRECT,
    ("mo", "cloud"): TUNNEL, ("mo", "cloud2"): TUNNEL, ("mo", "nat"): RELAY, ("mo", "nat2"): RELAY,
    ("ra", "ra2"): DIRECT, ("ra", "rb"): RELAY, ("ra", "rpub"): TUNNEL, ("ra", "cloud"): TUNNEL,
    ("ra", "cloud2"): TUNNEL, ("ra", "nat"): RELAY, ("ra", "nat2"): RELAY,
    ("ra2", "rb"): RELAY, ("ra2", "rpub"): TUNNEL, ("ra2", "cloud"): TUNNEL, ("ra2", "cloud2"): TUNNEL,
    ("ra2", "nat"): RELAY, ("ra2", "nat2"): RELAY,
    ("rb", "rpub"): TUNNEL, ("rb", "cloud"): TUNNEL, ("rb", "cloud2"): TUNNEL, ("rb", "nat"): RELAY,
    ("rb", "nat2"): RELAY,
    ("rpub", "cloud"): TUNNEL, ("rpub", "cloud2"): TUNNEL, ("rpub", "nat"): TUNNEL, ("rpub", "nat2"): TUNNEL,
    ("cloud", "cloud2"): TUNNEL, ("cloud", "nat"): TUNNEL, ("cloud", "nat2"): TUNNEL,
    ("cloud2", "nat"): TUNNEL, ("cloud2", "nat2"): TUNNEL,
    ("nat", "nat2"): RELAY,
}


def test_expected_table_covers_every_pair():
    names = [n.name for n in ALL]
    assert {tuple(sorted(p, key=names.index)) for p in itertools.combinations(names, 2)} == set(EXPECTED)


@pytest.mark.parametrize("pair", sorted(EXPECTED))
def test_every_pair_takes_the_expected_path_both_ways(pair):
    by = {n.name: n for n in ALL}
    a, b = by[pair[0]], by[pair[1]]
    assert select_path(a, b, HUB, MAIN).kind == EXPECTED[pair]
    assert select_path(b, a, HUB, MAIN).kind == EXPECTED[pair]
    if EXPECTED[pair] == RELAY:
        assert select_path(a, b, HUB, MAIN).via == "hub"


def test_peering_is_same_vpc_or_main_region_to_regional_only():
    assert peered(RA, RA2, MAIN) and peered(HUB, RA, MAIN) and peered(RB, HUB, MAIN)
    assert not peered(RA, RB, MAIN)              # not transitive
    assert not peered(HUB, MAIN_OTHER_VPC, MAIN)  # two VPCs in the main region are not peered with each other
    assert not peered(HUB, CLOUD, MAIN)           # only AWS VPCs peer
    aws_without_vpc = dataclasses.replace(RA, vpc_id="")
    assert not peered(HUB, aws_without_vpc, MAIN)


def test_endpoint_is_private_when_peered_else_public_else_none():
    assert endpoint_address(RA, HUB, MAIN) == "10.4.0.10"
    assert endpoint_address(NAT, HUB, MAIN) == "198.18.0.4"
    assert endpoint_address(HUB, NAT, MAIN) is None
    assert endpoint_address(CLOUD, RA, MAIN) is None


def test_no_main_node_or_main_itself_cannot_relay():
    assert select_path(RA, RB, None, MAIN).kind == UNREACHABLE
    hub_behind_nat = dataclasses.replace(HUB, public_address="")
    p = select_path(hub_behind_nat, NAT, hub_behind_nat, MAIN)
    assert p.kind == UNREACHABLE and "relay" in p.reason
    # Relaying needs both legs: a NAT'd node cannot reach a main node without a public address.
    assert select_path(NAT, RA, hub_behind_nat, MAIN).kind == UNREACHABLE
    assert select_path(RA, RB, hub_behind_nat, MAIN).kind == RELAY  # legs over peering still work


def test_path_to_self_is_an_error():
    with pytest.raises(InvalidArgument, match="itself"):
        select_path(RA, RA, HUB, MAIN)


LAB = [HUB, RA, RB, CLOUD, NAT]


def peers_by_name(p, nodes):
    by_key = {n.wireguard_public_key: n.name for n in nodes}
    return {by_key[x.public_key]: x for x in p.interface.peers}


def test_nat_node_plan_sends_everything_unreachable_through_the_hub_with_keepalive():
    p = plan(NAT, LAB, HUB, KEYS["nat"], PlanSettings(ifname="wg0", keepalive_s=25))
    peers = peers_by_name(p, LAB)
    assert set(peers) == {"hub", "cloud"}
    assert peers["hub"].endpoint == "198.18.0.4:51820" and peers["hub"].persistent_keepalive == 25
    assert set(peers["hub"].allowed_ips) == {"10.4.0.10/32", "10.21.0.10/32", "10.31.0.10/32"}
    assert peers["cloud"].endpoint == "198.18.0.20:51820" and peers["cloud"].persistent_keepalive == 25
    assert {r.dst for r in p.routes.routes} == {"10.4.0.10/32", "10.21.0.10/32", "10.31.0.10/32", "100.64.0.20/32"}
    assert all(r.dev == "wg0" and r.src == "100.64.0.30" and r.table == MAIN_TABLE for r in p.routes.routes)
    assert p.interface.address == "100.64.0.30/32"
    assert not p.routes.rules and not p.routes.relay_ifaces


def test_hub_plan_relays_with_a_rule_table_and_forwarding():
    p = plan(HUB, LAB, HUB, KEYS["hub"], PlanSettings(ifname="wg0"))
    peers = peers_by_name(p, LAB)
    assert set(peers) == {"ra", "rb", "cloud", "nat"}
    assert peers["nat"].endpoint is None and peers["nat"].allowed_ips == ("100.64.0.30/32",)
    assert peers["ra"].endpoint == "10.21.0.10:51820"   # the relay leg runs over peering
    assert peers["cloud"].endpoint == "198.18.0.20:51820"
    assert all(x.persistent_keepalive == 0 for x in peers.values())  # everyone can reach the hub first
    main = {r.dst for r in p.routes.routes if r.table == MAIN_TABLE}
    relay = {r.dst for r in p.routes.routes if r.table == RELAY_TABLE}
    assert main == {"100.64.0.20/32", "100.64.0.30/32"}          # the hub's own tunnels
    assert relay == {"10.21.0.10/32", "10.31.0.10/32", "100.64.0.30/32"}
    assert [(r.iif, r.table) for r in p.routes.rules] == [("wg0", RELAY_TABLE)]
    assert p.routes.relay_ifaces == ("wg0",)
    assert ("net.ipv4.ip_forward", "1") in p.routes.sysctls


def test_regional_plan_reaches_the_other_region_through_the_hub_and_the_cloud_directly():
    p = plan(RA, LAB, HUB, KEYS["ra"])
    peers = peers_by_name(p, LAB)
    assert set(peers["hub"].allowed_ips) == {"10.31.0.10/32", "100.64.0.30/32"}
    assert peers["hub"].endpoint == "10.4.0.10:51820" and peers["hub"].persistent_keepalive == 0
    assert peers["cloud"].endpoint == "198.18.0.20:51820" and peers["cloud"].persistent_keepalive == 25
    assert "10.4.0.10/32" not in {r.dst for r in p.routes.routes}  # the hub is direct: no route of ours


def test_cloud_plan_waits_for_nodes_it_cannot_reach():
    p = plan(CLOUD, LAB, HUB, KEYS["cloud"])
    peers = peers_by_name(p, LAB)
    assert set(peers) == {"hub", "ra", "rb", "nat"}
    assert peers["nat"].endpoint is None and peers["ra"].endpoint is None
    assert peers["hub"].endpoint == "198.18.0.4:51820"


def test_settings_reach_the_interface():
    p = plan(RA, LAB, HUB, KEYS["ra"], PlanSettings(ifname="mesh9", mtu=1280, listen_port=41000))
    assert (p.interface.name, p.interface.mtu, p.interface.listen_port) == ("mesh9", 1280, 41000)
    assert p.interface.validated() == p.interface


@pytest.mark.parametrize("bad, why", [
    (dict(wireguard_public_key="nope"), "public key"),
    (dict(wireguard_public_key=""), "public key"),
    (dict(mesh_address="not-an-ip"), "mesh_address"),
    (dict(mesh_address="127.0.0.1"), "mesh_address"),
    (dict(public_address="0.0.0.0"), "public_address"),
    (dict(wireguard_port=0), "port"),
    (dict(mesh_address="10.21.0.10"), "already belongs"),
])
def test_bad_facts_from_a_node_are_refused_not_applied(bad, why):
    evil = dataclasses.replace(CLOUD, **bad)
    p = plan(HUB, [RA, RB, NAT, evil], HUB, KEYS["hub"])
    assert why in p.refused["cloud"]
    assert "cloud" not in p.paths
    assert not any("100.64.0.20/32" in x.allowed_ips or x.public_key == evil.wireguard_public_key
                   for x in p.interface.peers)


def test_refused_main_node_means_no_relay():
    p = plan(RA, [dataclasses.replace(HUB, wireguard_public_key="bad"), RB], HUB, KEYS["ra"])
    assert p.paths["rb"].kind == UNREACHABLE and not p.interface.peers


def test_from_node_reads_the_api_message():
    from mesh.v1 import types_pb2

    msg = types_pb2.Node(name="ra", cloud="aws", region="eu-west-1", vpc_id="vpc-ra", vpc_cidr="10.21.0.0/16",
                         private_address="10.21.0.10", wireguard_public_key=key("ra"), wireguard_port=51820,
                         mesh_address="10.21.0.10")
    assert NodeFacts.from_node(msg) == dataclasses.replace(RA, vpc_cidr="10.21.0.0/16")


# -- invariants on random meshes ----------------------------------------------------------------

REGIONS = [MAIN, "eu-west-1", "ap-northeast-1"]


@st.composite
def meshes(draw):
    n = draw(st.integers(2, 9))
    nodes = []
    for i in range(n):
        kind = draw(st.sampled_from(["aws", "aws", "gcp", "onprem"]))
        region = draw(st.sampled_from(REGIONS)) if kind == "aws" else "x"
        vpc = f"vpc-{region}-{draw(st.integers(0, 1))}" if kind == "aws" else ""
        public = f"198.18.1.{i + 1}" if draw(st.booleans()) else ""
        private = f"10.{60 + i}.0.10" if kind == "aws" else ""
        nodes.append(node(f"n{i}", kind, region, vpc, private, public, mesh=private or f"100.64.1.{i + 1}"))
    main_i = draw(st.integers(0, n - 1))
    return nodes, nodes[main_i]


@settings(max_examples=150, deadline=None)
@given(meshes())
def test_plans_are_consistent_across_every_random_mesh(m):
    nodes, main = m
    region = main.region
    plans = {n.name: plan(n, nodes, main, _priv(n.name), main_region=region) for n in nodes}
    by_key = {n.wireguard_public_key: n for n in nodes}
    brute = set()
    for a, b in itertools.permutations(nodes, 2):
        pa, pb = plans[a.name].paths[b.name], plans[b.name].paths[a.name]
        assert pa.kind == pb.kind  # symmetric
        if pa.kind == RELAY:
            brute |= {a.name, b.name}
        if pa.kind in (TUNNEL, RELAY):
            # a reaches b's mesh address through its tunnel, and b has a peer that accepts a's address.
            assert any(r.dst == f"{b.mesh_address}/32" for r in plans[a.name].routes.routes)
            hop = b if pa.kind == TUNNEL else main
            accepts = {by_key[p.public_key].name: p.allowed_ips for p in plans[hop.name].interface.peers}
            assert f"{a.mesh_address}/32" in accepts.get(a.name, ()), (a.name, b.name, pa.kind)
            # At least one side can start the handshake.
            assert any(p.endpoint for p in plans[a.name].interface.peers
                       if by_key[p.public_key].name == hop.name) or \
                any(p.endpoint for p in plans[hop.name].interface.peers if by_key[p.public_key].name == a.name)
        if pa.kind == DIRECT:
            # No route of ours in the main table: the VPC's route carries it (the main node's relay
            # table may still hold b, for packets that arrive through the tunnel).
            assert not any(r.dst == f"{b.mesh_address}/32" and r.table == MAIN_TABLE for r in plans[a.name].routes.routes)
    assert relayed_nodes(nodes, main, region) == brute
    for p in plans.values():
        p.interface.validated()  # every plan is a valid desired state (no address given to two peers)


def _priv(name: str) -> str:
    return KEYS.setdefault(name, generate_private_key())


def test_a_stolen_key_refuses_both_holders_and_plans_everyone_else():
    thief = dataclasses.replace(CLOUD, wireguard_public_key=RA.wireguard_public_key)
    p = plan(HUB, [RA, RB, NAT, thief], HUB, KEYS["hub"])
    assert "claimed by another node" in p.refused["cloud"] and "claimed by another node" in p.refused["ra"]
    assert set(p.paths) == {"rb", "nat"}
    assert p.interface.validated() == p.interface  # the device still gets a valid config
    mine = dataclasses.replace(CLOUD, wireguard_public_key=HUB.wireguard_public_key)
    p = plan(HUB, [RA, mine], HUB, KEYS["hub"])
    assert "claimed by another node" in p.refused["cloud"] and "ra" in p.paths
