"""Join parameters in SSM Parameter Store: what a VM in the account needs to join.

Stored under /mesh/<name>/ in every selected region, so a VM's setup reads
them with its instance role and no credential ever appears on a command line:

    /mesh/<name>/meshd-address   String        host:port of meshd
    /mesh/<name>/ca-cert         String        the mesh CA certificate (PEM)
    /mesh/<name>/join-token      SecureString  a join token

Whether a stored value is current is decided without reading it back (that
would need kms:Decrypt for the token): each parameter's Description carries
a digest of its value, and a different digest means "update".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from infra.config import InfraConfig
from meshcore.errors import ConfigError

DIGEST_PREFIX = "managed by meshctl; sha256:"


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # String | SecureString
    value: str

    @property
    def description(self) -> str:
        return DIGEST_PREFIX + hashlib.sha256(self.value.encode()).hexdigest()[:32]


def prefix(mesh: str) -> str:
    return f"/mesh/{mesh}/"


def _read(path: str, key: str) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read {key} {path}: {e.strerror}") from None
    if not text:
        raise ConfigError(f"{key} {path} is empty")
    return text


def desired_params(cfg: InfraConfig) -> dict[str, Param]:
    """The parameters the config asks for; absent settings are simply not stored."""
    out: dict[str, Param] = {}
    p = prefix(cfg.name)
    if cfg.meshd_address:
        out[p + "meshd-address"] = Param(p + "meshd-address", "String", cfg.meshd_address)
    if cfg.ca_cert_file:
        pem = _read(cfg.ca_cert_file, "ca_cert_file")
        if "BEGIN CERTIFICATE" not in pem:
            raise ConfigError(f"ca_cert_file {cfg.ca_cert_file} is not a PEM certificate")
        out[p + "ca-cert"] = Param(p + "ca-cert", "String", pem)
    if cfg.join_token_file:
        out[p + "join-token"] = Param(p + "join-token", "SecureString", _read(cfg.join_token_file, "join_token_file"))
    return out
