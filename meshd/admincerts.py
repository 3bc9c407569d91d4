"""Admin certificates: issued short-lived, recorded, revocable.

An admin certificate lets meshctl or a scheduler call meshd from another host.
Three rules bound what a stolen one is worth:

- it is short-lived: 12 hours unless asked otherwise, at most 90 days;
- it may issue more admin certificates only if it was made with that right
  (O=mesh-admin-issuer, `meshctl admin cert --may-issue`), which only the admin
  socket or another issuer can grant;
- it can be revoked by serial or by name. Every issued certificate is recorded
  under `/admin-certs/<serial hex>`; revoking marks the record, and a serial
  meshd never issued (a certificate made offline with the CA key, as `meshctl
  cluster create` does) gets a record that says only "revoked". The error
  interceptor (meshd.auth) asks `revoked(serial)` on every call an admin
  certificate makes, so a revocation holds at once on every replica sharing
  the store.

Every record carries the certificate's expiry; records of expired certificates
are dropped when the list is read (an expired certificate is refused by the TLS
handshake anyway).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from cryptography import x509

from meshcore import pki
from meshcore.clock import SYSTEM, Clock
from meshcore.errors import InvalidArgument, NotFound, PermissionDenied
from meshcore.names import check_name
from meshd.auth import Caller
from meshd.store.base import Delete, Store

PREFIX = "/admin-certs/"
DEFAULT_TTL_S = 12 * 3600
MAX_TTL_S = 90 * 24 * 3600
#: how long a revocation of a serial meshd never issued is kept (the longest an offline certificate may live)
UNKNOWN_KEEP_S = 10 * 365 * 24 * 3600
_SERIAL = re.compile(r"^[0-9a-f]{1,40}$")


@dataclass
class AdminCertRecord:
    serial: str
    name: str
    expires_at: float
    may_issue: bool = False
    revoked: bool = False
    issued_at: float = 0.0

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> AdminCertRecord:
        return cls(**json.loads(raw))


class AdminCerts:
    def __init__(self, store: Store, ca: pki.CertificateAuthority, clock: Clock = SYSTEM) -> None:
        self.store = store
        self.ca = ca
        self.clock = clock

    async def issue(self, caller: Caller, csr_pem: str, ttl_s: int = 0, may_issue: bool = False
                    ) -> tuple[bytes, AdminCertRecord]:
        """Sign an admin CSR for `caller` (already known to be an admin)."""
        if not caller.may_issue:
            raise PermissionDenied(f"{caller} may not issue admin certificates: its certificate was made without "
                                   "that right (use meshd's admin socket, or a certificate from "
                                   "`meshctl admin cert --may-issue`)")
        ttl_s = ttl_s or DEFAULT_TTL_S
        if not 60 <= ttl_s <= MAX_TTL_S:
            raise InvalidArgument(f"invalid admin certificate TTL {ttl_s}s: must be between 60 seconds and 90 days")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
            name = str(csr.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value)
        except (ValueError, IndexError) as e:
            raise InvalidArgument(f"invalid CSR: a PEM CSR with a common name is needed ({e})") from e
        check_name(name, "admin name")
        kind = pki.KIND_ADMIN_ISSUER if may_issue else pki.KIND_ADMIN
        pem = self.ca.sign_csr(csr_pem, name, kind, seconds=ttl_s)
        cert = pki.load_cert(pem, "issued certificate")
        rec = AdminCertRecord(pki.serial_hex(cert), name, pki.expires_at(cert), may_issue,
                              issued_at=self.clock.wall())
        await self.store.put(PREFIX + rec.serial, rec.encode())
        return pem, rec

    async def list(self) -> list[AdminCertRecord]:
        kvs, _ = await self.store.range(PREFIX)
        now, out = self.clock.wall(), []
        for kv in kvs:
            rec = AdminCertRecord.decode(kv.value)
            if rec.expires_at <= now:
                await self.store.txn([], [Delete(kv.key)])
                continue
            out.append(rec)
        return sorted(out, key=lambda r: (r.name, r.issued_at))

    async def revoke(self, serial_or_name: str) -> list[AdminCertRecord]:
        """Revoke by serial (hex) or every certificate of a name."""
        key = serial_or_name.strip().lower().removeprefix("0x")
        recs = [r for r in await self.list() if r.name == serial_or_name]
        if not recs and _SERIAL.match(key):
            kv = await self.store.get(PREFIX + key)
            recs = [AdminCertRecord.decode(kv.value) if kv is not None
                    else AdminCertRecord(key, "", self.clock.wall() + UNKNOWN_KEEP_S)]
        if not recs:
            raise NotFound(f"no admin certificate with serial or name {serial_or_name!r} "
                           "(`meshctl admin certs` lists them)")
        for rec in recs:
            rec.revoked = True
            await self.store.put(PREFIX + rec.serial, rec.encode())
        return recs

    async def revoked(self, serial: str) -> bool:
        kv = await self.store.get(PREFIX + serial)
        return kv is not None and AdminCertRecord.decode(kv.value).revoked
