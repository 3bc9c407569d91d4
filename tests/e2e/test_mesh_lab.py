"""The whole mesh in the lab: real meshd and meshagent processes in five namespaces.

meshd runs on the hub (the main node). Every node's agent joins with a token,
runs WireGuard from meshd's node list, and exposes a port under a name; then
every node resolves every other node's name through its own agent's DNS and
opens a TCP connection to it, over the path the selection rules say
(VPC-direct, tunnel, or relayed through the hub).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from meshagent.paths import DIRECT, RELAY, TUNNEL, select_path
from meshctl.localmesh import BIN, _wait_ready

ROLES = ("hub", "ra", "rb", "cloud", "nat")
# Where each node finds meshd: over the VPC peering inside AWS, at its public address from elsewhere.
COORDINATOR = {"hub": "10.4.0.10", "ra": "10.4.0.10", "rb": "10.4.0.10", "cloud": "198.18.0.4", "nat": "198.18.0.4"}


def query(lab, role: str, dns: str, name: str) -> list[str]:
    host, port = dns.rsplit(":", 1)
    code = ("import dnslib,sys; q=dnslib.DNSRecord.question(sys.argv[1]);"
            "r=dnslib.DNSRecord.parse(q.send(sys.argv[2], int(sys.argv[3]), timeout=1));"
            "print(' '.join(str(x.rdata) for x in r.rr))")
    r = lab.run(role, [sys.executable, "-c", code, name, host, port], check=False)
    return r.stdout.split()


def wait(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


@pytest.fixture(scope="module")
def mesh_lab(lab, tmp_path_factory):
    state = tmp_path_factory.mktemp("meshlab")
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
    procs: dict[str, subprocess.Popen] = {}
    ready: dict[str, dict] = {}
    try:
        log = open(state / "meshd.log", "wb")
        procs["meshd"] = lab.popen("hub", [str(BIN / "meshd"), "--state-dir", str(state / "meshd"), "--listen",
                                           "0.0.0.0:7443", "--join-listen", "0.0.0.0:7444", "--admin-socket",
                                           str(state / "admin.sock"), "--metrics", "", "--overlay-pool",
                                           "100.64.0.0/24", "--lease-ttl", "5", "--grace", "10"],
                                   stdout=subprocess.PIPE, stderr=log, env=env)
        _wait_ready(procs["meshd"], "meshd", state / "meshd.log", 20)
        ctl_env = {**env, "MESHD_ADMIN_SOCKET": str(state / "admin.sock"), "MESH_AGENT_SOCKET": "/nonexistent"}
        token = subprocess.run([str(BIN / "meshctl"), "token", "create", "--uses", "5"], env=ctl_env,
                               capture_output=True, text=True, check=True).stdout.strip()
        for role in ROLES:
            node = lab.nodes[role]
            s = node.spec
            argv = [str(BIN / "meshagent"), "--state-dir", str(state / role), "--coordinator",
                    f"{COORDINATOR[role]}:7443", "--token", token, "--name", role, "--socket",
                    str(state / f"{role}.sock"), "--dns", "127.0.0.1:0", "--dns-upstream", "127.0.0.1:9",
                    "--metrics", "", "--gossip", "0.0.0.0:0", "--gossip-profile", "local", "--no-spot-watch",
                    "--wireguard", node.ifname, "--hub", "hub", "--cloud", s.cloud, "--region", s.region]
            for flag, value in (("--vpc-id", s.vpc_id), ("--vpc-cidr", s.vpc_cidr),
                                ("--private-address", s.private_address), ("--public-address", s.public_address)):
                if value:
                    argv += [flag, value]
            log = open(state / f"{role}.log", "wb")
            procs[role] = lab.popen(role, argv, stdout=subprocess.PIPE, stderr=log, env=env)
            ready[role] = _wait_ready(procs[role], "meshagent", state / f"{role}.log", 30)
        yield {"state": state, "ready": ready, "procs": procs, "env": ctl_env}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_every_node_reaches_every_service_by_name_over_the_selected_path(lab, mesh_lab):
    state, ready, env = mesh_lab["state"], mesh_lab["ready"], mesh_lab["env"]
    servers = [lab.serve(role, 7000) for role in ROLES]
    try:
        for role in ROLES:
            subprocess.run([str(BIN / "meshctl"), "--agent-socket", str(state / f"{role}.sock"), "expose",
                            "--port", "7000", "--name", f"svc-{role}"], env=env, check=True, capture_output=True)
        address = {}
        for src in ROLES:
            for dst in ROLES:
                answers = wait(lambda: query(lab, src, ready[src]["dns"], f"svc-{dst}.default.svc.cluster.local"),
                               20, f"{src} resolving svc-{dst}")
                address[dst] = answers[0]
        nodes = {n["name"]: n for n in json.loads(subprocess.run(
            [str(BIN / "meshctl"), "nodes", "-o", "json"], env=env, capture_output=True, text=True,
            check=True).stdout)["nodes"]}
        assert {r: address[r] for r in ROLES} == {r: nodes[r]["mesh_address"] for r in ROLES}
        from meshagent.paths import NodeFacts
        facts = {r: lab.nodes[r].facts() for r in ROLES}
        facts = {r: NodeFacts(**{**f.__dict__, "mesh_address": address[r]}) for r, f in facts.items()}
        for src in ROLES:
            targets = [f"{address[d]}:7000" for d in ROLES if d != src]
            results = wait(lambda: (lambda rs: rs if all(x["ok"] for x in rs) else None)(lab.connect(src, targets)),
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
    env, state = mesh_lab["env"], mesh_lab["state"]
    hub_if = lab.nodes["hub"].ifname
    nat_key = lab.run("nat", ["wg", "show", lab.nodes["nat"].ifname, "public-key"]).stdout.strip()
    assert nat_key in lab.run("hub", ["wg", "show", hub_if, "peers"]).stdout
    nat_addr = json.loads((state / "nat" / "node.json").read_text())["mesh_address"]
    cloud_if = lab.nodes["cloud"].ifname
    assert nat_addr in lab.run("cloud", ["wg", "show", cloud_if, "allowed-ips"]).stdout  # relayed via the hub
    subprocess.run([str(BIN / "meshctl"), "node", "remove", "nat"], env=env, check=True, capture_output=True)
    wait(lambda: nat_key not in lab.run("hub", ["wg", "show", hub_if, "peers"]).stdout, 10, "nat leaving the hub")
    wait(lambda: nat_addr not in lab.run("cloud", ["wg", "show", cloud_if, "allowed-ips"]).stdout, 10,
         "nat leaving cloud's allowed addresses")
    for role in ("hub", "cloud", "ra"):
        routes = lab.run(role, ["ip", "route", "show", "table", "all", "proto", "151"]).stdout
        assert nat_addr not in routes, (role, routes)
