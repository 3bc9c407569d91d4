"""The agent's facts as a user sees them: discovered from instance metadata, overridden by flags,
shown by the local API with their source; ping and peers over the local API."""

from __future__ import annotations

import grpc

from mesh.v1 import agent_pb2, agent_pb2_grpc
from testbed.doubles.imds import ImdsDouble, aws_instance
from tests.meshfix import mesh, until  # noqa: F401  (fixture)


def local(agent) -> agent_pb2_grpc.AgentServiceStub:
    ch = grpc.aio.insecure_channel(f"unix:{agent.config.socket}")
    return ch, agent_pb2_grpc.AgentServiceStub(ch)


async def test_discovered_facts_reach_meshd_and_status_says_where_they_came_from(mesh):
    meta = aws_instance("10.4.3.7", "vpc-0main", "10.4.0.0/16", instance_type="g6.xlarge", zone="us-east-1c")
    with ImdsDouble(lifecycle="spot", meta=meta) as imds:
        agent = await mesh.agent("gpu1", imds=imds.url, region="us-east-2", spot=False)
    node = await mesh.coordinator.nodes.get("gpu1")
    assert (node.cloud, node.vpc_id, node.vpc_cidr, node.private_address) == ("aws", "vpc-0main", "10.4.0.0/16",
                                                                              "10.4.3.7")
    assert node.mesh_address == "10.4.3.7"  # an AWS node keeps its VPC address
    assert node.region == "us-east-2"  # the flag wins over the metadata
    assert node.labels["node.kubernetes.io/instance-type"] == "g6.xlarge"
    assert node.labels["mesh.lifecycle"] == "spot"
    ch, stub = local(agent)
    async with ch:
        st = await stub.Status(agent_pb2.AgentStatusRequest())
    assert st.facts["vpc_id"] == "vpc-0main" and st.fact_sources["vpc_id"] == "aws-imds"
    assert st.facts["region"] == "us-east-2" and st.fact_sources["region"] == "flag"


async def test_ping_and_peers_without_a_data_plane(mesh):
    a = await mesh.agent("pa")
    b = await mesh.agent("pb")
    # pb joins, then starts its gossip listener and reports the port with its first renewal
    await until(lambda: any(n.name == "pb" and n.gossip_port for n in a.catalog.nodes.items.values()))
    ch, stub = local(a)
    async with ch:
        peers = await stub.ListPeers(agent_pb2.ListPeersRequest())
        assert not peers.data_plane and [p.name for p in peers.peers] == ["pb"]
        pong = await stub.Ping(agent_pb2.PingRequest(target="pb", count=3))
        assert pong.lost == 0 and len(pong.rtt_ms) == 3 and all(r > 0 for r in pong.rtt_ms)
        assert pong.probed == f"{b.identity.mesh_address}:{b.gossip.node.port}"
        try:
            await stub.Ping(agent_pb2.PingRequest(target="nobody"))
            raise AssertionError("ping to an unknown name answered")
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND and "no node or service named 'nobody'" in e.details()


async def test_ping_to_a_node_without_a_gossip_port_says_why_it_cannot_answer(mesh):
    a = await mesh.agent("pa")
    await mesh.agent("quiet", gossip="")  # no gossip listener: nothing to ping
    await until(lambda: "quiet" in {n.name for n in a.catalog.nodes.items.values()})
    ch, stub = local(a)
    async with ch:
        try:
            await stub.Ping(agent_pb2.PingRequest(target="quiet"))
            raise AssertionError("ping to a node without a gossip listener answered")
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "node quiet has reported no gossip port" in e.details() and "joined a moment ago" in e.details()
