"""Faults with real wireguard-go in the lab: bad input refused, names in use, no WireGuard,
wireguard-go killed, an agent restart, the hub down and back, a NAT mapping that changes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time

import pytest

from meshcore.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from meshagent.routes import MESH_PROTO
from meshagent.wg.backend import BackendConfig, probe
from meshagent.wg.factory import make_backend
from meshagent.wg.model import PeerConfig
from meshagent.wg.userspace import UserspaceBackend
from tests.conftest import require_netns

PORT = 7002


def addr(lab, role: str) -> str:
    return f"{lab.nodes[role].spec.mesh_address}:{PORT}"


def reach(lab, src: str, dsts: list[str], timeout: float = 2.0) -> dict[str, bool]:
    return {d: r["ok"] for d, r in zip(dsts, lab.connect(src, [addr(lab, d) for d in dsts], timeout))}


async def wait_for(predicate, timeout_s: float, step_s: float = 0.05):
    """Poll an async predicate until true or the time is up; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(step_s)


def our_routes(lab, role: str) -> list[str]:
    return lab.run(role, ["ip", "-o", "route", "show", "table", "all", "proto", str(MESH_PROTO)]).stdout.splitlines()


@pytest.fixture(scope="module")
def servers(lab):
    for role in lab.nodes:
        lab.serve(role, PORT)


async def test_invalid_key_or_endpoint_is_refused_and_never_applied(lab, mesh):
    require_netns("wireguard-go", "wg", "nft")
    hub = mesh.backends["hub"]
    before = await hub.current()
    desired = mesh.plan("hub").interface
    bad_peers = [
        PeerConfig("not-a-key", "198.18.0.99:51820", ("100.64.9.9/32",)),
        PeerConfig("A" * 43 + "=", "198.18.0.99:51820", ("100.64.9.9/32",)),   # all-zero key
        PeerConfig(mesh.fact("cloud").wireguard_public_key[:-2] + "==", None, ("100.64.9.9/32",)),
        PeerConfig("YWJj" * 10 + "YWI=", "198.18.0.99:0", ("100.64.9.9/32",)),
        PeerConfig("YWJj" * 10 + "YWI=", "evil.example:51820", ("100.64.9.9/32",)),
        PeerConfig("YWJj" * 10 + "YWI=", "224.0.0.1:51820", ("100.64.9.9/32",)),
    ]
    for bad in bad_peers:
        with pytest.raises(InvalidArgument) as e:
            await hub.apply(dataclasses.replace(desired, peers=desired.peers + (bad,)))
        assert "invalid" in str(e.value)
    assert await hub.current() == before
    # A node announcing a bad key is left out of everyone's plan, with the reason.
    facts = [f if f.name != "cloud" else dataclasses.replace(f, wireguard_public_key="bogus") for f in mesh.facts()]
    p = mesh.plan("hub", facts)
    assert "cloud" in p.refused and "public key" in p.refused["cloud"]
    assert mesh.fact("cloud").wireguard_public_key not in {x.public_key for x in p.interface.peers}


async def test_interface_name_in_use_is_a_clear_error(lab, mesh, tmp_path):
    require_netns("wireguard-go", "wg", "nft")
    # The same WireGuard name from another namespace: the UAPI socket directory is machine-wide.
    other = UserspaceBackend(lab.nodes["hub"].ifname, BackendConfig(netns=lab.nodes["ra"].netns, state_dir=tmp_path))
    with pytest.raises(AlreadyExists) as e:
        await other.start()
    assert "in use" in str(e.value) and "unique on the machine" in str(e.value)
    # A name a non-WireGuard interface has in this namespace.
    taken = UserspaceBackend("vpc", BackendConfig(netns=lab.nodes["ra"].netns, state_dir=tmp_path))
    with pytest.raises(AlreadyExists, match="in use by another interface"):
        await taken.start()
    assert lab.run("ra", ["ip", "link", "show", "vpc"]).returncode == 0


async def test_no_wireguard_available_says_what_to_install(lab, tmp_path):
    require_netns("wireguard-go", "wg", "nft")
    # A PATH without wireguard-go and a kernel without the module.
    found = probe(path=str(tmp_path), module_dir=tmp_path / "none", modules_root=tmp_path)
    assert not found.kernel_module and found.wireguard_go is None
    with pytest.raises(FailedPrecondition) as e:
        make_backend("wmnone0", BackendConfig(netns=lab.nodes["ra"].netns, state_dir=tmp_path), found)
    assert "no WireGuard available" in str(e.value) and "apt-get install wireguard-go" in str(e.value)
    # The userspace backend told to use a binary that is not there fails the same clear way, creating nothing.
    b = UserspaceBackend("wmnone0", BackendConfig(netns=lab.nodes["ra"].netns, state_dir=tmp_path,
                                                   wireguard_go=str(tmp_path / "wireguard-go")))
    with pytest.raises(FailedPrecondition, match="wireguard-go"):
        await b.start()
    assert lab.run("ra", ["ip", "link", "show", "wmnone0"], check=False).returncode != 0


