"""Join tokens.

A token is created by an admin with a TTL, a number of uses (1 by default, 0
for unlimited until expiry) and optional labels for the nodes it admits. The
secret is shown once: meshd stores only its SHA-256. What a user hands to
`meshagent --token` is the join string `<id>.<secret>.<ca-pin>`; the pin (the
CA certificate's SHA-256) lets the new node trust meshd before it has a
certificate.

Consuming a token (one use) happens in the same store transaction that
creates the node, guarded by a compare on the token's revision, so a
single-use token admits exactly one node even under concurrent joins, and a
refused join changes nothing.

Expiry and creation times are points in time that are stored and shown, so
they are on the wall clock (`clock.wall()`), and so is the expiry check
against them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass, field

from meshcore import limits
from meshcore.clock import SYSTEM, Clock
from meshcore.errors import InvalidArgument, NotFound, Unauthenticated
from meshcore.jointoken import join_string, parse_token
from meshcore.names import check_labels
from meshd.store.base import Compare, KeyValue, Op, Put, Store, absent

log = logging.getLogger("meshd")

PREFIX = "/tokens/"
#: the one answer to a refused join token, whatever the reason
REFUSED = ("join token refused: it is unknown, wrong, revoked, expired or used up "
           "(make a new one with `meshctl token create` on the main node)")
MAX_TTL_S = 30 * 24 * 3600
#: a bootstrap join string is short-lived: meshd publishes its own rotated token once up (meshd/publish.py)
BOOTSTRAP_TTL_S = 2 * 3600


@dataclass
class TokenRecord:
    id: str
    hash: str
    expires_at: float
    max_uses: int
    uses: int = 0
    revoked: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    description: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> TokenRecord:
        return cls(**json.loads(raw))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Admission:
    def __init__(self, store: Store, ca_pin: str, clock: Clock = SYSTEM) -> None:
        self.store = store
        self.ca_pin = ca_pin
        self.clock = clock

    async def create(self, ttl_s: int = 3600, max_uses: int = 1, labels: dict[str, str] | None = None,
                     description: str = "") -> tuple[TokenRecord, str]:
        ttl_s = ttl_s or 3600
        if not 1 <= ttl_s <= MAX_TTL_S:
            raise InvalidArgument(f"invalid token TTL {ttl_s}s: must be between 1 second and 30 days")
        if max_uses < 0:
            raise InvalidArgument("invalid max uses: must be 0 (unlimited) or more")
        check_labels(labels or {}, "token label")
        if len(description.encode()) > limits.MAX_DESCRIPTION_BYTES:
            raise InvalidArgument(f"token description is {len(description.encode())} bytes: "
                                  f"at most {limits.MAX_DESCRIPTION_BYTES}")
        token_id = "t" + secrets.token_hex(4)
        secret = secrets.token_hex(16)
        now = self.clock.wall()
        rec = TokenRecord(token_id, _hash(secret), now + ttl_s, max_uses, labels=dict(labels or {}),
                          created_at=now, description=description)
        await self.store.put(PREFIX + token_id, rec.encode())
        return rec, join_string(token_id, secret, self.ca_pin)

    async def ensure(self, token: str, description: str = "bootstrap token (--bootstrap-token-file)",
                     ttl_s: float = BOOTSTRAP_TTL_S) -> bool:
        """Register a join string made outside meshd (a cluster builder writes it to SSM before
        any meshd runs, as a K3s server token is chosen up front): unlimited uses, valid for
        `ttl_s` from its first registration, revocable like any other. Create-if-absent, so
        replicas agree, a restart does not extend it, and a revoked bootstrap token stays
        revoked. True if this call created it."""
        if not 1 <= ttl_s <= MAX_TTL_S:
            raise InvalidArgument(f"invalid bootstrap token TTL {ttl_s:.0f}s: must be between 1 second and 30 days")
        token_id, secret, pin = parse_token(token)
        if pin is not None and pin != self.ca_pin:
            raise InvalidArgument("bootstrap join token is for another mesh: its CA pin does not match this meshd's CA")
        now = self.clock.wall()
        rec = TokenRecord(token_id, _hash(secret), now + ttl_s, 0, created_at=now, description=description)
        res = await self.store.txn([absent(PREFIX + token_id)], [Put(PREFIX + token_id, rec.encode())])
        if not res.succeeded:
            kv = await self.store.get(PREFIX + token_id)
            if kv is not None and not hmac.compare_digest(TokenRecord.decode(kv.value).hash, rec.hash):
                raise InvalidArgument(f"bootstrap join token {token_id} conflicts with an existing token of that id "
                                      "and another secret")
        return res.succeeded

    async def list(self) -> list[TokenRecord]:
        kvs, _ = await self.store.range(PREFIX)
        return [TokenRecord.decode(kv.value) for kv in kvs]

    async def revoke(self, token_id: str) -> TokenRecord:
        kv = await self.store.get(PREFIX + token_id)
        if kv is None:
            raise NotFound(f"token {token_id} not found")
        rec = TokenRecord.decode(kv.value)
        rec.revoked = True
        await self.store.put(kv.key, rec.encode())
        return rec

    async def check(self, token: str) -> tuple[TokenRecord, list[Compare], list[Op]]:
        """Validate a join string. Returns the token and the compare/op that consume one use;
        the caller commits them in its own transaction."""
        token_id, secret, pin = parse_token(token)
        kv: KeyValue | None = await self.store.get(PREFIX + token_id)
        rec = TokenRecord.decode(kv.value) if kv is not None else None
        why = ""
        if pin is not None and pin != self.ca_pin:
            why = "its CA pin is another mesh's"
        elif rec is None:
            why = "unknown id"
        elif not hmac.compare_digest(rec.hash, _hash(secret)):
            why = "wrong secret"
        elif rec.revoked:
            why = "revoked"
        elif self.clock.wall() >= rec.expires_at:
            why = f"expired at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(rec.expires_at))}"
        elif rec.max_uses and rec.uses >= rec.max_uses:
            why = f"used up ({rec.uses} of {rec.max_uses} joins)"
        if why:
            # One answer for every reason: the join port must not tell a caller which part
            # was wrong (whether a token id exists, say). The reason is in meshd's log.
            log.info("join refused: token %s: %s", token_id, why)
            raise Unauthenticated(REFUSED)
        rec.uses += 1
        return rec, [Compare(kv.key, "mod", "=", kv.mod_revision)], [Put(kv.key, rec.encode())]
