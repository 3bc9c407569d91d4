"""TLS for meshd's etcd connections: the CA that signed etcd's certificate, and meshd's client certificate.

An `etcds://` store is reached over TLS and presents a client certificate
(etcd runs with --client-cert-auth); `etcd://` stays plain, for a loopback
etcd or a lab. The three files are read and checked once, at start, so a
missing, unreadable or mismatched file is one line naming its flag instead
of a handshake that fails later on every call:

- `--etcd-ca`: one or more PEM certificates; etcd's server certificate must
  chain to one of them (gRPC checks it, and that the address dialled is in
  its SAN);
- `--etcd-cert`: meshd's client certificate (PEM); when it lists extended
  key usages, clientAuth must be one (etcd refuses it otherwise);
- `--etcd-key`: its private key (PEM, unencrypted), which must match it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshcore.errors import ConfigError

FLAGS = ("--etcd-ca", "--etcd-cert", "--etcd-key")


@dataclass(frozen=True)
class EtcdTls:
    ca: bytes
    cert: bytes
    key: bytes

    def credentials(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot read it: {e.strerror or e}") from None


def load(ca_file: str, cert_file: str, key_file: str) -> EtcdTls:
    """Read and check the three files; ConfigError naming the flag at fault."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    for flag, value in zip(FLAGS, (ca_file, cert_file, key_file)):
        if not value:
            raise ConfigError(f"an etcds:// store needs {flag} (all of {', '.join(FLAGS)}): etcd runs with "
                              "client certificate authentication")
    ca, cert_pem, key_pem = _read("--etcd-ca", ca_file), _read("--etcd-cert", cert_file), _read("--etcd-key", key_file)
    try:
        if not x509.load_pem_x509_certificates(ca):
            raise ValueError("no certificate")
    except ValueError:
        raise ConfigError(f"--etcd-ca {ca_file}: not a PEM certificate bundle") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(f"--etcd-cert {cert_file}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"--etcd-key {key_file}: not an unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ConfigError(f"--etcd-key {key_file} does not match --etcd-cert {cert_file}")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise ConfigError(f"--etcd-cert {cert_file}: not a client certificate (its extended key usage lacks "
                          "clientAuth), etcd would refuse it")
    return EtcdTls(ca, cert_pem, key_pem)


def from_flags(spec: str, ca_file: str = "", cert_file: str = "", key_file: str = "") -> EtcdTls | None:
    """The TLS settings a --store needs: loaded for etcds://, refused for any other store."""
    if spec.startswith("etcds://"):
        return load(ca_file, cert_file, key_file)
    given = [f for f, v in zip(FLAGS, (ca_file, cert_file, key_file)) if v]
    if given:
        raise ConfigError(f"{', '.join(given)} apply only to an etcds:// store (--store is {spec or 'sqlite'!r})")
    return None
