"""Shared test set-up: uvloop for every asyncio test, and the netns capability rule.

Tests that need root and network namespaces call `require_netns()`. Without
the capability they are skipped with the reason, except under
MESH_REQUIRE_NETNS=1 (set by `make test`), where a missing capability is a
failure: CI runs as root, so nothing that should run there is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
sys.path.insert(0, str(ROOT))
import meshcore  # noqa: E402,F401  (before anything loads grpc: its fork handlers stay off, as in the daemons)


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
def _root_logger_restored():
    """A test that parses a daemon's flags in-process sets up its logging (meshcore.logs): the
    next test starts with the root logger as it was, so meshctl's output carries no daemon logs."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def _netns_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("ip"):
        return "needs iproute2 (ip)"
    probe = f"meshprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def require_netns(*tools: str) -> None:
    """Skip (or fail under MESH_REQUIRE_NETNS=1) unless root, netns and `tools` are available."""
    why = _netns_missing()
    if why is None:
        missing = [t for t in tools if not shutil.which(t)]
        if missing:
            why = f"needs {', '.join(missing)} (make setup installs them)"
    if why is None:
        return
    if os.environ.get("MESH_REQUIRE_NETNS") == "1":
        pytest.fail(f"MESH_REQUIRE_NETNS=1 but {why}")
    pytest.skip(why)


@pytest.fixture
def local_mesh(tmp_path):
    """meshd as a real process on loopback (agents are started by the test), stopped afterwards."""
    from testbed.localmesh import LocalMesh

    mesh = LocalMesh(tmp_path / "mesh", lease_ttl_s=3, grace_s=3)
    mesh.root.mkdir()
    try:
        mesh.start_meshd()
        yield mesh
    finally:
        mesh.close()
