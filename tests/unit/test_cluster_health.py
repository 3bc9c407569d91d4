"""`meshctl clusters` judges the mesh from meshd's node list: agents ready out of expected, and
each agent's report of its paths (meshagent.paths.path_health) with the peers down."""

from __future__ import annotations

import pytest

from mesh.v1 import types_pb2
from infra.cluster.status import mesh_health
from meshagent.paths import DIRECT, RELAY, TUNNEL, UNREACHABLE, Path, path_health
from meshcore.errors import InvalidArgument
from meshd.nodes import check_fact_sizes

READY, GONE, LEFT = types_pb2.NODE_STATE_READY, types_pb2.NODE_STATE_UNREACHABLE, types_pb2.NODE_STATE_LEFT


def node(name: str, state: int = READY, **down: int) -> types_pb2.Node:
    report = types_pb2.PathReport(kinds=[types_pb2.PathReport.Kind(kind=k, down=d) for k, d in down.items()])
    return types_pb2.Node(name=name, state=state, path_report=report)


def test_every_agent_ready_and_no_path_down_says_nothing() -> None:
    assert mesh_health([node("replica-0", direct=0), node("gpu-1", tunnel=0)], {"replica-0"}) == ("2/2", [], False)


def test_an_unreachable_agent_and_an_instance_that_never_joined_are_named() -> None:
    agents, reasons, broken = mesh_health([node("replica-0"), node("gpu-1", GONE), node("old", LEFT)],
                                          {"replica-0", "warm-g6-xlarge-0"})
    assert agents == "1/3" and broken  # a node that left is not expected any more
    assert reasons == ["agents 1/3 ready: not gpu-1 (unreachable), warm-g6-xlarge-0 (never joined)"]


def test_an_instance_still_booting_is_not_broken() -> None:
    assert mesh_health([node("replica-0")], {"replica-0", "warm-g6-xlarge-0"})[1:] == (
        ["agents 1/2 ready: not warm-g6-xlarge-0 (never joined)"], False)


def test_path_kinds_with_peers_down_are_named_with_their_nodes() -> None:
    agents, reasons, broken = mesh_health([node("a", direct=0, tunnel=2), node("b", relay=1, tunnel=1)], set())
    assert agents == "2/2" and broken
    assert reasons == ["relay paths down: b 1", "tunnel paths down: a 2, b 1"]


def test_path_health_counts_a_wireguard_peer_down_only_after_its_grace() -> None:
    t = Path(TUNNEL, reason="public endpoint")
    routes = {"a": (Path(DIRECT), ""), "b": (t, "KB"), "c": (t, "KC"), "d": (Path(RELAY, via="hub"), "KH"),
              "e": (Path(UNREACHABLE), "")}
    now = 10_000.0
    since = {"KB": now - 500, "KC": now - 10, "KH": now - 500}
    shakes = {"KB": now - 200, "KC": 0.0, "KH": now - 30}
    # b: stale handshake, configured long ago -> down; c: new, no handshake yet -> not down; d: fresh
    assert path_health(routes, shakes, since, now) == {DIRECT: 0, TUNNEL: 1, RELAY: 0, UNREACHABLE: 1}
    assert path_health(routes, shakes, since, now + 200)[TUNNEL] == 2  # c had its 180 s


@pytest.mark.parametrize("kinds", [["tunnel", "tunnel"], ["teleport"]])
def test_meshd_refuses_a_path_report_it_cannot_read(kinds) -> None:
    with pytest.raises(InvalidArgument, match="path report"):
        check_fact_sizes(types_pb2.Node(name="a", path_report=types_pb2.PathReport(
            kinds=[types_pb2.PathReport.Kind(kind=k) for k in kinds])))
