"""Item 5: watch streams are bounded per subscriber and per caller."""

from __future__ import annotations

import grpc

from mesh.v1 import catalog_pb2, catalog_pb2_grpc, types_pb2
from meshcore import limits
from tests.meshfix import until


async def test_watchers_that_never_read_hold_a_bounded_queue_and_everyone_else_keeps_up(mesh):
    a = await mesh.agent("alpha")
    b = await mesh.agent("beta")
    # 20 watchers on meshd's admin socket that never read a message
    idle = [mesh.catalog().WatchServices(types_pb2.WatchRequest()) for _ in range(20)]
    expose = a.uplink.catalog_stub.Expose
    want = {}
    for i in range(limits.WATCH_QUEUE_BATCHES * 3):
        want[f"s{i % 50}"] = 1000 + i
        await expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name=f"s{i % 50}", port=1000 + i)))
    subs = mesh.coordinator.store._subs
    assert subs and max(q.qsize() for _, q in subs) <= limits.WATCH_QUEUE_BATCHES
    last = (await mesh.catalog().ListServices(catalog_pb2.ListServicesRequest())).revision
    await until(lambda: b.catalog.services.revision >= last, timeout=20)
    assert {n: s.port for n, s in b.catalog.services.items.items()} == want
    # an idle watcher that starts reading again gets every change it missed, in order
    ev_rev, seen = 0, {}
    async for ev in idle[0]:
        for s in ev.services or [ev.service]:
            if s.name:
                seen[s.name] = s.port
        ev_rev = max(ev_rev, ev.revision)
        if ev_rev >= last and ev.type != types_pb2.EVENT_TYPE_RESET:
            break
    assert seen == want
    for call in idle:
        call.cancel()


async def test_one_caller_cannot_open_more_than_its_share_of_watches(mesh):
    a = await mesh.agent("alpha")  # already holds two (services, nodes)
    stub = catalog_pb2_grpc.CatalogServiceStub(a.uplink.channel)
    calls = [stub.WatchServices(types_pb2.WatchRequest()) for _ in range(limits.WATCHES_PER_CALLER)]
    codes = []
    for c in calls:
        try:
            await c.read()
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as e:
            codes.append(e.code())
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2  # 2 already open + 8 asked: 2 refused
    for c in calls:
        c.cancel()
    b = await mesh.agent("beta")  # another node is not affected
    await until(lambda: len(b.catalog.nodes.items) == 2)
