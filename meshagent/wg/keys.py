"""WireGuard keys: X25519 pairs, their encodings, and the private key file.

Keys are base64 everywhere a person or meshd sees them, hex on the UAPI socket
(`to_hex`/`from_hex`). The private key is generated on the node and written
once to a file only root can read (0600); only the public key leaves the node.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from meshcore.errors import StateError
from meshagent.wg.model import check_key


def generate_private_key() -> str:
    """A new X25519 private key, base64."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


def public_key(private_key: str) -> str:
    """The base64 public key of a base64 private key."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = base64.b64decode(check_key(private_key, "private key"))
    pub = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(pub).decode()


def to_hex(key: str) -> str:
    return base64.b64decode(key).hex()


def from_hex(key_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(key_hex)).decode()


def load_or_create_private_key(path: Path) -> str:
    """Read the node's private key from `path`, creating it (mode 0600) on first use.

    Created with O_EXCL so two agents starting at once cannot each write a
    different key; a key file readable by group or others is refused, since the
    key may already have leaked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = generate_private_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise StateError(f"private key file {path} has mode {mode:04o}: it must be readable by its owner only (0600)")
    text = path.read_text().strip()
    try:
        return check_key(text, "private key")
    except Exception:
        raise StateError(f"private key file {path} is corrupt: it must hold one base64 WireGuard key") from None
