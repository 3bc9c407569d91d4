"""Consul's agent, status, KV and ACL behaviour, driven by py-consul against the double and a real Consul.

Same arrangement as test_consul_contract.py: always against
testbed/doubles/consul.py (ACLs on, default deny); with CONSUL_HTTP_ADDR set
(and CONSUL_HTTP_TOKEN, a token allowed to write services, nodes, keys and to
read the agent, when ACLs are on) also against that Consul. Every service and
key is named under a prefix unique to the run and removed afterwards.
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import urlsplit

import consul as pyconsul
import pytest
from consul.callback import CB

from testbed.doubles.consul import ConsulDouble

TOKEN = "contract-token"
READER = "contract-reader"  # may read services and nodes, write nothing


class Backend:
    def __init__(self, address: str, token: str | None, acl: bool) -> None:
        u = urlsplit(address if "//" in address else "http://" + address)
        self.host, self.port, self.scheme = u.hostname, u.port or 8500, u.scheme
        self.token, self.acl = token, acl
        self.c = self.client(token)
        self.prefix = f"mesh-contract-{secrets.token_hex(3)}"

    def client(self, token: str | None) -> pyconsul.Consul:
        return pyconsul.Consul(host=self.host, port=self.port, scheme=self.scheme, token=token)


@pytest.fixture(params=["double"] + (["real"] if os.environ.get("CONSUL_HTTP_ADDR") else []))
def consul(request):
    if request.param == "double":
        d = ConsulDouble(acl_tokens={TOKEN: {"service": "write", "node": "write", "key": "write", "agent": "read"},
                                     READER: {"service": "read", "node": "read"}}).start()
        try:
            yield Backend(d.url, TOKEN, acl=True)
        finally:
            d.stop()
        return
    token = os.environ.get("CONSUL_HTTP_TOKEN") or None
    b = Backend(os.environ["CONSUL_HTTP_ADDR"], token, acl=bool(token))
    try:
        yield b
    finally:
        for sid in b.c.agent.services():
            if sid.startswith(b.prefix):
                b.c.agent.service.deregister(sid)
        b.c.kv.delete(b.prefix, recurse=True)


def test_agent_service_register_and_deregister(consul):
    c, sid = consul.c, consul.prefix + "-web"
    assert c.agent.service.register(sid, service_id=sid, address="10.99.0.1", port=8080, tags=["t"],
                                    meta={"managed-by": "mesh"},
                                    check=pyconsul.Check.tcp("10.99.0.1", 8080, "10s")) is True
    svc = c.agent.services()[sid]
    assert (svc["Service"], svc["Port"], svc["Address"], svc["Tags"], svc["Meta"]) == \
        (sid, 8080, "10.99.0.1", ["t"], {"managed-by": "mesh"})
    one = c.http.get(CB.json(), f"/v1/agent/service/{sid}", headers=c.prepare_headers())
    assert one["ID"] == sid and one["ContentHash"]
    checks = {k: v for k, v in c.agent.checks().items() if v["ServiceID"] == sid}
    assert [(v["Type"], v["Interval"], v["Definition"]["TCP"]) for v in checks.values()] == \
        [("tcp", "10s", "10.99.0.1:8080")]
    _, entries = c.catalog.service(sid)  # the agent put it in the catalog
    assert [e["ServicePort"] for e in entries] == [8080]
    assert c.agent.service.deregister(sid) is True
    assert sid not in c.agent.services()


def test_check_durations_come_back_as_go_prints_them(consul):
    c, sid = consul.c, consul.prefix + "-dur"
    c.agent.service.register(sid, service_id=sid, port=1, check=pyconsul.Check.http(
        "http://10.99.0.1:1/h", "90s", timeout="1m", deregister="10s"))
    check = next(v for v in c.agent.checks().values() if v["ServiceID"] == sid)
    assert (check["Interval"], check["Timeout"]) == ("1m30s", "1m0s")
    assert (check["Definition"]["Interval"], check["Definition"]["Timeout"],
            check["Definition"]["DeregisterCriticalServiceAfter"]) == ("1m30s", "1m0s", "10s")


def test_agent_self_members_and_status(consul):
    c = consul.c
    me = c.http.get(CB.json(), "/v1/agent/self", headers=c.prepare_headers())  # agent.self() sends no token
    assert me["Config"]["Datacenter"] and me["Config"]["NodeName"] and me["Member"]["Name"]
    members = c.http.get(CB.json(), "/v1/agent/members", headers=c.prepare_headers())  # members() sends no token
    assert any(m["Name"] == me["Member"]["Name"] for m in members)
    leader = c.status.leader()
    assert ":" in leader and leader in c.status.peers()


def test_kv_put_get_recurse_keys_cas_delete(consul):
    c, p = consul.c, consul.prefix
    assert c.kv.put(f"{p}/a", "one") is True
    assert c.kv.put(f"{p}/dir/b", b"two", flags=7) is True
    _, a = c.kv.get(f"{p}/a")
    assert a["Value"] == b"one" and a["Flags"] == 0 and a["ModifyIndex"] > 0  # py-consul decodes the base64
    raw = c.http.get(CB.json(), f"/v1/kv/{p}/a", headers=c.prepare_headers())
    assert raw[0]["Value"] == "b25l"  # what Consul sends: base64
    _, items = c.kv.get(p, recurse=True)
    assert [(i["Key"], i["Value"], i["Flags"]) for i in items] == [(f"{p}/a", b"one", 0), (f"{p}/dir/b", b"two", 7)]
    _, keys = c.kv.get(p + "/", keys=True, separator="/")
    assert keys == [f"{p}/a", f"{p}/dir/"]
    assert c.kv.put(f"{p}/a", "stale", cas=a["ModifyIndex"] + 1000) is False
    assert c.kv.put(f"{p}/a", "new", cas=a["ModifyIndex"]) is True
    assert c.kv.put(f"{p}/a", "create-only", cas=0) is False
    assert c.kv.get(f"{p}/missing")[1] is None
    assert c.kv.delete(f"{p}/a") is True and c.kv.get(f"{p}/a")[1] is None
    assert c.kv.delete(p, recurse=True) is True and c.kv.get(p, recurse=True)[1] is None


def test_acl_status_open_agent_needs_a_token_writes_need_the_right_policy(consul):
    if not consul.acl:
        pytest.skip("real Consul without CONSUL_HTTP_TOKEN: ACLs presumed off")
    anonymous = consul.client(None)
    assert anonymous.status.leader()  # /v1/status/* is open
    with pytest.raises(pyconsul.ACLPermissionDenied):
        anonymous.agent.service.register(consul.prefix + "-x", port=1)
    with pytest.raises(pyconsul.ACLPermissionDenied):
        anonymous.kv.put(consul.prefix + "/x", "v")
    unknown = consul.client("00000000-0000-0000-0000-000000000000")
    with pytest.raises(pyconsul.ACLPermissionDenied, match="ACL not found"):
        unknown.catalog.services()
    consul.c.agent.service.register(consul.prefix + "-seen", port=1)
    _, services = anonymous.catalog.services()  # reads are filtered, not refused
    assert consul.prefix + "-seen" not in services
    if os.environ.get("CONSUL_HTTP_ADDR"):
        return  # the reader token below exists only in the double
    reader = consul.client(READER)
    assert consul.prefix + "-seen" in reader.catalog.services()[1]
    with pytest.raises(pyconsul.ACLPermissionDenied, match="service:write"):
        reader.agent.service.register(consul.prefix + "-y", port=1)
