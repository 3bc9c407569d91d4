"""A managed job's service name moves to the job's new node at once, and to no other node.

Nodes join with a token carrying the binding label `sky.job=<job>` (the
token sky/model-server-job.yaml is launched with). The old node leaves (spot
notice) or is simply gone; the node SkyPilot relaunched the job on exposes
the same name and gets it without waiting for lease + grace; a node of
another job is refused with PERMISSION_DENIED naming the holder.
"""

from __future__ import annotations

import time

import grpc
import pytest

from mesh.v1 import catalog_pb2, types_pb2
from tests.meshfix import mesh, until  # noqa: F401  (fixture)


def expose_req(name: str = "qwen-job", port: int = 8000) -> catalog_pb2.ExposeRequest:
    return catalog_pb2.ExposeRequest(service=types_pb2.Service(name=name, port=port))


async def refused(coro):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    return err.value.code(), err.value.details()


def holder(agent, name: str = "qwen-job") -> str:
    svc = agent.catalog.services.items.get(name)
    return svc.node_name if svc else ""


async def test_the_new_node_of_a_job_takes_the_name_after_the_old_one_left(mesh):
    token = await mesh.token(uses=0, **{"sky.job": "qwen-job"})
    other_job = await mesh.token(uses=0, **{"sky.job": "other"})
    watcher = await mesh.agent("watcher")
    old = await mesh.agent("qwen-job-a1", token)
    await old.catalog_stub.Expose(expose_req())
    await until(lambda: holder(watcher) == "qwen-job-a1")
    await old.leave()  # the spot notice
    await until(lambda: holder(watcher) == "")
    # In the gap, nobody outside the job may take it.
    stranger = await mesh.agent("stranger", other_job)
    code, details = await refused(stranger.catalog_stub.Expose(expose_req()))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "kept for job 'qwen-job'" in details and "'qwen-job-a1'" in details
    unbound = await mesh.agent("unbound")
    code, _ = await refused(unbound.catalog_stub.Expose(expose_req()))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # The job's new VM takes it.
    new = await mesh.agent("qwen-job-b2", token)
    t0 = time.monotonic()
    await new.catalog_stub.Expose(expose_req())
    await until(lambda: holder(watcher) == "qwen-job-b2" and holder(stranger) == "qwen-job-b2")
    assert time.monotonic() - t0 < 2
    code, details = await refused(stranger.catalog_stub.Expose(expose_req()))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "held by node 'qwen-job-b2' of job 'qwen-job'" in details and "of job 'other'" in details


async def test_the_new_node_takes_the_name_from_a_node_that_is_gone_without_waiting(mesh):
    token = await mesh.token(uses=0, **{"sky.job": "llama"})
    watcher = await mesh.agent("watcher")
    old = await mesh.agent("llama-a1", token)
    await old.catalog_stub.Expose(expose_req("llama"))
    await until(lambda: holder(watcher, "llama") == "llama-a1")
    await old.stop()  # gone, no leave: meshd still counts its lease
    new = await mesh.agent("llama-b2", token)
    await new.catalog_stub.Expose(expose_req("llama"))
    await until(lambda: holder(watcher, "llama") == "llama-b2")


async def test_an_older_node_of_the_job_cannot_take_the_name_back(mesh):
    token = await mesh.token(uses=0, **{"sky.job": "mixtral"})
    old = await mesh.agent("mixtral-a1", token)
    new = await mesh.agent("mixtral-b2", token)
    await new.catalog_stub.Expose(expose_req("mixtral"))
    code, details = await refused(old.catalog_stub.Expose(expose_req("mixtral")))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "taken over by node 'mixtral-b2'" in details


async def test_an_admin_releases_a_name_kept_for_a_job(mesh):
    token = await mesh.token(uses=0, **{"sky.job": "done"})
    node = await mesh.agent("done-a1", token)
    await node.catalog_stub.Expose(expose_req("done"))
    await node.leave()
    free = await mesh.agent("free")
    code, _ = await refused(free.catalog_stub.Expose(expose_req("done")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    await mesh.catalog().Unexpose(catalog_pb2.UnexposeRequest(name="done"))
    await free.catalog_stub.Expose(expose_req("done"))
