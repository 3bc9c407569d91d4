"""Fixtures for the attacks of tests/security: a real meshd and agents, in-process or as processes."""

from __future__ import annotations

import pytest

from testbed.localmesh import LocalMesh
from tests.meshfix import Mesh


@pytest.fixture
async def mesh(tmp_path):
    m = Mesh(tmp_path)
    await m.start()
    try:
        yield m
    finally:
        await m.close()


@pytest.fixture
def local_mesh(tmp_path):
    """meshd and agents as real processes on loopback (as the units start them)."""
    m = LocalMesh(tmp_path / "mesh", lease_ttl_s=3, grace_s=3, gossip_profile="local")
    m.root.mkdir()
    try:
        m.start_meshd()
        yield m
    finally:
        m.close()
