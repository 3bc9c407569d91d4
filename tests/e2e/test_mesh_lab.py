"""The whole mesh in the lab: real meshd and meshagent processes in five namespaces.

meshd runs on the hub (the main node). Every node's agent joins with a token,
runs WireGuard from meshd's node list, and exposes a port under a name; then
every node resolves every other node's name through its own agent's DNS and
opens a TCP connection to it, over the path the selection rules say
(VPC-direct, tunnel, or relayed through the hub).
"""

from __future__ import annotations

import json
import time

import pytest

from meshagent.paths import DIRECT, RELAY, TUNNEL, NodeFacts, select_path
from testbed.lab.daemons import ROLES, LabDaemons, query
from tests.meshfix import wait_for


@pytest.fixture(scope="module")
def mesh_lab(lab, tmp_path_factory):
    daemons = LabDaemons(lab, tmp_path_factory.mktemp("meshlab"))
    try:
        yield daemons.start()
    finally:
        daemons.stop()


def test_every_node_reaches_every_service_by_name_over_the_selected_path(lab, mesh_lab):
    ready = mesh_lab.ready
    servers = [lab.serve(role, 7000) for role in ROLES]
    try:
        for role in ROLES:
            mesh_lab.meshctl("expose", "--port", "7000", "--name", f"svc-{role}", agent=role)
        address = {}
        for src in ROLES:
            for dst in ROLES:
                answers = wait_for(lambda: query(lab, src, ready[src]["dns"], f"svc-{dst}.default.svc.cluster.local"),
                               20, f"{src} resolving svc-{dst}")
                address[dst] = answers[0]
        nodes = {n["name"]: n for n in json.loads(mesh_lab.meshctl("nodes", "-o", "json").stdout)["nodes"]}
        assert {r: address[r] for r in ROLES} == {r: nodes[r]["mesh_address"] for r in ROLES}
        facts = {r: lab.nodes[r].facts() for r in ROLES}
        facts = {r: NodeFacts(**{**f.__dict__, "mesh_address": address[r]}) for r, f in facts.items()}
        for src in ROLES:
            targets = [f"{address[d]}:7000" for d in ROLES if d != src]
            results = wait_for(lambda: (lambda rs: rs if all(x["ok"] for x in rs) else None)(lab.connect(src, targets)),
                           30, f"{src} connecting to every service")
            assert [x["answer"].split()[0] for x in results] == [d for d in ROLES if d != src]
            for dst in ROLES:
                if dst == src:
                    continue
                kind = select_path(facts[src], facts[dst], facts["hub"], facts["hub"].region).kind
                dev = lab.route_dev(src, address[dst])
                assert (dev == lab.nodes[src].ifname) == (kind in (TUNNEL, RELAY)), (src, dst, kind, dev)
        kinds = {select_path(facts[a], facts[b], facts["hub"], facts["hub"].region).kind
                 for a in ROLES for b in ROLES if a != b}
        assert kinds == {DIRECT, TUNNEL, RELAY}
    finally:
        for s in servers:
            s.terminate()


def test_a_removed_node_leaves_every_peers_wireguard_config(lab, mesh_lab):
    state = mesh_lab.state
    hub_if = lab.nodes["hub"].ifname
    nat_key = lab.run("nat", ["wg", "show", lab.nodes["nat"].ifname, "public-key"]).stdout.strip()
    assert nat_key in lab.run("hub", ["wg", "show", hub_if, "peers"]).stdout
    nat_addr = json.loads((state / "nat" / "node.json").read_text())["mesh_address"]
    cloud_if = lab.nodes["cloud"].ifname
    assert nat_addr in lab.run("cloud", ["wg", "show", cloud_if, "allowed-ips"]).stdout  # relayed via the hub
    mesh_lab.meshctl("node", "remove", "nat")
    wait_for(lambda: nat_key not in lab.run("hub", ["wg", "show", hub_if, "peers"]).stdout, 10, "nat leaving the hub")
    wait_for(lambda: nat_addr not in lab.run("cloud", ["wg", "show", cloud_if, "allowed-ips"]).stdout, 10,
         "nat leaving cloud's allowed addresses")
    for role in ("hub", "cloud", "ra"):  # routes follow the device (applied right after it)
        wait_for(lambda: nat_addr not in lab.run(role, ["ip", "route", "show", "table", "all", "proto", "151"]).stdout,
             10, f"nat's routes leaving {role}")


def wg_state(lab, role: str) -> tuple[list, str]:
    """The peers (key, allowed addresses, keepalive) and our routes, without counters that move."""
    dump = lab.run(role, ["wg", "show", lab.nodes[role].ifname, "dump"]).stdout.splitlines()[1:]
    peers = sorted((f[0], f[3], f[7]) for f in (line.split("\t") for line in dump))
    return peers, lab.run(role, ["ip", "route", "show", "table", "all", "proto", "151"]).stdout


def test_agent_restart_without_churn_and_hub_restart_restores_relaying(lab, mesh_lab):
    servers = [lab.serve(r, 7001) for r in ("ra", "rb")]
    try:
        rb = json.loads((mesh_lab.state / "rb" / "node.json").read_text())["mesh_address"]
        wait_for(lambda: lab.connect("ra", [f"{rb}:7001"])[0]["ok"], 20, "ra reaching rb through the hub")
        before = wg_state(lab, "cloud")
        mesh_lab.stop("cloud")
        mesh_lab.start_agent("cloud")  # no token: it rejoins from its state directory
        time.sleep(1.5)
        assert wg_state(lab, "cloud") == before  # the same peers and routes, none added twice
        # the hub goes down, device and all; relayed pairs fail, then come back with it
        mesh_lab.stop("hub")
        lab.run("hub", ["ip", "link", "del", lab.nodes["hub"].ifname], check=False)
        wait_for(lambda: not lab.connect("ra", [f"{rb}:7001"], timeout=1)[0]["ok"], 10, "relay down with the hub")
        mesh_lab.start_agent("hub")
        wait_for(lambda: lab.connect("ra", [f"{rb}:7001"], timeout=1)[0]["ok"], 30, "relay back with the hub")
    finally:
        for s in servers:
            s.terminate()
