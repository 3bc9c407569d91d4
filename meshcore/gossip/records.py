"""Signed catalog records carried by gossip, and the local record view.

A record says "service `key` belongs to node `origin`, revision `revision`,
with this payload" and carries meshd's Ed25519 signature over all of that
(`signed_bytes`). An agent accepts a record from gossip only when the injected
`verify` callback says the signature is good, so a node cannot forge another
node's service: it would need meshd's private key.

Catalog keys rotate (meshd/gossipkeys.py): a record also names the key that
signed it (`key_id`) and when it stops being valid (`expires`, unix seconds),
both under the signature. `CatalogVerifier` accepts a record only if its key
is one meshd handed out, that key is not retired, the record has not expired
and the signature verifies; every refusal is counted by reason.

Conflicts resolve the same way on every node, whatever the arrival order:
the higher revision wins, and on equal revisions the higher origin id (and,
for two records meshd would never sign, the tombstone flag, then bytes). A
deletion is a record with `deleted=True` (a tombstone): it wins by revision
like any other and is kept for `tombstone_ttl` so an older copy arriving
late cannot bring the service back.

Visibility: records of an origin that the membership layer declares dead or
departed are hidden (they leave DNS) but kept; they show again if the origin
refutes or rejoins. `RecordStore` returns which records changed visibility
so the caller can emit events.
"""

from __future__ import annotations

from collections.abc import Callable

from meshcore.errors import InvalidArgument
from meshcore.gossip.codec import KEY_ID_BYTES, MAX_ID, MAX_PAYLOAD, encode_record
from meshcore.gossip.messages import Record

_DOMAIN = b"mesh-gossip-record-v1\x00"
_DOMAIN_SEALED = b"mesh-gossip-record-v2\x00"

Verify = Callable[[Record], bool]


def signed_bytes(r: Record) -> bytes:
    """The exact bytes meshd signs: a domain tag and every field except the signature
    (with a key id: the key id and the expiry too, under their own domain tag)."""
    body = encode_record(Record(r.key, r.revision, r.origin, r.payload, r.deleted, b""))
    if not r.key_id:
        return _DOMAIN + body
    return _DOMAIN_SEALED + body + r.key_id.encode() + r.expires.to_bytes(8, "big")


def make_record(private_key, key: str, revision: int, origin: str, payload: bytes,
                deleted: bool = False, key_id: str = "", expires: int = 0) -> Record:
    """A record signed with an Ed25519 private key (meshd's side); with `key_id`, sealed
    with that id and the expiry `expires` (unix seconds)."""
    if not key or len(key.encode()) > MAX_ID or not origin or len(origin.encode()) > MAX_ID:
        raise InvalidArgument(f"invalid record key {key!r} or origin {origin!r}: 1-{MAX_ID} bytes each")
    if len(payload) > MAX_PAYLOAD:
        raise InvalidArgument(f"record payload is {len(payload)} bytes: at most {MAX_PAYLOAD} allowed")
    if revision < 0:
        raise InvalidArgument(f"record revision {revision} must not be negative")
    if key_id and (len(key_id.encode()) != KEY_ID_BYTES or expires <= 0):
        raise InvalidArgument(f"record key id {key_id!r} must be {KEY_ID_BYTES} characters with an expiry")
    unsigned = Record(key, revision, origin, payload, deleted, b"", key_id, expires)
    return Record(key, revision, origin, payload, deleted, private_key.sign(signed_bytes(unsigned)), key_id, expires)


def ed25519_verifier(public_key) -> Verify:
    """A verify callback for meshd's Ed25519 public key (cryptography's object)."""
    from cryptography.exceptions import InvalidSignature

    def verify(r: Record) -> bool:
        if len(r.signature) != 64:
            return False
        try:
            public_key.verify(r.signature, signed_bytes(r))
            return True
        except InvalidSignature:
            return False

    return verify


#: why CatalogVerifier refused a record (the `reason` label of the refusal metric)
REFUSALS = ("unknown_key", "key_retired", "expired", "bad_signature", "unsealed")


