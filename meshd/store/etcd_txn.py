"""Translating the store's transactions to etcd's, and etcd's answers back.

Keys: every store key lives under a namespace (the configured key prefix plus
"/", e.g. "/mesh/"), so several meshes share one etcd without seeing each
other's keys: store key "/nodes/a" is etcd key "/mesh//nodes/a".

Compares: the store's `Compare` treats a missing key as version, create and
mod 0 and value None; etcd agrees on the numbers but fails every value compare
on a missing key. So value compares are rewritten:
- value = None    -> version = 0;      value != None -> version > 0
- value < / > None -> never true (as in the store's rule)
- value != b"x"   -> (version = 0) OR (value != b"x")
etcd's compares are a conjunction, so a transaction with disjunctions becomes a
chain of nested transactions, one per alternative of the condition in
disjunctive normal form: alternative 1 ? success : (alternative 2 ? success :
... : failure). Whichever level succeeded tells whether the condition held.

Events: puts ask for the previous key-value (prev_kv) so the new record's
create revision and version are known without another read; deletes ask for
the deleted records so a delete event carries the key's last value.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from meshcore.errors import InvalidArgument
from meshd.store.base import Compare, Delete, DeletePrefix, Event, KeyValue, Op, Put

MAX_ALTERNATIVES = 8  # "value !=" compares double the nesting each; etcd caps a txn at 128 ops

_OPS = {"=": 0, ">": 1, "<": 2, "!=": 3}  # etcd's Compare.CompareResult
_TARGETS = {"version": 0, "create": 1, "mod": 2, "value": 3}  # etcd's Compare.CompareTarget
_INT_FIELD = {"version": "version", "create": "create_revision", "mod": "mod_revision"}


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's range_end rule)."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"  # every byte 0xff: the range is "all keys from prefix"


class Keys:
    """Mapping between store keys (str) and etcd keys (bytes under the namespace)."""

    def __init__(self, prefix: str) -> None:
        if not prefix.startswith("/") or "\0" in prefix:
            raise InvalidArgument(f"invalid etcd key prefix {prefix!r}: must start with '/' and contain no NUL")
        self.namespace = (prefix.rstrip("/") + "/").encode()

    def encode(self, key: str) -> bytes:
        return self.namespace + key.encode()

    def decode(self, key: bytes) -> str:
        return key[len(self.namespace):].decode()

    def span(self, prefix: str) -> tuple[bytes, bytes]:
        start = self.encode(prefix)
        return start, prefix_end(start)

    def kv(self, m) -> KeyValue:
        return KeyValue(self.decode(m.key), bytes(m.value), m.create_revision, m.mod_revision, m.version, m.lease)


def _never(pb, key: bytes):
    # version < 0 never holds
    return pb.Compare(result=_OPS["<"], target=_TARGETS["version"], key=key, version=0)


def _alternatives(pb, keys: Keys, c: Compare) -> list[list]:
    """One store compare as a disjunction of etcd compare lists ([] = always true)."""
    key = keys.encode(c.key)
    if c.op not in _OPS or c.target not in _TARGETS:
        raise InvalidArgument(f"invalid compare {c}: target must be value, version, create or mod and op = != < >")
    if c.target == "value":
        if c.value is None:
            if c.op == "=":
                return [[pb.Compare(result=_OPS["="], target=_TARGETS["version"], key=key, version=0)]]
            if c.op == "!=":
                return [[pb.Compare(result=_OPS[">"], target=_TARGETS["version"], key=key, version=0)]]
            return [[_never(pb, key)]]
        if not isinstance(c.value, bytes):
            raise InvalidArgument(f"invalid compare on {c.key!r}: a value compare takes bytes or None")
        same = pb.Compare(result=_OPS[c.op], target=_TARGETS["value"], key=key, value=c.value)
        if c.op == "!=":  # a missing key's value (None) differs from any bytes
            return [[pb.Compare(result=_OPS["="], target=_TARGETS["version"], key=key, version=0)], [same]]
        return [[same]]
    if c.value is None or isinstance(c.value, bytes) or not isinstance(c.value, int):
        if c.value is None and c.op == "!=":
            return [[]]
        if c.value is None:
            return [[_never(pb, key)]]
        raise InvalidArgument(f"invalid compare on {c.key!r}: a {c.target} compare takes an integer")
    return [[pb.Compare(result=_OPS[c.op], target=_TARGETS[c.target], key=key, **{_INT_FIELD[c.target]: c.value})]]


def condition(pb, keys: Keys, compares: Sequence[Compare]) -> list[list]:
    """The conjunction of `compares` in disjunctive normal form: a list of etcd compare lists."""
    per = [_alternatives(pb, keys, c) for c in compares]
    total = 1
    for alts in per:
        total *= len(alts)
    if total > MAX_ALTERNATIVES:
        raise InvalidArgument(f"transaction has too many 'value !=' compares: at most "
                              f"{MAX_ALTERNATIVES.bit_length() - 1} per transaction on etcd")
    return [[c for part in combo for c in part] for combo in itertools.product(*per)] or [[]]


def request_ops(pb, keys: Keys, ops: Sequence[Op]) -> list:
    out = []
    for op in ops:
        if isinstance(op, Put):
            out.append(pb.RequestOp(request_put=pb.PutRequest(key=keys.encode(op.key), value=op.value,
                                                              lease=op.lease, prev_kv=True)))
        elif isinstance(op, Delete):
            out.append(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=keys.encode(op.key),
                                                                               prev_kv=True)))
        elif isinstance(op, DeletePrefix):
            start, end = keys.span(op.prefix)
            out.append(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=start, range_end=end,
                                                                               prev_kv=True)))
        else:
            raise InvalidArgument(f"invalid transaction operation {op!r}: use Put, Delete or DeletePrefix")
    return out


def txn_request(pb, alternatives: list[list], success: list, failure: list):
    """alternatives[0] ? success : (alternatives[1] ? success : ... : failure)."""
    req = pb.TxnRequest(compare=alternatives[-1], success=success, failure=failure)
    for alt in reversed(alternatives[:-1]):
        req = pb.TxnRequest(compare=alt, success=success, failure=[pb.RequestOp(request_txn=req)])
    return req


def txn_outcome(resp, levels: int) -> tuple[bool, list]:
    """Whether the condition held, and the responses of the branch that ran."""
    for _ in range(levels - 1):
        if resp.succeeded:
            return True, list(resp.responses)
        resp = resp.responses[0].response_txn
    return resp.succeeded, list(resp.responses)


def events(keys: Keys, ops: Sequence[Op], responses: list, revision: int) -> list[Event]:
    """The store events of the branch that ran, in operation order."""
    out: list[Event] = []
    for op, r in zip(ops, responses):
        if isinstance(op, Put):
            prev = r.response_put.prev_kv if r.response_put.HasField("prev_kv") else None
            kv = KeyValue(op.key, op.value, prev.create_revision if prev else revision, revision,
                          (prev.version if prev else 0) + 1, op.lease)
            out.append(Event("put", kv, revision))
        else:
            for p in r.response_delete_range.prev_kvs:
                out.append(Event("delete", KeyValue(keys.decode(p.key), bytes(p.value), p.create_revision,
                                                    revision, p.version, p.lease), revision))
    return out


def watch_event(keys: Keys, e) -> Event:
    """One etcd watch event; a delete takes its value, creation and version from prev_kv."""
    rev = e.kv.mod_revision
    if e.type == 0:  # PUT
        return Event("put", keys.kv(e.kv), rev)
    p = e.prev_kv if e.HasField("prev_kv") else None
    kv = KeyValue(keys.decode(e.kv.key), bytes(p.value) if p else b"", p.create_revision if p else 0, rev,
                  p.version if p else 0, p.lease if p else 0)
    return Event("delete", kv, rev)
