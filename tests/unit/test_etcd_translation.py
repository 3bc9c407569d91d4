"""The etcd store's pure parts: store URLs, key namespacing, compare rewriting
and nested transactions, error classification. (Behaviour against a real
etcd server is in tests/integration/test_store.py and test_etcd_ha.py.)"""

from __future__ import annotations

import grpc
import pytest

from meshd.store.etcdpb import rpc_pb2 as pb
from meshcore.clock import ManualClock
from meshcore.errors import ConfigError, InvalidArgument, NotFound
from meshd.store import open_store
from meshd.store.base import Compare, Delete, DeletePrefix, Put
from meshd.store.etcd import EtcdConfig, EtcdStore
from meshd.store.etcd_conn import HistoryCompacted, Members, ReadOnly, classify, map_answer
from meshd.store.etcd_txn import Keys, condition, prefix_end, request_ops, txn_outcome, txn_request


def test_store_urls():
    c = EtcdConfig.from_url("etcd://10.0.0.1:2379,10.0.0.2:2379")
    assert c.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379") and c.prefix == "/mesh"
    assert EtcdConfig.from_url("etcd://h:2379/team-a/").prefix == "/team-a"
    s = open_store("etcd://127.0.0.1:2379,127.0.0.1:2380/m2", None)
    assert isinstance(s, EtcdStore) and s.describe == "etcd:127.0.0.1:2379,127.0.0.1:2380/m2"


@pytest.mark.parametrize("url, rule", [
    ("etcd://", "no endpoint"),
    ("etcd://host", "host:port"),
    ("etcd://host:0", "port in 1-65535"),
    ("etcd://host:99999", "port in 1-65535"),
    ("etcd://h:1,h:1", "listed twice"),
    ("http://h:2379", "etcd://host:port"),
])
def test_bad_store_urls_name_the_rule(url, rule):
    with pytest.raises(ConfigError, match=rule):
        EtcdConfig.from_url(url)


def test_keys_live_under_the_namespace_and_prefixes_do_not_leak():
    keys = Keys("/mesh")
    assert keys.encode("/nodes/a") == b"/mesh//nodes/a" and keys.decode(b"/mesh//nodes/a") == "/nodes/a"
    start, end = keys.span("")
    assert (start, end) == (b"/mesh/", b"/mesh0")
    assert not start <= Keys("/mesh2").encode("/x") < end  # another mesh's keys are outside the range
    assert prefix_end(b"a\xff\xff") == b"b" and prefix_end(b"\xff") == b"\0"
    with pytest.raises(InvalidArgument, match="must start with '/'"):
        Keys("mesh")


def _targets(alts):
    return [[(c.key, c.target, c.result, c.WhichOneof("target_union"), getattr(c, c.WhichOneof("target_union")))
             for c in alt] for alt in alts]


def test_value_compares_are_rewritten_for_missing_keys():
    keys = Keys("/m")
    VERSION, VALUE = 0, 3
    EQ, GT, LT, NE = 0, 1, 2, 3
    assert _targets(condition(pb, keys, [Compare("/k", "value", "=", None)])) == [
        [(b"/m//k", VERSION, EQ, "version", 0)]]
    assert _targets(condition(pb, keys, [Compare("/k", "value", "!=", None)])) == [
        [(b"/m//k", VERSION, GT, "version", 0)]]
    assert _targets(condition(pb, keys, [Compare("/k", "value", "!=", b"x")])) == [
        [(b"/m//k", VERSION, EQ, "version", 0)], [(b"/m//k", VALUE, NE, "value", b"x")]]
    assert _targets(condition(pb, keys, [Compare("/k", "value", "<", None)])) == [
        [(b"/m//k", VERSION, LT, "version", 0)]]  # never true
    assert condition(pb, keys, []) == [[]]
    two = condition(pb, keys, [Compare("/a", "value", "!=", b"1"), Compare("/b", "mod", "<", 5)])
    assert len(two) == 2 and all(len(alt) == 2 for alt in two)
    with pytest.raises(InvalidArgument, match="too many 'value !='"):
        condition(pb, keys, [Compare(f"/k{i}", "value", "!=", b"x") for i in range(4)])
    with pytest.raises(InvalidArgument, match="takes an integer"):
        condition(pb, keys, [Compare("/k", "mod", "=", b"1")])


def test_nested_transactions_report_which_branch_ran():
    keys = Keys("/m")
    alts = condition(pb, keys, [Compare("/k", "value", "!=", b"x")])
    req = txn_request(pb, alts, request_ops(pb, keys, [Put("/s", b"1")]),
                      request_ops(pb, keys, [Delete("/f"), DeletePrefix("/p/")]))
    assert req.failure[0].WhichOneof("request") == "request_txn"
    inner = req.failure[0].request_txn
    assert len(inner.success) == 1 and len(inner.failure) == 2
    assert inner.failure[1].request_delete_range.range_end == b"/m//p0"
    # outer failed, inner succeeded: the condition held
    resp = pb.TxnResponse(succeeded=False, responses=[pb.ResponseOp(response_txn=pb.TxnResponse(
        succeeded=True, responses=[pb.ResponseOp(response_put=pb.PutResponse())]))])
    ok, responses = txn_outcome(resp, 2)
    assert ok and responses[0].WhichOneof("response") == "response_put"
    resp = pb.TxnResponse(succeeded=False, responses=[pb.ResponseOp(response_txn=pb.TxnResponse(succeeded=False))])
    assert txn_outcome(resp, 2) == (False, [])


class RpcError(grpc.aio.AioRpcError):
    def __init__(self, code, details):
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize("code, details, kind", [
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; Connection refused", "unreachable"),
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader", "no_leader"),
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: too many requests", "refused"),
    (grpc.StatusCode.UNAVAILABLE, "Socket closed", "unknown"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", "unknown"),
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", "unknown"),
    (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", "answered"),
])
def test_errors_are_classified_by_what_they_prove(code, details, kind):
    assert classify(RpcError(code, details)) == kind


def test_etcd_answers_map_to_typed_errors():
    assert isinstance(map_answer(RpcError(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"), "x"),
                      NotFound)
    err = map_answer(RpcError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"), "t")
    assert isinstance(err, InvalidArgument) and "each key at most once" in str(err)
    assert isinstance(map_answer(RpcError(grpc.StatusCode.OUT_OF_RANGE,
                                          "etcdserver: mvcc: required revision has been compacted"), "x"),
                      HistoryCompacted)


async def test_without_quorum_the_error_says_read_only():
    clock = ManualClock(monotonic=0.0)

    async def sleep(s):
        clock.advance(s)

    m = Members(("a:1", "b:1", "c:1"), 1.0, 2.0, clock=clock, sleep=sleep)
    m._leader = "a:1"  # skip the Status look-up: no server here

    async def attempt(ep):
        if ep == "a:1":
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
        raise RpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")

    m._lost = lambda ep: False
    with pytest.raises(ReadOnly, match="read-only for lack of quorum: 1 of 3 members.*2 unreachable.*2 of 3"):
        await m.call("put", attempt, mutation=True)
    assert clock.monotonic() >= 2.0  # a writer waits out a possible election first
