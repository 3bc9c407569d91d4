"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from tests.conftest import require_netns

from testbed.etcd_cluster import EtcdCluster


@pytest.fixture
def cluster(tmp_path):
    """Three real etcd members on loopback with fast elections; stopped after the test."""
    require_netns("etcd")
    with EtcdCluster(3, tmp_path / "etcd", heartbeat_ms=50, election_ms=300) as c:
        yield c
