"""Proof that a node itself is leaving: made with its mesh key, checked against the mesh CA.

The gossip key only shows that a sender is a member; any member could claim
"X left". A LEAVE message therefore carries a proof (opaque to the state
machine, checked by the injected `verify_leave`):

    timestamp_ms u64 | cert length u16 | node certificate (DER) | ECDSA-SHA256 signature

The signature covers a domain tag, the node id, the incarnation and the
timestamp. The verifier accepts it only if the certificate was issued by the
mesh CA to a node whose id is the leaving node, is within its validity, and
the timestamp is within MAX_AGE_S of the verifier's wall clock (an old leave
replayed after a restart is refused). Anything else is False, never raised.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshcore import pki

_DOMAIN = b"mesh-gossip-leave-v1\x00"
_HEAD = struct.Struct(">QH")
MAX_AGE_S = 120.0


def _signed(node: str, incarnation: int, ts_ms: int) -> bytes:
    return _DOMAIN + node.encode() + b"\x00" + struct.pack(">QQ", incarnation, ts_ms)


def leave_signer(key_pem: bytes, cert_pem: bytes, wall: Callable[[], float]) -> Callable[[str, int], bytes]:
    key = serialization.load_pem_private_key(key_pem, password=None)
    cert_der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)

    def sign(node: str, incarnation: int) -> bytes:
        ts = int(wall() * 1000)
        sig = key.sign(_signed(node, incarnation, ts), ec.ECDSA(hashes.SHA256()))
        return _HEAD.pack(ts, len(cert_der)) + cert_der + sig

    return sign


def leave_verifier(ca_pem: bytes, wall: Callable[[], float],
                   max_age_s: float = MAX_AGE_S) -> Callable[[str, int, bytes], bool]:
    ca = x509.load_pem_x509_certificate(ca_pem)

    def verify(node: str, incarnation: int, proof: bytes) -> bool:
        try:
            ts, n = _HEAD.unpack_from(proof, 0)
            cert = x509.load_der_x509_certificate(proof[_HEAD.size:_HEAD.size + n])
            sig = proof[_HEAD.size + n:]
            now = wall()
            if abs(now - ts / 1000) > max_age_s:
                return False
            cert.verify_directly_issued_by(ca)
            if not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
                return False
            if pki.identity(cert) != (pki.KIND_NODE, node):
                return False
            cert.public_key().verify(sig, _signed(node, incarnation, ts), ec.ECDSA(hashes.SHA256()))
            return True
        except Exception:  # any malformed or wrong proof is simply not a proof
            return False

    return verify
