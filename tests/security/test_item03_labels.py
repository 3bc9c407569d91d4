"""Item 3: labels are bounded at every door (token, join, renew), so node watches and gossip facts never break."""

from __future__ import annotations

import grpc
import pytest

from mesh.v1 import admission_pb2, nodes_pb2, types_pb2
from meshagent.agent import Agent
from meshcore import limits
from tests.meshfix import until


async def _code(call):
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


async def test_renew_with_megabytes_of_labels_is_refused_and_the_node_watch_keeps_serving(mesh):
    a = await mesh.agent("alpha")
    huge = {f"k{i}": "v" * 63 for i in range(20000)}  # ~1.4 MB
    code, details = await _code(a.uplink.admission_stub.Renew(
        admission_pb2.RenewRequest(node=types_pb2.Node(labels=huge)), timeout=10))
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), code
    many = {f"k{i}": "v" for i in range(limits.MAX_LABELS + 1)}
    code, details = await _code(a.uplink.admission_stub.Renew(
        admission_pb2.RenewRequest(node=types_pb2.Node(labels=many)), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and f"at most {limits.MAX_LABELS}" in details
    big = {f"k{i}": "v" * 60 for i in range(limits.MAX_LABELS)}
    code, details = await _code(a.uplink.admission_stub.Renew(
        admission_pb2.RenewRequest(node=types_pb2.Node(labels=big)), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and str(limits.MAX_LABELS_BYTES) in details
    # a new agent still gets every node, and meshctl nodes (ListNodes) answers
    b = await mesh.agent("beta")
    await until(lambda: len(b.catalog.nodes.items) == 2)
    nodes = (await mesh.nodes().ListNodes(nodes_pb2.ListNodesRequest())).nodes
    assert {n.name for n in nodes} == {"alpha", "beta"}


@pytest.mark.parametrize("where", ["token", "join"])
async def test_labels_that_would_not_fit_gossip_facts_are_refused_before_a_token_use_is_spent(mesh, where):
    big = {f"k{i}": "v" * 60 for i in range(limits.MAX_LABELS)}
    if where == "token":
        code, details = await _code(mesh.admission().CreateToken(admission_pb2.CreateTokenRequest(
            ttl_s=60, labels=big)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and str(limits.MAX_LABELS_BYTES) in details
        return
    token = await mesh.token(uses=1)
    cfg = mesh.agent_config("fat", token, labels=big)
    with pytest.raises(Exception, match=str(limits.MAX_LABELS_BYTES)):
        await Agent(cfg).start()
    tokens = (await mesh.admission().ListTokens(admission_pb2.ListTokensRequest())).tokens
    assert [t.uses for t in tokens] == [0]  # nothing spent: the same token still admits a node
    await mesh.agent("thin", token=token)
