"""The mesh CA and node identities (X.509, ECDSA P-256).

- meshd creates the CA on first start in its state directory (`ca.key` 0600,
  `ca.crt`) and a server certificate for itself whose SAN includes
  `SERVER_NAME`; clients verify meshd against the CA and that name, so any
  replica's address works.
- A node makes its own key and a CSR; meshd signs it after checking the join
  token. The certificate's subject is CN=<node id>, O=mesh-node (O=mesh-admin
  for administrators, O=mesh-admin-issuer for administrators who may issue
  admin certificates themselves). The private key never leaves the node.
- Certificates are renewed before they expire: a node sends a new CSR in
  Renew (over mTLS, with its current certificate) once less than a third of
  its certificate's life is left (`renew_due`).
- The join token carries the SHA-256 of the CA certificate (its "pin"), so a
  joining node can trust meshd before it has anything else (as K3s tokens do).
- A cluster's etcd has a CA of its own (the *store CA*, same class, made by
  `meshctl cluster create`): etcd trusts it alone for clients and peers, so a
  node's certificate from the mesh CA opens nothing there. `store_cert`
  issues an etcd member's certificate (server and peer: serverAuth and
  clientAuth, SAN = its addresses) or meshd's client certificate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshcore.errors import InvalidArgument, StateError, Unauthenticated

SERVER_NAME = "meshd.mesh"
KIND_NODE = "mesh-node"
KIND_ADMIN = "mesh-admin"
#: an admin who may also issue admin certificates (`meshctl admin cert --may-issue`)
KIND_ADMIN_ISSUER = "mesh-admin-issuer"
KIND_SERVER = "mesh-server"
#: etcd members and their clients (meshd), under a store CA
KIND_STORE_MEMBER = "mesh-store-member"
KIND_STORE_CLIENT = "mesh-store-client"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(pem: bytes, where: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise StateError(f"{where}: not a PEM private key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise StateError(f"{where}: expected an ECDSA key")
    return key


def load_cert(pem: bytes, where: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise StateError(f"{where}: not a PEM certificate ({e})") from e


def pin(ca_pem: bytes) -> str:
    """SHA-256 (hex) of the CA certificate's DER: what join tokens carry."""
    return hashlib.sha256(load_cert(ca_pem, "CA").public_bytes(serialization.Encoding.DER)).hexdigest()


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def identity(cert: x509.Certificate) -> tuple[str, str]:
    """(kind, common name) of a certificate issued by the mesh CA."""
    subject = cert.subject
    cn = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    org = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not cn or not org:
        raise Unauthenticated("client certificate has no mesh identity (CN and O)")
    return str(org[0].value), str(cn[0].value)


def serial_hex(cert: x509.Certificate) -> str:
    """A certificate's serial number as lower-case hex: how admin certificates are named for revocation."""
    return format(cert.serial_number, "x")


def expires_at(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


def renew_due(cert: x509.Certificate, now: dt.datetime | None = None) -> bool:
    """True once less than a third of the certificate's life is left."""
    now = now or _now()
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < life / 3


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_file(path: Path, data: bytes, private: bool = False) -> None:
    """Write atomically (temp file + rename); private files are 0600."""
    if private:
        _write_private(path, data)
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return cert_pem(self.cert)

    @classmethod
    def load_or_create(cls, directory: Path, name: str = "mesh CA") -> CertificateAuthority:
        key_path, crt_path = directory / "ca.key", directory / "ca.crt"
        if key_path.exists() or crt_path.exists():
            if not (key_path.exists() and crt_path.exists()):
                missing = crt_path if key_path.exists() else key_path
                raise StateError(f"state directory {directory} has half a CA: {missing} is missing; "
                                 f"restore it from a backup (a new CA would lock out every node)")
            try:
                key = load_key(key_path.read_bytes(), str(key_path))
                cert = load_cert(crt_path.read_bytes(), str(crt_path))
            except PermissionError as e:
                raise StateError(f"cannot read the CA in {directory}: {e}") from e
            if cert.public_key().public_numbers() != key.public_key().public_numbers():
                raise StateError(f"{crt_path} does not match {key_path}")
            return cls(key, cert)
        ca = cls.new(name)
        directory.mkdir(parents=True, exist_ok=True)
        write_file(key_path, key_pem(ca.key), private=True)
        write_file(crt_path, cert_pem(ca.cert))
        return ca

    @classmethod
    def new(cls, name: str) -> CertificateAuthority:
        """A new CA, in memory only (ten years)."""
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(_now() - dt.timedelta(minutes=5))
                .not_valid_after(_now() + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def _issue(self, subject_key, cn: str, kind: str, life: dt.timedelta, server: bool,
               sans: list[x509.GeneralName], client_too: bool = False) -> bytes:
        usages = ([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH] if client_too or not server else [])
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                                            x509.NameAttribute(NameOID.ORGANIZATION_NAME, kind)]))
                   .issuer_name(self.cert.subject).public_key(subject_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(_now() - dt.timedelta(minutes=5))
                   .not_valid_after(_now() + life)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return cert_pem(builder.sign(self.key, hashes.SHA256()))

    def sign_csr(self, csr_pem: bytes | str, cn: str, kind: str, days: int = 365, seconds: float | None = None) -> bytes:
        """Sign a node's or admin's CSR for `days` (or `seconds`); the subject is ours, not the CSR's."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
        except ValueError as e:
            raise InvalidArgument(f"invalid CSR: not a PEM certificate signing request ({e})") from e
        if not csr.is_signature_valid:
            raise InvalidArgument("invalid CSR: its signature does not match its public key")
        if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
            raise InvalidArgument("invalid CSR: the key must be ECDSA P-256")
        life = dt.timedelta(seconds=seconds) if seconds is not None else dt.timedelta(days=days)
        return self._issue(csr.public_key(), cn, kind, life, server=False, sans=[])

    def server_cert(self, key: ec.EllipticCurvePrivateKey, extra_names: list[str] = ()) -> bytes:
        sans: list[x509.GeneralName] = [x509.DNSName(SERVER_NAME), x509.DNSName("localhost"),
                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        for n in extra_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        return self._issue(key.public_key(), "meshd", KIND_SERVER, dt.timedelta(days=825), server=True, sans=sans)

    def store_cert(self, key: ec.EllipticCurvePrivateKey, cn: str, member: bool, addresses: list[str] = (),
                   days: int = 825) -> bytes:
        """From a store CA: an etcd member's certificate (`member`: it serves clients and peers and dials
        peers, so serverAuth and clientAuth; SAN = `addresses`, IPs or names) or a client's (clientAuth)."""
        sans: list[x509.GeneralName] = []
        for n in addresses:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        kind = KIND_STORE_MEMBER if member else KIND_STORE_CLIENT
        return self._issue(key.public_key(), cn, kind, dt.timedelta(days=days), server=member, sans=sans,
                           client_too=True)