async def test_sigkilled_wireguard_go_comes_back_without_duplicates(lab, mesh, servers):
    require_netns("wireguard-go", "wg", "nft")
    before = {r: sorted(our_routes(lab, r)) for r in ("hub", "ra")}
    hub_nft = lab.run("hub", ["nft", "list", "table", "inet", "mesh"]).stdout
    for role in ("hub", "ra"):
        b = mesh.backends[role]
        old = b.pid
        os.kill(old, signal.SIGKILL)

        async def restarted(b=b, old=old):
            return b.restarts >= 1 and b.pid != old and len(our_routes(lab, role)) == len(before[role])
        assert await wait_for(restarted, 10.0), role
    # The supervisor restarted and re-applied; a full re-apply now finds nothing to do.
    for role, (d, rd) in (await mesh.apply_all()).items():
        assert d.empty and rd.empty, (role, str(d), rd)
    for role in ("hub", "ra"):
        assert sorted(our_routes(lab, role)) == before[role]
    assert lab.run("hub", ["nft", "list", "table", "inet", "mesh"]).stdout == hub_nft
    assert lab.run("hub", ["ip", "rule", "show"]).stdout.count("lookup 51820") == 1
    assert reach(lab, "ra", ["rb", "cloud", "hub"]) == {"rb": True, "cloud": True, "hub": True}


async def test_agent_restart_adopts_the_running_device_without_churn(lab, mesh, servers):
    require_netns("wireguard-go", "wg", "nft")
    old = mesh.backends["ra"]
    pid = old.pid
    old.detach()  # the agent exits; wireguard-go keeps running
    new = mesh.backends["ra"] = mesh.new_backend("ra")
    await new.start()
    assert new.pid == pid
    d, rd = await mesh.apply("ra")
    assert d.empty and rd.empty, (str(d), rd)
    assert reach(lab, "ra", ["rb"]) == {"rb": True}


async def test_hub_down_keeps_direct_paths_and_relays_return(lab, mesh, servers):
    require_netns("wireguard-go", "wg", "nft")
    assert reach(lab, "nat", ["ra", "cloud"]) == {"ra": True, "cloud": True}
    await mesh.backends["hub"].stop()
    # Direct and tunnel pairs do not need the hub's tunnel; relayed ones do.
    assert reach(lab, "ra", ["hub", "cloud"]) == {"hub": True, "cloud": True}
    assert reach(lab, "nat", ["cloud"]) == {"cloud": True}
    assert reach(lab, "ra", ["rb", "nat"], timeout=1.0) == {"rb": False, "nat": False}
    # The hub comes back (a new agent, same key) and relaying returns.
    mesh.backends["hub"] = mesh.new_backend("hub")
    await mesh.backends["hub"].start()
    await mesh.apply("hub")

    # The restarted hub handshakes with every peer it can reach (the NAT'd one through the
    # mapping it remembered), so relaying returns without waiting out the peers' stale sessions.
    async def relayed():
        return reach(lab, "ra", ["rb", "nat"]) == {"rb": True, "nat": True}
    assert await wait_for(relayed, 20.0, 0.2)
    assert reach(lab, "nat", ["rb", "hub"]) == {"rb": True, "hub": True}


async def test_nat_mapping_change_roams(lab, mesh, servers):
    require_netns("wireguard-go", "wg", "nft")
    nat_key = mesh.fact("nat").wireguard_public_key
    assert reach(lab, "nat", ["hub"]) == {"hub": True}
    old = {s.public_key: s for s in await mesh.backends["hub"].stats()}[nat_key].endpoint
    assert old.startswith(lab.nat_public + ":")
    lab.renat("198.18.0.31")  # the NAT box returns with a new public address: every mapping changes
    assert reach(lab, "nat", ["hub"]) == {"hub": True}
    now = {s.public_key: s for s in await mesh.backends["hub"].stats()}[nat_key].endpoint
    assert now.startswith("198.18.0.31:"), now
    # Traffic the other way and through the relay follows the new mapping.
    assert reach(lab, "hub", ["nat"]) == {"nat": True}
    assert reach(lab, "rb", ["nat"]) == {"nat": True}
    # A tunnel peer learns the new mapping from the NAT'd node's next packet.
    assert reach(lab, "nat", ["cloud"]) == {"cloud": True}
    assert reach(lab, "cloud", ["nat"]) == {"nat": True}


async def test_agent_process_killed_with_sigkill_restarts_without_churn(lab, mesh, servers):
    require_netns("wireguard-go", "wg", "nft")
    import json
    import subprocess
    import sys

    from testbed.lab.agent_stub import encode

    # The hub's data plane moves into a real agent process.
    await mesh.backends["hub"].stop()
    p = mesh.plan("hub")
    doc = encode(p.interface, p.routes) + "\n"
    state = str(mesh.state_dir)  # the agent's state directory outlives the agent, as on a VM

    def start_agent():
        proc = lab.popen("hub", [sys.executable, "-m", "testbed.lab.agent_stub", state],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        proc.stdin.write(doc)
        proc.stdin.flush()
        return proc, json.loads(proc.stdout.readline())

    first, report = start_agent()
    assert not report["wg_empty"] and report["routes_added"] > 0  # routes died with the old interface
    wg_pid = report["pid"]
    rules_before = lab.run("hub", ["ip", "rule", "show"]).stdout
    routes_before = sorted(our_routes(lab, "hub"))
    table_before = lab.run("hub", ["nft", "list", "table", "inet", "mesh"]).stdout
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=5)
    assert reach(lab, "ra", ["rb"]) == {"rb": True}  # wireguard-go outlives its agent: relaying goes on
    second, report = start_agent()
    try:
        assert report["pid"] == wg_pid  # the same wireguard-go, adopted
        assert report["wg_empty"] and report["routes_empty"] and report["nft"] == "unchanged", report
        assert lab.run("hub", ["ip", "rule", "show"]).stdout == rules_before
        assert sorted(our_routes(lab, "hub")) == routes_before
        assert lab.run("hub", ["nft", "list", "table", "inet", "mesh"]).stdout == table_before
        assert reach(lab, "nat", ["rb"]) == {"rb": True}
    finally:
        second.kill()
        second.wait(timeout=5)
        os.kill(wg_pid, signal.SIGTERM)
