"""The whole mesh in the lab, booted as shipped: real meshd and meshagent processes in five namespaces.

The main node ("hub", node name main) runs `sky/mesh-setup.sh coordinator`;
every other VM runs `sky/mesh-setup.sh agent NAME`; each agent runs from its
unit's ExecStart and discovers its facts from the VM's metadata service,
default route and nvidia-smi (testbed/lab/daemons.py). No fact is typed.
Then every node resolves every other node's name through its own agent's DNS
and opens a TCP connection to it, over the path the selection rules say
(VPC-direct, tunnel, or relayed through the main node).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshagent.paths import DIRECT, RELAY, TUNNEL, NodeFacts, select_path
from testbed.lab.daemons import NAMES, ROLES, LabDaemons, query
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
        assert {r: address[r] for r in ROLES} == {r: nodes[NAMES[r]]["mesh_address"] for r in ROLES}
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
                assert (dev == mesh_lab.ifname(src)) == (kind in (TUNNEL, RELAY)), (src, dst, kind, dev)
        kinds = {select_path(facts[a], facts[b], facts["hub"], facts["hub"].region).kind
                 for a in ROLES for b in ROLES if a != b}
        assert kinds == {DIRECT, TUNNEL, RELAY}
        # each agent reports the path kinds its data plane uses (in Renew), none down, for `meshctl clusters`
        want = {r: {select_path(facts[r], facts[d], facts["hub"], facts["hub"].region).kind for d in ROLES if d != r}
                for r in ROLES}

        def reports():
            listed = {n["name"]: n for n in json.loads(mesh_lab.meshctl("nodes", "-o", "json").stdout)["nodes"]}
            got = {r: {k["kind"]: k.get("down", 0) for k in listed[NAMES[r]].get("path_report", {}).get("kinds", [])}
                   for r in ROLES}
            return got if all(want[r] <= set(got[r]) for r in ROLES) else None
        got = wait_for(reports, 30, "every agent reporting its path kinds")
        assert all(not any(got[r].values()) for r in ROLES), got
    finally:
        for s in servers:
            s.terminate()


def test_discovered_facts_gpu_labels_peers_and_ping(lab, mesh_lab):
    nodes = {n["name"]: n for n in json.loads(mesh_lab.meshctl("nodes", "-o", "json").stdout)["nodes"]}
    ra, cloud, rb = nodes["ra"], nodes["cloud"], nodes["rb"]
    assert (ra["cloud"], ra["region"], ra["vpc_id"], ra["vpc_cidr"]) == ("aws", "eu-west-1", "vpc-ra", "10.21.0.0/16")
    assert ra["labels"]["gpu.model"] == "NVIDIA-L4" and ra["labels"]["gpu.count"] == "2"
    assert ra["labels"]["node.kubernetes.io/instance-type"] == "g6.12xlarge"
    assert cloud["cloud"] == "gcp" and cloud["public_address"] == "198.18.0.20"
    assert cloud["labels"]["gpu.model"] == "NVIDIA-A100-SXM4-40GB"
    assert rb["labels"]["mesh.lifecycle"] == "spot" and "gpu.model" not in rb["labels"]
    assert nodes["nat"]["cloud"] == "" and nodes["nat"]["private_address"] == "192.168.77.10"
    assert "gpu.model" not in nodes["main"]["labels"]
    table = mesh_lab.meshctl("nodes", agent="nat").stdout
    assert "NVIDIA-L4 x2" in table
    status = json.loads(mesh_lab.meshctl("status", "-o", "json", agent="ra").stdout)
    assert status["facts"]["vpc_id"] == "vpc-ra" and status["fact_sources"]["vpc_id"] == "aws-imds"
    assert status["fact_sources"]["gpus"] == "nvidia-smi" and status["facts"]["nat"] == "no"
    behind = json.loads(mesh_lab.meshctl("status", "-o", "json", agent="nat").stdout)["facts"]
    assert behind["nat"] == "yes" and behind["observed_address"].startswith("198.18.0.30:")
    peers = {p["name"]: p for p in json.loads(mesh_lab.meshctl("peers", "-o", "json", agent="nat").stdout)["peers"]}
    assert peers["ra"]["path"] == RELAY and peers["ra"]["via"] == "main" and peers["main"]["path"] == TUNNEL
    wait_for(lambda: json.loads(mesh_lab.meshctl("peers", "-o", "json", agent="nat").stdout)["peers"][0]
             .get("latest_handshake"), 20, "a handshake with the main node")
    pong = json.loads(mesh_lab.meshctl("ping", "ra", "-c", "3", "-o", "json", agent="rb").stdout)
    assert pong["peer"]["path"] == RELAY and pong["peer"]["via"] == "main" and len(pong["rtt_ms"]) == 3
    pong = json.loads(mesh_lab.meshctl("ping", "main", "-o", "json", agent="cloud").stdout)
    assert (pong["peer"]["path"], pong["peer"]["reason"]) == (TUNNEL, "public endpoint")
    assert pong["peer"]["endpoint"] == "198.18.0.4:51820" and not pong.get("lost")


@pytest.mark.parametrize("claim, rule", [
    (["--private-address", "169.254.169.254"], "link-local"),  # a false claim
    (["--private-address", "8.8.8.8"], "public address"),  # a false claim
    (["--vpc-cidr", "172.31.0.0/16", "--private-address", "172.31.0.9"], "outside the mesh's VPC ranges"),  # a false claim
    (["--private-address", "10.4.0.10", "--vpc-cidr", "10.4.0.0/16"], "belongs to node main"),  # a false claim
])
def test_false_claims_are_refused_in_the_lab_and_the_mesh_goes_on(lab, mesh_lab, tmp_path, claim, rule):
    """A VM in rb's VPC that claims what it is not: its agent is refused at join, says why, and stops."""
    token = mesh_lab.token
    bin_dir = Path(sys.executable).parent
    r = subprocess.run(
        ["ip", "netns", "exec", lab.netns("rb"), str(bin_dir / "meshagent"), "--state-dir", str(tmp_path / "liar"),
         "--name", "liar", "--coordinator", "10.4.0.10:7443", "--socket", str(tmp_path / "liar.sock"), "--dns", "",
         "--metrics", "", "--gossip", "", "--wireguard", "", "--no-gpus", "--imds", "", "--cloud", "aws",
         "--vpc-id", "vpc-rb", "--vpc-cidr", "10.31.0.0/16", *claim],
        env={"PATH": "/usr/bin:/bin", "MESH_JOIN_TOKEN": token}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and rule in r.stderr and "Traceback" not in r.stderr
    names = [n["name"] for n in json.loads(mesh_lab.meshctl("nodes", "-o", "json").stdout)["nodes"]]
    assert "liar" not in names
    # the rest of the mesh keeps converging: a new name from ra reaches nat
    svc = f"after-{len(rule)}"
    mesh_lab.meshctl("expose", "--port", "7002", "--name", svc, agent="ra")
    wait_for(lambda: query(lab, "nat", mesh_lab.ready["nat"]["dns"], f"{svc}.mesh"), 20, f"nat resolving {svc}")
    mesh_lab.meshctl("unexpose", svc, agent="ra")


def test_a_new_public_address_after_stop_start_reaches_every_peer(lab, mesh_lab):
    """The cloud VM stops and starts with another public address: its agent finds it and every peer follows."""
    mesh_lab.stop("cloud")
    lab.run("cloud", ["ip", "addr", "del", "198.18.0.20/24", "dev", "pub"])
    lab.run("cloud", ["ip", "addr", "add", "198.18.0.21/24", "dev", "pub"])
    mesh_lab.cloud_changes("cloud", ip="198.18.0.21", external_ip="198.18.0.21")
    server = lab.serve("cloud", 7004)
    try:
        started = time.monotonic()
        mesh_lab.start_agent("cloud")
        cloud = json.loads(mesh_lab.node_file("cloud").read_text())["mesh_address"]
        for role in ("hub", "ra", "rb", "nat"):
            wait_for(lambda: lab.connect(role, [f"{cloud}:7004"], timeout=1)[0]["ok"], 20, f"{role} reaching cloud")
        assert time.monotonic() - started < 20
        assert "198.18.0.21:51820" in mesh_lab.wg("hub", "show", "mesh0", "endpoints")
        node = {n["name"]: n for n in json.loads(mesh_lab.meshctl("nodes", "-o", "json").stdout)["nodes"]}["cloud"]
        assert node["public_address"] == "198.18.0.21"
    finally:
        server.terminate()


def test_a_changed_nat_mapping_is_noticed_and_the_node_stays_reachable(lab, mesh_lab):
    before = json.loads(mesh_lab.meshctl("status", "-o", "json", agent="nat").stdout)["facts"]["observed_address"]
    assert before.startswith(f"{lab.nat_public}:")
    lab.renat("198.18.0.31")
    wait_for(lambda: json.loads(mesh_lab.meshctl("status", "-o", "json", agent="nat").stdout)["facts"]
             .get("observed_address", "").startswith("198.18.0.31:"), 30, "meshd seeing the new mapping")
    assert "NAT mapping changed" in mesh_lab.journal("nat").read_text()
    ra = json.loads(mesh_lab.node_file("ra").read_text())["mesh_address"]
    server = lab.serve("ra", 7005)
    try:
        wait_for(lambda: lab.connect("nat", [f"{ra}:7005"], timeout=1)[0]["ok"], 30, "nat reaching ra after the change")
    finally:
        server.terminate()


def test_the_real_agent_killed_with_sigkill_comes_back_without_churn(lab, mesh_lab):
    """SIGKILL of the cloud VM's meshagent (the process its unit started), then `systemctl start`:
    the same WireGuard peers and routes, nothing re-added, and its names keep resolving."""
    before = wg_state(lab, mesh_lab, "cloud")
    pid = int(mesh_lab.vms["cloud"].host_path("/var/log/mesh-lab/meshagent.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, "the killed agent reaped")
    mesh_lab.vm_run("cloud", ["systemctl", "start", "meshagent"])
    wait_for(lambda: applies(mesh_lab, "cloud") >= 1, 20, "the restarted agent applying its data plane")
    assert wg_state(lab, mesh_lab, "cloud") == before
    wait_for(lambda: query(lab, "cloud", mesh_lab.ready["cloud"]["dns"], "svc-ra.mesh"), 20,
             "cloud resolving names after the kill")


def test_a_removed_node_leaves_every_peers_wireguard_config(lab, mesh_lab):
    hub_if = mesh_lab.ifname("hub")
    nat_key = mesh_lab.wg("nat", "show", "mesh0", "public-key").strip()
    assert nat_key in mesh_lab.wg("hub", "show", hub_if, "peers")
    nat_addr = json.loads(mesh_lab.node_file("nat").read_text())["mesh_address"]
    cloud_if = mesh_lab.ifname("cloud")
    assert nat_addr in mesh_lab.wg("cloud", "show", cloud_if, "allowed-ips")  # relayed via the hub
    mesh_lab.meshctl("node", "remove", "nat")
    wait_for(lambda: nat_key not in mesh_lab.wg("hub", "show", hub_if, "peers"), 10, "nat leaving the hub")
    wait_for(lambda: nat_addr not in mesh_lab.wg("cloud", "show", cloud_if, "allowed-ips"), 10,
         "nat leaving cloud's allowed addresses")
    for role in ("hub", "cloud", "ra"):  # routes follow the device (applied right after it)
        wait_for(lambda: nat_addr not in lab.run(role, ["ip", "route", "show", "table", "all", "proto", "151"]).stdout,
             10, f"nat's routes leaving {role}")


def applies(mesh_lab, role: str) -> int:
    """How many times the agent (this process) has applied its data plane: a snapshot compared after
    at least one apply shows that nothing changed, not that nothing ran yet."""
    status = json.loads(mesh_lab.meshctl("status", "-o", "json", agent=role).stdout)
    return int(status.get("counters", {}).get("dataplane_applies", 0))


def wg_state(lab, mesh_lab, role: str) -> tuple[list, str]:
    """The peers (key, allowed addresses, keepalive) and our routes, without counters that move."""
    dump = mesh_lab.wg(role, "show", "mesh0", "dump").splitlines()[1:]
    peers = sorted((f[0], f[3], f[7]) for f in (line.split("\t") for line in dump))
    return peers, lab.run(role, ["ip", "route", "show", "table", "all", "proto", "151"]).stdout


def test_agent_restart_without_churn_and_hub_restart_restores_relaying(lab, mesh_lab):
    servers = [lab.serve(r, 7001) for r in ("ra", "rb")]
    try:
        rb = json.loads(mesh_lab.node_file("rb").read_text())["mesh_address"]
        wait_for(lambda: lab.connect("ra", [f"{rb}:7001"])[0]["ok"], 20, "ra reaching rb through the hub")
        before = wg_state(lab, mesh_lab, "cloud")
        mesh_lab.stop("cloud")
        mesh_lab.start_agent("cloud")  # no token: it rejoins from its state directory
        wait_for(lambda: applies(mesh_lab, "cloud") >= 1, 20, "the restarted agent applying its data plane")
        assert wg_state(lab, mesh_lab, "cloud") == before  # the same peers and routes, none added twice
        # the hub goes down, device and all; relayed pairs fail, then come back with it
        mesh_lab.stop("hub")
        lab.run("hub", ["ip", "link", "del", mesh_lab.ifname("hub")], check=False)
        wait_for(lambda: not lab.connect("ra", [f"{rb}:7001"], timeout=1)[0]["ok"], 10, "relay down with the hub")
        mesh_lab.start_agent("hub")
        wait_for(lambda: lab.connect("ra", [f"{rb}:7001"], timeout=1)[0]["ok"], 30, "relay back with the hub")
    finally:
        for s in servers:
            s.terminate()


def test_a_cluster_instance_boots_from_its_user_data_and_joins_the_lab(lab, mesh_lab):
    """`meshctl cluster create`'s user data, run unchanged on a fresh VM in rb's VPC (replacing rb).

    The lab's main node plays the cluster's coordinator, so HUB names it; the join string is where the
    cluster keeps it (SSM, /mesh/<cluster>/join-token) and the instance reads it with its instance role."""
    from infra.cluster.instances import Slot, hub, user_data
    from infra.cluster.lifecycle import new_doc
    from infra.cluster.spec import ClusterSpec

    mesh_lab.stop("rb")
    mesh_lab.meshctl("node", "remove", "rb")
    lab.run("rb", ["ip", "link", "del", "mesh0"], check=False)
    doc = new_doc("lab-cluster", ClusterSpec(package="mesh==0"))
    slot = Slot("warm-g6-xlarge-0", "agent", "ap-northeast-1", "g6.xlarge")
    script = user_data(doc, slot, "10.4.0.10:7443", "")
    assert f"HUB='{hub(doc)}'" in script
    script = script.replace(f"HUB='{hub(doc)}'", "HUB='main'")
    mesh_lab.ssm_put("/mesh/lab-cluster/join-token", mesh_lab.token)
    mesh_lab.boot_user_data("rb", "rb-cluster", script)
    nodes = {n["name"]: n for n in json.loads(mesh_lab.meshctl("nodes", "-o", "json").stdout)["nodes"]}
    warm = nodes["warm-g6-xlarge-0"]
    assert (warm["cloud"], warm["vpc_id"], warm["private_address"]) == ("aws", "vpc-rb", "10.31.0.10")
    assert warm["labels"]["mesh.cluster"] == "lab-cluster" and warm["labels"]["mesh.role"] == "agent"
    server = lab.serve("rb", 7003)
    try:
        env_sock = mesh_lab.vms["rb-cluster"].host_path("/run/meshagent/agent.sock")
        subprocess.run([str(Path(sys.executable).parent / "meshctl"), "--agent-socket", str(env_sock), "expose",
                        "--port", "7003", "--name", "warm"], check=True, capture_output=True, text=True, timeout=60)
        for src in ("hub", "ra", "cloud"):  # nat left the mesh in an earlier test
            got = wait_for(lambda: query(lab, src, mesh_lab.ready[src]["dns"], "warm.mesh"), 20, f"{src} resolving warm")
            assert got == ["10.31.0.10"]
            wait_for(lambda: lab.connect(src, ["10.31.0.10:7003"], timeout=1)[0]["ok"], 30, f"{src} reaching warm")
    finally:
        server.terminate()
