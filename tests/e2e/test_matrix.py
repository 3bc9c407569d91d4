"""Every lab node reaches every other by mesh address, over the path the rules choose.

How the path is verified, per ordered pair:
- the kernel's route to the destination leaves through the WireGuard
  interface for tunnel and relay pairs and through the VPC link for direct ones;
- the server sees the client's *mesh* address as the source (a packet that
  leaked onto the internet would arrive from a NAT's public address instead);
- regional <-> regional works although the lab's peering drops that traffic,
  so it can only have gone through the hub's tunnel, whose counters for both
  ends grew.
"""

from __future__ import annotations

import asyncio
import itertools

from meshagent.paths import DIRECT, RELAY, TUNNEL
from tests.conftest import require_netns

PORT = 7000
EXPECTED = {
    ("hub", "ra"): DIRECT, ("hub", "rb"): DIRECT, ("hub", "cloud"): TUNNEL, ("hub", "nat"): TUNNEL,
    ("ra", "rb"): RELAY, ("ra", "cloud"): TUNNEL, ("ra", "nat"): RELAY,
    ("rb", "cloud"): TUNNEL, ("rb", "nat"): RELAY, ("cloud", "nat"): TUNNEL,
}


def expected(a: str, b: str) -> str:
    return EXPECTED.get((a, b)) or EXPECTED[(b, a)]


async def connect_matrix(lab, pairs, rounds: int = 3) -> dict[tuple[str, str], dict]:
    """TCP connect for each (src, dst); failed pairs are retried (a NAT'd peer's first handshake
    may still be on its way), at most `rounds` times."""
    results: dict[tuple[str, str], dict] = {}
    todo = list(pairs)
    for _ in range(rounds):
        by_src: dict[str, list[str]] = {}
        for s, d in todo:
            by_src.setdefault(s, []).append(d)

        async def one(src, dsts):
            targets = [f"{lab.nodes[d].spec.mesh_address}:{PORT}" for d in dsts]
            return src, dsts, await asyncio.to_thread(lab.connect, src, targets, 2.0)

        for src, dsts, res in await asyncio.gather(*(one(s, ds) for s, ds in by_src.items())):
            for d, r in zip(dsts, res):
                results[(src, d)] = r
        todo = [p for p in todo if not results[p]["ok"]]
        if not todo:
            break
    return results


async def test_every_pair_connects_over_the_chosen_path(lab, mesh):
    require_netns("wireguard-go", "wg", "nft")
    roles = list(lab.nodes)
    for r in roles:
        lab.serve(r, PORT)
    # The plan agrees with the rules for every pair, seen from both ends.
    for a, b in itertools.permutations(roles, 2):
        assert mesh.plan(a).paths[b].kind == expected(a, b), (a, b)
    hub_before = {s.public_key: s for s in await mesh.backends["hub"].stats()}

    pairs = list(itertools.permutations(roles, 2))
    results = await connect_matrix(lab, pairs)
    failed = {p: r for p, r in results.items() if not r["ok"]}
    assert not failed, failed
    for (src, dst), r in results.items():
        name, seen = r["answer"].split()
        assert name == dst
        assert seen == lab.nodes[src].spec.mesh_address, (src, dst, seen)
        dev = lab.route_dev(src, lab.nodes[dst].spec.mesh_address)
        want = "vpc" if expected(src, dst) == DIRECT else lab.nodes[src].ifname
        assert dev == want, (src, dst, dev)

    # Relayed pairs went through the hub's tunnel: its counters for every relayed node grew.
    hub_after = {s.public_key: s for s in await mesh.backends["hub"].stats()}
    for role in ("ra", "rb", "nat"):
        key = next(f.wireguard_public_key for f in mesh.facts() if f.name == role)
        assert hub_after[key].rx_bytes > hub_before[key].rx_bytes, role
        assert hub_after[key].tx_bytes > hub_before[key].tx_bytes, role
    # A direct pair's addresses are in no WireGuard peer: ra's only peer entry for the hub is
    # the relay leg, carrying what ra reaches through the hub, not the hub itself.
    facts = {f.name: f for f in mesh.facts()}
    ra_peers = {p.public_key: p for p in (await mesh.backends["ra"].current()).peers}
    assert set(ra_peers[facts["hub"].wireguard_public_key].allowed_ips) == {"10.31.0.10/32", "100.64.0.30/32"}
    assert len((await mesh.backends["hub"].current()).peers) == 4  # cloud, nat (tunnels); ra, rb (relay legs)
