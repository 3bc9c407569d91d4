"""Choosing a WireGuard backend from what the machine offers."""

from __future__ import annotations

import os

import pytest

from meshcore.errors import FailedPrecondition, InvalidArgument
from meshagent.wg.backend import BackendConfig, Probe, choose, probe
from meshagent.wg.factory import make_backend


def fake_wireguard_go(dirpath):
    exe = dirpath / "wireguard-go"
    exe.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(exe, 0o755)
    return exe


def test_probe_finds_nothing_on_a_bare_machine(tmp_path):
    p = probe(path=str(tmp_path), module_dir=tmp_path / "sys-module", modules_root=tmp_path, release="6.1.0")
    assert p == Probe(kernel_module=False, wireguard_go=None)


def test_probe_sees_a_loaded_module_a_loadable_one_and_the_binary(tmp_path):
    (tmp_path / "loaded").mkdir()
    assert probe(path="", module_dir=tmp_path / "loaded", modules_root=tmp_path).kernel_module
    rel = tmp_path / "6.1.0"
    rel.mkdir()
    (rel / "modules.dep").write_text("kernel/drivers/net/wireguard/wireguard.ko: kernel/lib/crypto/libcurve25519.ko\n")
    assert probe(path="", module_dir=tmp_path / "no", modules_root=tmp_path, release="6.1.0").kernel_module
    exe = fake_wireguard_go(tmp_path)
    assert probe(path=str(tmp_path), module_dir=tmp_path / "no", modules_root=tmp_path).wireguard_go == str(exe)


@pytest.mark.parametrize("kernel, wgo, prefer, want", [
    (True, "/usr/bin/wireguard-go", "auto", "kernel"),
    (False, "/usr/bin/wireguard-go", "auto", "userspace"),
    (True, None, "auto", "kernel"),
    (True, "/usr/bin/wireguard-go", "userspace", "userspace"),
    (True, None, "kernel", "kernel"),
])
def test_choice(kernel, wgo, prefer, want):
    assert choose(Probe(kernel, wgo), prefer) == want


def test_nothing_available_says_what_to_install():
    with pytest.raises(FailedPrecondition) as e:
        choose(Probe(False, None))
    msg = str(e.value)
    assert "no WireGuard available" in msg and "apt-get install wireguard-go" in msg and "modprobe wireguard" in msg


def test_asking_for_what_is_missing_is_a_clear_error():
    with pytest.raises(FailedPrecondition, match="no wireguard module"):
        choose(Probe(False, "/usr/bin/wireguard-go"), "kernel")
    with pytest.raises(FailedPrecondition, match="wireguard-go"):
        choose(Probe(True, None), "userspace")
    with pytest.raises(InvalidArgument, match="auto, kernel or userspace"):
        choose(Probe(True, None), "fast")


def test_make_backend_builds_the_chosen_kind(tmp_path):
    b = make_backend("wg0", BackendConfig(state_dir=tmp_path), Probe(False, "/usr/bin/wireguard-go"))
    assert b.kind == "userspace" and b.name == "wg0"
    k = make_backend("wg0", BackendConfig(state_dir=tmp_path), Probe(True, None))
    assert k.kind == "kernel"
    with pytest.raises(InvalidArgument, match="own namespace"):
        make_backend("wg0", BackendConfig(netns="x", state_dir=tmp_path), Probe(True, None))


async def test_kernel_backend_refuses_a_name_another_kind_of_interface_has(tmp_path):
    # Read-only: looks at the loopback interface of the test's own namespace.
    from meshcore.errors import AlreadyExists

    k = make_backend("lo", BackendConfig(state_dir=tmp_path), Probe(True, None))
    with pytest.raises(AlreadyExists, match="in use"):
        await k.start()
