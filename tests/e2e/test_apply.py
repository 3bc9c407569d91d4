"""Applying desired state with real wireguard-go in the lab: idempotence, one change, removal."""

from __future__ import annotations

from meshagent.routes import MESH_PROTO, RELAY_TABLE
from tests.conftest import require_netns

PORT = 7001


def mesh_routes(lab, role: str) -> list[str]:
    out = lab.run(role, ["ip", "-o", "route", "show", "table", "all", "proto", str(MESH_PROTO)]).stdout
    return sorted(d if "/" in d else d + "/32" for d in (line.split()[0] for line in out.splitlines()))


async def test_first_apply_configures_then_reapply_changes_nothing(lab, mesh):
    require_netns("wireguard-go", "wg", "nft")
    hub = await mesh.backends["hub"].current()
    assert hub.address == "10.4.0.10/32" and hub.mtu == 1420 and hub.listen_port == 51820
    assert len(hub.peers) == 4
    # wg(8) reads the same device through the same socket: the config is really there.
    shown = lab.run("hub", ["wg", "show", lab.nodes["hub"].ifname, "peers"]).stdout.split()
    assert sorted(shown) == sorted(p.public_key for p in hub.peers)
    before = {r: mesh_routes(lab, r) for r in lab.nodes}
    again = await mesh.apply_all()
    for role, (wg_diff, route_diff) in again.items():
        assert wg_diff.empty, (role, str(wg_diff))
        assert route_diff.empty, (role, route_diff)
    assert {r: mesh_routes(lab, r) for r in lab.nodes} == before
    # The hub relays: one policy rule, one nft table of ours with its two rules.
    rules = lab.run("hub", ["ip", "rule", "show"]).stdout
    assert rules.count(f"lookup {RELAY_TABLE}") == 1
    table = lab.run("hub", ["nft", "list", "table", "inet", "mesh"]).stdout
    assert table.count("\" accept") == 1 and table.count("maxseg") == 1


async def test_one_peer_change_touches_one_peer(lab, mesh):
    require_netns("wireguard-go", "wg", "nft")
    lab.serve("cloud", PORT)
    # The cloud VM gets a second public address and announces it.
    lab.run("cloud", ["ip", "addr", "add", "198.18.0.21/24", "dev", "pub"])
    try:
        mesh.overrides["cloud"] = {"public_address": "198.18.0.21"}
        d, rd = await mesh.apply("hub")
        cloud_key = mesh.fact("cloud").wireguard_public_key
        assert d.changed == [cloud_key] and not d.added and not d.removed and not d.interface
        assert rd.empty
        peer = (await mesh.backends["hub"].current()).peer_map()[cloud_key]
        assert peer.endpoint == "198.18.0.21:51820"
        (r,) = lab.connect("hub", [f"100.64.0.20:{PORT}"])
        assert r["ok"] and r["answer"] == "cloud 10.4.0.10", r
        stats = {s.public_key: s for s in await mesh.backends["cloud"].stats()}
        assert stats[mesh.fact("hub").wireguard_public_key].endpoint == "198.18.0.4:51820"
    finally:
        lab.run("cloud", ["ip", "addr", "del", "198.18.0.21/24", "dev", "pub"], check=False)


async def test_node_leaving_removes_its_peer_and_routes_everywhere(lab, mesh):
    require_netns("wireguard-go", "wg", "nft")
    cloud_key = mesh.fact("cloud").wireguard_public_key
    nat_key = mesh.fact("nat").wireguard_public_key
    assert "100.64.0.20/32" in mesh_routes(lab, "ra")
    mesh.removed |= {"cloud", "nat"}
    results = await mesh.apply_all()
    assert results["hub"][0].removed == sorted([cloud_key, nat_key])
    assert results["ra"][0].removed == [cloud_key]
    # ra's hub peer no longer carries the NAT'd node's address.
    assert results["ra"][0].changed == [mesh.fact("hub").wireguard_public_key]
    for role in ("hub", "ra", "rb"):
        routes = mesh_routes(lab, role)
        assert "100.64.0.20/32" not in routes and "100.64.0.30/32" not in routes, (role, routes)
        keys = {p.public_key for p in (await mesh.backends[role].current()).peers}
        assert cloud_key not in keys and nat_key not in keys
    # The hub still relays between the regional VPCs, so its relay state stays.
    assert mesh_routes(lab, "hub") == ["10.21.0.10/32", "10.31.0.10/32"]
    # Once no pair needs the hub to relay, its rule and nft table go too.
    mesh.removed.add("rb")
    d, rd = await mesh.apply("hub")
    assert rd.nft == "deleted" and rd.rules_removed and mesh_routes(lab, "hub") == []
    assert lab.run("hub", ["nft", "list", "table", "inet", "mesh"], check=False).returncode != 0
    assert f"lookup {RELAY_TABLE}" not in lab.run("hub", ["ip", "rule", "show"]).stdout


async def test_mtu_follows_the_underlying_path_and_changes_alone(lab, mesh):
    require_netns("wireguard-go", "wg", "nft")
    from meshagent.routes import choose_mtu, underlay_mtu
    from meshagent.wg.command import Runner

    runner = Runner(lab.nodes["hub"].netns)
    assert choose_mtu(await underlay_mtu(runner, "198.18.0.20")) == 1420
    lab.run("hub", ["ip", "link", "set", "pub", "mtu", "1400"])
    try:
        assert choose_mtu(await underlay_mtu(runner, "198.18.0.20")) == 1320
    finally:
        lab.run("hub", ["ip", "link", "set", "pub", "mtu", "1500"])
    mesh.mtu = 1280  # the safe choice, configured
    d, rd = await mesh.apply("hub")
    assert d.interface == ["mtu"] and not (d.added or d.removed or d.changed) and rd.empty
    assert (await mesh.backends["hub"].current()).mtu == 1280
