"""Item 8: admin certificates are short-lived, revocable, and mint more only when made with that right."""

from __future__ import annotations

import grpc
import pytest

from mesh.v1 import admission_pb2, admission_pb2_grpc
from meshcore import pki
from meshd import admincerts


def _channel(mesh, key, cert_pem: bytes) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(mesh.coordinator.ca.pem, pki.key_pem(key), cert_pem)
    return grpc.aio.secure_channel(mesh.address, creds, options=[("grpc.ssl_target_name_override", pki.SERVER_NAME)])


async def _issue(stub, name: str, **kw):
    key = pki.new_key()
    resp = await stub.IssueAdminCert(admission_pb2.IssueAdminCertRequest(csr_pem=pki.make_csr(key, name).decode(), **kw))
    return key, resp


async def test_admin_certificates_are_short_lived_by_default(mesh):
    _, resp = await _issue(mesh.admission(), "ops")
    cert = pki.load_cert(resp.certificate_pem.encode(), "admin")
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life.total_seconds() <= admincerts.DEFAULT_TTL_S + 600
    assert resp.serial == pki.serial_hex(cert) and resp.expires_at == int(pki.expires_at(cert))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _issue(mesh.admission(), "ops", ttl_s=400 * 24 * 3600)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_plain_admin_certificate_cannot_mint_admin_certificates(mesh):
    key, resp = await _issue(mesh.admission(), "scheduler")
    async with _channel(mesh, key, resp.certificate_pem.encode()) as ch:
        stub = admission_pb2_grpc.AdmissionServiceStub(ch)
        await stub.ListTokens(admission_pb2.ListTokensRequest())  # an admin otherwise
        for may_issue in (False, True):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _issue(stub, "mallory", may_issue=may_issue)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_issuer_certificate_mints_only_what_it_was_granted(mesh):
    key, resp = await _issue(mesh.admission(), "lead", may_issue=True)
    async with _channel(mesh, key, resp.certificate_pem.encode()) as ch:
        stub = admission_pb2_grpc.AdmissionServiceStub(ch)
        _, plain = await _issue(stub, "ops")
        assert pki.identity(pki.load_cert(plain.certificate_pem.encode(), "x"))[0] == pki.KIND_ADMIN


async def test_a_revoked_admin_certificate_is_refused_at_once(mesh):
    key, resp = await _issue(mesh.admission(), "laptop", ttl_s=90 * 24 * 3600)
    async with _channel(mesh, key, resp.certificate_pem.encode()) as ch:
        stub = admission_pb2_grpc.AdmissionServiceStub(ch)
        await stub.ListTokens(admission_pb2.ListTokensRequest())
        listed = await mesh.admission().ListAdminCerts(admission_pb2.ListAdminCertsRequest())
        assert [(c.serial, c.name, c.revoked) for c in listed.certs] == [(resp.serial, "laptop", False)]
        out = await mesh.admission().RevokeAdminCert(admission_pb2.RevokeAdminCertRequest(serial_or_name=resp.serial))
        assert [c.serial for c in out.certs] == [resp.serial] and out.certs[0].revoked
        for call in (stub.ListTokens(admission_pb2.ListTokensRequest()),
                     stub.CreateToken(admission_pb2.CreateTokenRequest(ttl_s=60))):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in e.value.details()


async def test_revoking_by_name_and_a_certificate_made_offline_with_the_ca_key(mesh):
    ca = mesh.coordinator.ca
    offline_key = pki.new_key()  # as `meshctl cluster create` signs its own, without meshd
    offline = ca.sign_csr(pki.make_csr(offline_key, "meshctl"), "meshctl", pki.KIND_ADMIN_ISSUER, days=30)
    key, resp = await _issue(mesh.admission(), "ci")
    await mesh.admission().RevokeAdminCert(admission_pb2.RevokeAdminCertRequest(serial_or_name="ci"))
    await mesh.admission().RevokeAdminCert(admission_pb2.RevokeAdminCertRequest(
        serial_or_name=pki.serial_hex(pki.load_cert(offline, "x"))))
    for k, pem in ((key, resp.certificate_pem.encode()), (offline_key, offline)):
        async with _channel(mesh, k, pem) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await admission_pb2_grpc.AdmissionServiceStub(ch).ListTokens(admission_pb2.ListTokensRequest())
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as e:  # a revocation of something unknown is said, not ignored
        await mesh.admission().RevokeAdminCert(admission_pb2.RevokeAdminCertRequest(serial_or_name="nobody"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
