"""Item 1: one service too big for a signed record must not stop catalog replication for anyone."""

from __future__ import annotations

import json

from mesh.v1 import catalog_pb2, types_pb2
from meshcore import limits
from meshd import metrics
from testbed.localmesh import resolve
from tests.meshfix import until, wait_for


def test_oversized_service_is_refused_at_expose_and_everyone_keeps_syncing(local_mesh):
    token = local_mesh.token(uses=3)
    local_mesh.start_agent("server", token)
    local_mesh.meshctl("expose", "--port", "8000", "--name", "api", agent="server")
    # nine long tags (each accepted alone by the old rule): refused at the door with the limit named
    tags = [a for i in range(9) for a in ("--tag", f"t{i}" + "x" * 120)]
    r = local_mesh.meshctl("expose", "--port", "8001", "--name", "big", *tags, agent="server", check=False)
    assert r.returncode != 0 and f"1-{limits.MAX_TAG_BYTES} bytes" in r.stderr, r.stderr
    tags = [a for i in range(limits.MAX_TAGS + 1) for a in ("--tag", f"t{i}")]
    r = local_mesh.meshctl("expose", "--port", "8001", "--name", "big", *tags, agent="server", check=False)
    assert r.returncode != 0 and f"at most {limits.MAX_TAGS}" in r.stderr, r.stderr
    tags = [a for i in range(limits.MAX_TAGS) for a in ("--tag", f"t{i}" + "x" * 60)]
    r = local_mesh.meshctl("expose", "--port", "8001", "--name", "big", *tags, agent="server", check=False)
    assert r.returncode != 0 and "catalog record" in r.stderr and str(limits.MAX_SERVICE_BYTES) in r.stderr
    r = local_mesh.meshctl("expose", "--port", "8002", "--name", "hp", "--health-http", "/" + "h" * 400,
                           agent="server", check=False)
    assert r.returncode != 0 and "health check path" in r.stderr
    # a new agent syncs the whole catalog, and a later change reaches everyone
    local_mesh.start_agent("late", token)
    wait_for(lambda: resolve("api.mesh", local_mesh.dns("late")), what="api resolvable on the new agent")
    local_mesh.meshctl("expose", "--port", "8003", "--name", "after", agent="server")
    wait_for(lambda: resolve("after.mesh", local_mesh.dns("late")), what="a later change replicated")
    names = {s["name"] for s in json.loads(local_mesh.meshctl("services", "-o", "json").stdout)["services"]}
    assert names == {"api", "after"}


async def test_a_record_that_cannot_be_signed_is_skipped_in_the_stream_not_an_abort(mesh):
    """Data from before the bounds (or any record sign refuses) is left out with a metric and a log line."""
    a = await mesh.agent("alpha")
    await a.uplink.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="ok", port=80)))
    legacy = types_pb2.Service(name="legacy", port=81, node_id=a.identity.node_id, node_name="alpha",
                               tags=["x" * 120] * 9)
    await mesh.coordinator.store.put("/services/legacy", legacy.SerializeToString())
    await a.uplink.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="later", port=82)))
    before = metrics.RECORDS_SKIPPED._value.get()
    b = await mesh.agent("beta")  # syncs from revision 0 (batched) and follows live changes
    await until(lambda: {"ok", "later"} <= set(b.catalog.services.items))
    await until(lambda: {"ok", "later"} <= set(b.gossip.node.records()))
    assert metrics.RECORDS_SKIPPED._value.get() > before
    await a.uplink.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="live", port=83)))
    await until(lambda: "live" in b.catalog.services.items)
