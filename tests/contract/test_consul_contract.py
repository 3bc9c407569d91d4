"""The Consul HTTP API behaviour the sync relies on, checked against the double and a real Consul.

Always runs against testbed/doubles/consul.py. With CONSUL_HTTP_ADDR set
(e.g. http://127.0.0.1:8500, and CONSUL_HTTP_TOKEN when ACLs are on) the same
cases also run against that Consul; every entry is made under a node name
unique to the run and removed afterwards. Without it, the "real" cases are
reported as skipped with that reason.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

import pytest
import requests

from meshd.sync.consul import ConsulTarget
from meshd.sync.consul_client import ConsulConfig
from testbed.doubles.consul import ConsulDouble
from testbed.doubles.sync_helpers import by_id, node, service

DOUBLE_TOKEN = "contract-token"


class Backend:
    def __init__(self, address: str, token: str, acl: bool) -> None:
        self.address, self.token, self.acl = address.rstrip("/"), token, acl
        self.session = requests.Session()
        self.prefix = f"mesh-contract-{secrets.token_hex(3)}"
        self.nodes: set[str] = set()

    def headers(self, token: str | None = None) -> dict[str, str]:
        tok = self.token if token is None else token
        return {"X-Consul-Token": tok} if tok else {}

    def get(self, path: str, **params) -> requests.Response:
        return self.session.get(self.address + path, params=params, headers=self.headers(), timeout=15)

    def put(self, path: str, body: dict, token: str | None = None) -> requests.Response:
        if "Node" in body:
            self.nodes.add(body["Node"])
        return self.session.put(self.address + path, json=body, headers=self.headers(token), timeout=15)

    def cleanup(self) -> None:
        for n in self.nodes:
            self.session.put(self.address + "/v1/catalog/deregister", json={"Node": n}, headers=self.headers(),
                             timeout=15)


# The real Consul joins the suite only when an address is given, so CI neither skips nor reaches out.
@pytest.fixture(params=["double"] + (["real"] if os.environ.get("CONSUL_HTTP_ADDR") else []))
def consul(request):
    if request.param == "double":
        d = ConsulDouble(acl_tokens={DOUBLE_TOKEN}).start()
        b = Backend(d.url, DOUBLE_TOKEN, acl=True)
        try:
            yield b
        finally:
            d.stop()
        return
    addr = os.environ["CONSUL_HTTP_ADDR"]
    token = os.environ.get("CONSUL_HTTP_TOKEN", "")
    b = Backend(addr if "//" in addr else "http://" + addr, token, acl=bool(token))
    try:
        yield b
    finally:
        b.cleanup()


def registration(b: Backend, node_name: str, sid: str, port: int, meta: dict[str, str]) -> dict:
    return {"Node": node_name, "Address": "10.99.0.1", "NodeMeta": meta,
            "Service": {"ID": sid, "Service": sid, "Port": port, "Tags": ["t1"], "Meta": {"managed-by": "mesh"}},
            "Check": {"CheckID": f"mesh:{sid}", "Name": "c", "ServiceID": sid, "Status": "passing",
                      "Definition": {"TCP": "10.99.0.1:1", "Interval": "10s"}}}


def test_register_is_visible_in_catalog_and_health(consul):
    n, svc = consul.prefix + "-a", consul.prefix + "-svc"
    assert consul.put("/v1/catalog/register", registration(consul, n, svc, 8000, {"managed-by": "mesh"})).json() is True
    other = consul.prefix + "-b"
    assert consul.put("/v1/catalog/register", {"Node": other, "Address": "10.99.0.2"}).status_code == 200

    entries = consul.get(f"/v1/catalog/service/{svc}").json()
    assert [(e["Node"], e["ServicePort"], e["ServiceTags"], e["ServiceMeta"]["managed-by"], e["NodeMeta"])
            for e in entries] == [(n, 8000, ["t1"], "mesh", {"managed-by": "mesh"})]
    node_view = consul.get(f"/v1/catalog/node/{n}").json()
    assert node_view["Node"]["Address"] == "10.99.0.1" and svc in node_view["Services"]
    ours = [x["Node"] for x in consul.get("/v1/catalog/nodes", **{"node-meta": "managed-by:mesh"}).json()]
    assert n in ours and other not in ours
    checks = consul.get("/v1/health/state/any", **{"node-meta": "managed-by:mesh"}).json()
    mine = [c for c in checks if c["Node"] == n]
    assert [(c["CheckID"], c["ServiceID"], c["Status"]) for c in mine] == [(f"mesh:{svc}", svc, "passing")]
    assert mine[0]["Definition"]["TCP"] == "10.99.0.1:1"
    health = consul.get(f"/v1/health/service/{svc}", passing="1").json()
    assert [h["Service"]["ID"] for h in health] == [svc]
    assert consul.get("/v1/catalog/node/" + consul.prefix + "-missing").json() is None


def test_deregister_service_then_node(consul):
    n, svc = consul.prefix + "-a", consul.prefix + "-svc"
    consul.put("/v1/catalog/register", registration(consul, n, svc, 8000, {"managed-by": "mesh"}))
    assert consul.put("/v1/catalog/deregister", {"Node": n, "ServiceID": svc}).status_code == 200
    assert consul.get(f"/v1/catalog/service/{svc}").json() == []
    assert [c for c in consul.get(f"/v1/health/node/{n}").json() if c["ServiceID"] == svc] == []
    assert consul.put("/v1/catalog/deregister", {"Node": n}).status_code == 200
    assert consul.get(f"/v1/catalog/node/{n}").json() is None


def test_blocking_query_returns_on_change_with_a_higher_index(consul):
    first = consul.get("/v1/catalog/services")
    index = int(first.headers["X-Consul-Index"])
    n = consul.prefix + "-blk"

    def later() -> None:
        time.sleep(0.3)
        consul.put("/v1/catalog/register", registration(consul, n, n, 1, {"managed-by": "mesh"}))

    writer = threading.Thread(target=later)
    writer.start()
    try:
        t0 = time.monotonic()
        r = consul.get("/v1/catalog/services", index=str(index), wait="5s")
        waited = time.monotonic() - t0
    finally:
        writer.join(10)
    assert int(r.headers["X-Consul-Index"]) > index
    assert n in r.json()
    assert waited >= 0.2  # it blocked until the change instead of answering at once


def test_unknown_acl_token_is_refused_with_403(consul):
    if not consul.acl:
        pytest.skip("real Consul without CONSUL_HTTP_TOKEN: ACLs presumed off")
    r = consul.put("/v1/catalog/register", {"Node": consul.prefix + "-x", "Address": "10.99.0.3"},
                   token="00000000-0000-0000-0000-000000000000")
    assert r.status_code == 403 and "ACL not found" in r.text


async def test_consul_target_round_trip(consul):
    cfg = ConsulConfig(address=consul.address, token=consul.token)
    vm = node(consul.prefix + "-vm", "10.99.1.1")
    consul.nodes.add(vm.name)
    svcs = [service(consul.prefix + "-web", vm, tags=["x"], http_path="/h")]
    first, second = ConsulTarget(cfg), ConsulTarget(cfg)
    try:
        assert (await first.reconcile(svcs, by_id(vm))).writes == 1
        again = await second.reconcile(svcs, by_id(vm))  # a restarted coordinator
        assert again.writes == 0 and not again.changed
        gone = await second.reconcile([], by_id(vm))
        assert gone.deleted == [f"{vm.name}/{svcs[0].name}"]
        assert consul.get(f"/v1/catalog/node/{vm.name}").json() is None
    finally:
        await first.close()
        await second.close()
