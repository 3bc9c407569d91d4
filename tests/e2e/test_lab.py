"""The lab itself: its shape holds, two labs coexist, and down() leaves nothing behind."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import require_netns
from testbed.lab import Lab, LabError, topology


def namespaces() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def test_lab_shape_peering_is_not_transitive_and_nat_hides_the_vm():
    require_netns("wireguard-go", "wg", "nft")
    with Lab.create() as lab:
        lab.serve("rb", 7003)
        lab.serve("hub", 7003)
        lab.serve("cloud", 7003)
        ok = {r["target"]: r for r in lab.connect("ra", ["10.4.0.10:7003", "10.31.0.10:7003"], 1.0)}
        assert ok["10.4.0.10:7003"]["ok"]            # main region <-> regional: peered
        assert not ok["10.31.0.10:7003"]["ok"]       # regional <-> regional: no route
        # The NAT'd VM reaches the internet from the NAT's public address, and nothing reaches it.
        (r,) = lab.connect("nat", ["198.18.0.20:7003"])
        assert r["ok"] and r["answer"] == f"cloud {topology.NAT_PUBLIC}"
        assert lab.connect("cloud", ["192.168.77.10:7003"], 0.5)[0]["ok"] is False
        # A regional VM goes out through its NAT gateway.
        assert lab.connect("ra", ["198.18.0.20:7003"])[0]["answer"] == f"cloud {topology.AWS_PUBLIC}"
        facts = lab.nodes["nat"].facts("k", 51820)
        assert (facts.public_address, facts.mesh_address) == ("", "100.64.0.30")


def test_two_labs_coexist_and_down_removes_everything():
    require_netns("wireguard-go", "wg", "nft")
    a, b = Lab.create(), Lab.create()
    try:
        assert a.tag != b.tag and not set(a.ns.values()) & set(b.ns.values())
        wg = a.popen("hub", ["wireguard-go", "-f", a.nodes["hub"].ifname], stdout=subprocess.DEVNULL)
        sock = Path(f"/var/run/wireguard/{a.nodes['hub'].ifname}.sock")
        for _ in range(250):  # at most 5 s for wireguard-go to open its socket
            if sock.exists() or wg.poll() is not None:
                break
            time.sleep(0.02)
        assert sock.exists()
        orphan = subprocess.Popen(["ip", "netns", "exec", a.ns["ra"], "sleep", "60"])  # not started through the lab
        a.down()
        assert not set(a.ns.values()) & namespaces()
        assert wg.poll() is not None and orphan.wait(timeout=5) is not None
        assert not sock.exists()
        assert set(b.ns.values()) <= namespaces()  # the other lab is untouched
        a.down()  # twice is fine
    finally:
        a.down()
        b.down()
    assert not set(b.ns.values()) & namespaces()


def test_failed_build_leaves_nothing(monkeypatch):
    require_netns("wireguard-go", "wg", "nft")
    original = topology.build_steps

    def broken(ns, nat_public=topology.NAT_PUBLIC):
        return original(ns, nat_public)[:10] + [["ip", "link", "add", "x", "type", "no-such-kind"]]

    monkeypatch.setattr(topology, "build_steps", broken)
    lab = Lab()
    with pytest.raises(LabError):
        lab.up()
    assert not set(lab.ns.values()) & namespaces()
