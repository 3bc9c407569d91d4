"""Item 9: node certificates are renewed over mTLS before they expire; a node renews only itself."""

from __future__ import annotations

import grpc
import pytest

from mesh.v1 import admission_pb2, nodes_pb2
from meshcore import pki
from tests.meshfix import Mesh, until


def _serial(pem: bytes) -> int:
    return pki.load_cert(pem, "cert").serial_number


async def test_an_agent_renews_its_certificate_before_expiry_and_keeps_working(tmp_path):
    # 2 minutes of life (plus the 5 minutes back-dated): less than a third left at once
    mesh = await Mesh(tmp_path, node_cert_ttl_s=120).start()
    try:
        a = await mesh.agent("alpha")
        first_cert, first_key = a.identity.cert_pem, a.identity.key_pem
        await until(lambda: a.identity.cert_pem != first_cert, timeout=15)
        cert = pki.load_cert(a.identity.cert_pem, "renewed")
        assert pki.identity(cert) == (pki.KIND_NODE, a.identity.node_id)
        assert a.identity.key_pem != first_key  # a new key, made on the node
        on_disk = (tmp_path / "agent-alpha" / "cert.pem").read_bytes()
        assert _serial(on_disk) == cert.serial_number
        # the renewed identity works: the channel was reopened with it
        await until(lambda: a.uplink.connected, timeout=10)
        resp = await a.uplink.admission_stub.Renew(admission_pb2.RenewRequest(node=a.facts()))
        assert resp.node.id == a.identity.node_id
    finally:
        await mesh.close()


async def test_a_csr_naming_another_node_still_renews_only_the_caller(mesh):
    a = await mesh.agent("alpha")
    b = await mesh.agent("beta")
    key = pki.new_key()
    resp = await a.uplink.admission_stub.Renew(admission_pb2.RenewRequest(
        node=a.facts(), csr_pem=pki.make_csr(key, b.identity.node_id).decode()))
    assert pki.identity(pki.load_cert(resp.certificate_pem.encode(), "x")) == (pki.KIND_NODE, a.identity.node_id)


async def test_a_removed_node_cannot_renew_its_certificate(mesh):
    a = await mesh.agent("alpha")
    await mesh.nodes().RemoveNode(nodes_pb2.RemoveNodeRequest(id_or_name="alpha"))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await a.uplink.admission_stub.Renew(admission_pb2.RenewRequest(
            node=a.facts(), csr_pem=pki.make_csr(pki.new_key(), "alpha").decode()))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_bad_csr_renews_nothing(mesh):
    a = await mesh.agent("alpha")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await a.uplink.admission_stub.Renew(admission_pb2.RenewRequest(node=a.facts(), csr_pem="not a csr"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
