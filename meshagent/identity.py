"""The node's identity in its state directory.

    key.pem    the node's private key (0600; made here, never leaves the node)
    cert.pem   its certificate from the mesh CA (CN = node id)
    ca.pem     the mesh CA certificate
    node.json  node id, name, mesh address and the coordinator addresses

Written once at join (each file atomically, node.json last, so a join that
dies halfway leaves no half identity); read at every start, so a restarted
agent rejoins without a token. Unreadable or inconsistent files are a clear
StateError naming the file, never a traceback.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509

from meshcore import pki
from meshcore.errors import StateError, Unauthenticated, Unavailable


@dataclass
class Identity:
    node_id: str
    name: str
    mesh_address: str
    coordinator: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    @staticmethod
    def exists(state_dir: Path) -> bool:
        return (state_dir / "node.json").exists()

    @classmethod
    def load(cls, state_dir: Path) -> Identity:
        files = {n: state_dir / n for n in ("node.json", "key.pem", "cert.pem", "ca.pem")}
        try:
            meta = json.loads(files["node.json"].read_text())
            raw = {n: files[n].read_bytes() for n in ("key.pem", "cert.pem", "ca.pem")}
        except FileNotFoundError as e:
            raise StateError(f"agent state in {state_dir} is incomplete: {e.filename} is missing; "
                             f"move the directory aside and join again with a new token") from e
        except (OSError, ValueError) as e:
            raise StateError(f"agent state in {state_dir} is unreadable: {e}; "
                             f"move the directory aside and join again with a new token") from e
        key = pki.load_key(raw["key.pem"], str(files["key.pem"]))
        cert = pki.load_cert(raw["cert.pem"], str(files["cert.pem"]))
        pki.load_cert(raw["ca.pem"], str(files["ca.pem"]))
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise StateError(f"{files['cert.pem']} does not belong to {files['key.pem']}")
        try:
            ident = cls(meta["node_id"], meta["name"], meta["mesh_address"], meta["coordinator"],
                        raw["key.pem"], raw["cert.pem"], raw["ca.pem"])
        except (KeyError, TypeError) as e:
            raise StateError(f"{files['node.json']} lacks {e}") from e
        if pki.identity(cert)[1] != ident.node_id:
            raise StateError(f"{files['cert.pem']} is for another node than {files['node.json']}")
        return ident

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
        pki.write_file(state_dir / "key.pem", self.key_pem, private=True)
        pki.write_file(state_dir / "cert.pem", self.cert_pem, private=True)
        pki.write_file(state_dir / "ca.pem", self.ca_pem, private=True)
        meta = {k: v for k, v in asdict(self).items() if not k.endswith("_pem")}
        pki.write_file(state_dir / "node.json", json.dumps(meta, indent=2).encode(), private=True)


def server_chain(host: str, port: int, timeout: float = 5.0) -> list[bytes]:
    """The PEM certificates meshd's join listener presents (server certificate and CA), unverified."""
    # A bare client context: nothing is verified here (the pin is checked after), so loading the
    # system's trust store, as ssl.create_default_context does, would only cost ~40 ms of CPU.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=pki.SERVER_NAME) as tls:
            chain = tls._sslobj.get_unverified_chain() or []  # public API from Python 3.13
            ders = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]
    except OSError as e:
        raise Unavailable(f"meshd join address {host}:{port} is unreachable: {e}") from e
    return [pki.cert_pem(x509.load_der_x509_certificate(der)) for der in ders]


def server_ca_pins(host: str, port: int, timeout: float = 5.0) -> set[str]:
    """Pins of every certificate in meshd's chain: the mesh CA's is among them."""
    return {pki.pin(pem) for pem in server_chain(host, port, timeout)}


def fetch_pinned_ca(host: str, port: int, pin: str, timeout: float = 5.0) -> bytes:
    """The mesh CA certificate, trusted because its SHA-256 equals the token's pin.

    meshd's join listener sends its certificate chain (server cert + CA); we
    read it without verification and keep the CA only if it matches the pin,
    as K3s agents check the CA hash in their token."""
    for pem in server_chain(host, port, timeout):
        if pki.pin(pem) == pin:
            return pem
    raise Unauthenticated(f"the server at {host}:{port} is not the meshd this token belongs to "
                          f"(no certificate in its chain matches the token's CA pin)")
