"""Fixtures for the lab tests: a lab per test module, always torn down, and our data plane on it."""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.conftest import require_netns

NETNS_TOOLS = ("wireguard-go", "wg", "nft")


@pytest.fixture(scope="module")
def lab():
    """A fresh lab for the module; removed afterwards even if a test failed."""
    require_netns(*NETNS_TOOLS)
    from testbed.lab import Lab

    built = Lab.create()
    try:
        yield built
    finally:
        built.down()


@pytest_asyncio.fixture
async def mesh(lab, tmp_path):
    """Our data plane started on every lab node and configured from the path plan; stopped afterwards."""
    from testbed.lab.mesh import LabMesh

    m = LabMesh(lab, tmp_path / "wg")
    try:
        await m.start()
        await m.apply_all()
        yield m
    finally:
        await m.stop()