class CatalogVerifier:
    """Verify records against the catalog keys meshd handed out (GossipConfig.catalog_keys).

    `keys`: key id -> (Ed25519 public key bytes, retires_at unix seconds or 0);
    `legacy`: meshd's single public key of before key rotation, used only when
    meshd handed out no key set (a meshd that does not rotate). `wall` is the
    wall clock (expiry and retirement are points in time); `refused(reason,
    record)` is told each refusal (metric and log line), and the caller only
    learns False: a refused record is dropped, never an error for the stream."""

    def __init__(self, wall: Callable[[], float], refused: Callable[[str, Record], None] = lambda *_: None) -> None:
        self._wall = wall
        self._refused = refused
        self._keys: dict[str, tuple[object, int]] = {}
        self._retired: list[str] = []
        self._legacy: Verify | None = None

    def update(self, keys: dict[str, tuple[bytes, int]], legacy: bytes = b"") -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519
        # a key meshd no longer hands out has retired: remember its id (a few) to say so
        self._retired = ([k for k in self._retired if k not in keys] + [k for k in self._keys if k not in keys])[-16:]
        self._keys = {kid: (ed25519.Ed25519PublicKey.from_public_bytes(pub), int(retires))
                      for kid, (pub, retires) in keys.items()}
        self._legacy = (ed25519_verifier(ed25519.Ed25519PublicKey.from_public_bytes(legacy))
                        if legacy and not keys else None)

    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def why_not(self, r: Record) -> str | None:
        """None if `r` is acceptable now, else the reason (one of REFUSALS)."""
        if not r.key_id:
            if self._legacy is not None:
                return None if self._legacy(r) else "bad_signature"
            return "unsealed"
        known = self._keys.get(r.key_id)
        if known is None:
            return "key_retired" if r.key_id in self._retired else "unknown_key"
        public, retires = known
        now = self._wall()
        if retires and now >= retires:
            return "key_retired"
        if now >= r.expires:
            return "expired"
        if len(r.signature) != 64:
            return "bad_signature"
        from cryptography.exceptions import InvalidSignature
        try:
            public.verify(r.signature, signed_bytes(r))
        except InvalidSignature:
            return "bad_signature"
        return None

    def current(self, r: Record) -> bool:
        """Whether a record accepted earlier is still within its time: its key not retired,
        itself not expired (the signature was checked when it was accepted)."""
        if not r.key_id:
            return self._legacy is not None
        known = self._keys.get(r.key_id)
        now = self._wall()
        return known is not None and not (known[1] and now >= known[1]) and now < r.expires

    def __call__(self, r: Record) -> bool:
        reason = self.why_not(r)
        if reason is not None:
            self._refused(reason, r)
        return reason is None


class RecordStore:
    """All records known locally (including hidden ones and tombstones)."""

    def __init__(self, tombstone_ttl: float) -> None:
        self._ttl = tombstone_ttl
        self._by_key: dict[str, Record] = {}
        self._stored_at: dict[str, float] = {}
        self._by_origin: dict[str, set[str]] = {}
        self._hidden_origins: set[str] = set()

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> Record | None:
        return self._by_key.get(key)

    def all(self) -> list[Record]:
        return list(self._by_key.values())

    def is_visible(self, r: Record) -> bool:
        return not r.deleted and r.origin not in self._hidden_origins

    def visible(self) -> dict[str, Record]:
        return {k: r for k, r in self._by_key.items() if self.is_visible(r)}

    def offer(self, r: Record, now: float) -> tuple[bool, Record | None]:
        """Store `r` if it wins the conflict rule. Returns (stored, previous)."""
        old = self._by_key.get(r.key)
        if old is not None and not r.wins_over(old):
            return False, old
        if old is not None and old.origin != r.origin:
            self._by_origin[old.origin].discard(r.key)
        self._by_key[r.key] = r
        self._stored_at[r.key] = now
        self._by_origin.setdefault(r.origin, set()).add(r.key)
        return True, old

    def hide_origin(self, origin: str) -> list[Record]:
        """Hide an origin's records; returns those that were visible."""
        if origin in self._hidden_origins:
            return []
        self._hidden_origins.add(origin)
        return [r for k in self._by_origin.get(origin, ()) if not (r := self._by_key[k]).deleted]

    def show_origin(self, origin: str) -> list[Record]:
        """Show an origin's records again; returns those that became visible."""
        if origin not in self._hidden_origins:
            return []
        self._hidden_origins.discard(origin)
        return [r for k in self._by_origin.get(origin, ()) if not (r := self._by_key[k]).deleted]

    def forget_origin(self, origin: str) -> None:
        """Drop an origin's live records for good (the member was reclaimed); keep tombstones."""
        for k in list(self._by_origin.get(origin, ())):
            if not self._by_key[k].deleted:
                del self._by_key[k]
                del self._stored_at[k]
                self._by_origin[origin].discard(k)
        self._hidden_origins.discard(origin)

    def expire_tombstones(self, now: float) -> int:
        """Drop tombstones older than the TTL; returns how many."""
        gone = [k for k, r in self._by_key.items() if r.deleted and now - self._stored_at[k] > self._ttl]
        for k in gone:
            r = self._by_key.pop(k)
            del self._stored_at[k]
            self._by_origin[r.origin].discard(k)
        return len(gone)
