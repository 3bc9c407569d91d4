"""meshd checks what nodes claim, at join and at renewal, over real gRPC; the rest of the mesh goes on."""

from __future__ import annotations

import grpc
import pytest

from mesh.v1 import admission_pb2, catalog_pb2, types_pb2
from meshagent.agent import Agent
from meshcore.errors import InvalidArgument
from tests.meshfix import mesh, until  # noqa: F401  (fixture)

KEY_OTHER = "B" * 42 + "A="


async def code_of(coro):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    return err.value.code(), err.value.details()


def lying(agent: Agent, **fields):
    real = agent.facts

    def facts():
        f = real()
        for k, v in fields.items():
            if k == "labels":
                f.labels.clear()
                f.labels.update(v)
            else:
                setattr(f, k, v)
        return f
    agent.facts = facts
    return agent


AWS = {"cloud": "aws", "vpc_id": "vpc-main", "vpc_cidr": "10.4.0.0/16"}


@pytest.mark.parametrize("claim, rule", [
    ({**AWS, "private_address": "169.254.169.254"}, "link-local"),
    ({**AWS, "private_address": "8.8.8.8"}, "public address"),
    ({**AWS, "private_address": "10.9.0.7"}, "not inside the VPC CIDR 10.4.0.0/16"),
    ({**AWS, "vpc_cidr": "172.31.0.0/16", "private_address": "172.31.0.9"}, "outside the mesh's VPC ranges"),
    ({"public_address": "10.1.2.3"}, "public unicast"),
])
async def test_join_refuses_false_claims_and_stores_nothing(mesh, claim, rule):
    token = await mesh.token(uses=1)
    rev = await mesh.coordinator.store.revision()
    agent = lying(Agent(mesh.agent_config("liar", token)), **claim)
    with pytest.raises(InvalidArgument, match=rule):
        await agent.join()
    assert await mesh.coordinator.store.revision() == rev


async def test_another_nodes_address_or_key_is_refused_at_join_and_renewal(mesh):
    honest = lying(Agent(mesh.agent_config("honest", await mesh.token(uses=1))), **AWS,
                   private_address="10.4.0.20", wireguard_public_key="A" * 42 + "E=")
    mesh.agents.append(honest)
    await honest.start()
    token = await mesh.token(uses=2)
    thief = lying(Agent(mesh.agent_config("thief", token)), **AWS, private_address="10.4.0.20")
    with pytest.raises(InvalidArgument, match="private address 10.4.0.20: it belongs to node honest"):
        await thief.join()
    thief = lying(Agent(mesh.agent_config("thief", token)), wireguard_public_key="A" * 42 + "E=")
    with pytest.raises(InvalidArgument, match="WireGuard public key: it belongs to node honest"):
        await thief.join()
    # A node that joined honestly cannot take the key at renewal either.
    other = await mesh.agent("other")
    code, details = await code_of(other.admission_stub.Renew(admission_pb2.RenewRequest(
        node=types_pb2.Node(wireguard_public_key="A" * 42 + "E="))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "belongs to node honest" in details
    code, details = await code_of(other.admission_stub.Renew(admission_pb2.RenewRequest(
        node=types_pb2.Node(public_address="169.254.169.254"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "public unicast" in details
    # ... and the mesh goes on: the honest node exposes, the other resolves it.
    await honest.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="web", port=80)))
    await until(lambda: "web" in other.catalog.services.items)


async def test_token_labels_bind_the_node(mesh):
    token = await mesh.token(uses=3, team="ml")
    with pytest.raises(InvalidArgument, match="the join token sets team='ml' and the node sets 'ops'"):
        await lying(Agent(mesh.agent_config("a", token)), labels={"team": "ops"}).join()
    agent = lying(Agent(mesh.agent_config("b", token)), labels={"gpu.count": "8"})
    mesh.agents.append(agent)
    await agent.start()
    node = await mesh.coordinator.nodes.get("b")
    assert dict(node.labels) == {"gpu.count": "8", "team": "ml"}
    code, details = await code_of(agent.admission_stub.Renew(admission_pb2.RenewRequest(
        node=types_pb2.Node(labels={"team": "ops"}))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "labels from the token are binding" in details
    # A renewal without the token's label keeps it: a node cannot drop it.
    await agent.admission_stub.Renew(admission_pb2.RenewRequest(node=types_pb2.Node(labels={"gpu.count": "4"})))
    node = await mesh.coordinator.nodes.get("b")
    assert dict(node.labels) == {"gpu.count": "4", "team": "ml"}
