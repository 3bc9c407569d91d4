"""meshd --bootstrap-token-file: a join string made before meshd ever ran (by `meshctl cluster create`).

The cluster builder makes the CA and the join string on the user's machine,
stores both in SSM, and each coordinator starts meshd with them. Tested here
with a real meshd: agents join with that string (more than once), a restart
keeps it, a revoked one stays revoked, a string for another CA is refused at
start; and the cluster status probe sees meshd serving over TLS, then not.
"""

from __future__ import annotations

import asyncio

import pytest

from infra.cluster.status import health_probe
from meshcore import pki
from meshcore.errors import InvalidArgument
from meshcore.jointoken import new_join_string
from tests.meshfix import Mesh


def _bootstrap(tmp_path, other_ca: bool = False):
    ca = pki.CertificateAuthority.load_or_create(tmp_path / ("other" if other_ca else "meshd"))
    if other_ca:
        pki.CertificateAuthority.load_or_create(tmp_path / "meshd")
    token = new_join_string(pki.pin(ca.pem))
    path = tmp_path / "bootstrap-token"
    path.write_text(token + "\n")
    return token, path


async def test_agents_join_with_the_bootstrap_token_across_restarts(tmp_path) -> None:
    token, path = _bootstrap(tmp_path)
    mesh = Mesh(tmp_path, bootstrap_token_file=str(path))
    await mesh.start()
    try:
        a = await mesh.agent("warm-0", token=token)
        b = await mesh.agent("warm-1", token=token)
        assert a.identity and b.identity and a.identity.node_id != b.identity.node_id
        probe = health_probe(tmp_path / "meshd" / "ca.crt", timeout_s=5)
        assert await asyncio.to_thread(probe, mesh.join_address)
        await mesh.restart()  # create-if-absent: the same token, uses kept
        tokens = await mesh.coordinator.admission.list()
        rec = next(t for t in tokens if token.startswith(t.id + "."))
        assert rec.uses == 2 and rec.max_uses == 0
        await mesh.coordinator.admission.revoke(rec.id)
        await mesh.restart()
        rec = next(t for t in await mesh.coordinator.admission.list() if t.id == rec.id)
        assert rec.revoked, "a restart must not revive a revoked bootstrap token"
        join = mesh.join_address
        await mesh.stop_coordinator()
        assert not await asyncio.to_thread(health_probe(tmp_path / "meshd" / "ca.crt", timeout_s=1), join)
    finally:
        await mesh.close()


async def test_a_bootstrap_token_for_another_ca_is_refused_at_start(tmp_path) -> None:
    _, path = _bootstrap(tmp_path, other_ca=True)
    mesh = Mesh(tmp_path, bootstrap_token_file=str(path))
    with pytest.raises(InvalidArgument, match="another mesh"):
        await mesh.start()
    await mesh.close()


async def test_probe_refuses_a_meshd_of_another_ca(tmp_path) -> None:
    mesh = Mesh(tmp_path)
    await mesh.start()
    try:
        other = pki.CertificateAuthority.load_or_create(tmp_path / "other")
        (tmp_path / "other.crt").write_bytes(other.pem)
        assert not await asyncio.to_thread(health_probe(tmp_path / "other.crt", timeout_s=2), mesh.join_address)
    finally:
        await mesh.close()
