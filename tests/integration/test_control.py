"""meshd over real gRPC (port 0, mTLS, unix admin socket) with real agents in-process."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.v1 import admission_pb2, admission_pb2_grpc, catalog_pb2, catalog_pb2_grpc, nodes_pb2, types_pb2
from meshagent.agent import Agent, channel_options
from meshagent.identity import fetch_pinned_ca
from meshcore import pki
from meshcore.errors import InvalidArgument, Unauthenticated
from tests.meshfix import HeldPauses, Mesh, manual_clock, mesh, synced, until  # noqa: F401  (fixture)


def svc(name: str, port: int = 8000, **kw) -> catalog_pb2.ExposeRequest:
    return catalog_pb2.ExposeRequest(service=types_pb2.Service(name=name, port=port, **kw))


async def code_of(coro) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    return err.value.code(), err.value.details()


async def test_join_expose_and_resolve_through_another_agents_dns(mesh):
    a = await mesh.agent("alpha")
    b = await mesh.agent("beta")
    assert a.identity.mesh_address != b.identity.mesh_address
    await a.catalog_stub.Expose(svc("qwen-coder"))
    await until(lambda: "qwen-coder" in b.catalog.services.items)
    targets = b.catalog.lookup("qwen-coder")
    assert [(t.address, t.port) for t in targets] == [(a.identity.mesh_address, 8000)]
    import dnslib
    q = dnslib.DNSRecord.question("qwen-coder.default.svc.cluster.local")
    reply = dnslib.DNSRecord.parse(await asyncio.to_thread(q.send, "127.0.0.1", b.dns.port, timeout=2))
    assert [str(r.rdata) for r in reply.rr] == [a.identity.mesh_address]


async def test_tokens_are_checked_and_refused_joins_persist_nothing(tmp_path):
    clock = manual_clock()
    m = await Mesh(tmp_path, clock=clock).start()
    try:
        good = await m.token(uses=1, ttl_s=60)
        rev0 = await m.coordinator.store.revision()
        bad = {
            "malformed": "not-a-token",
            "wrong secret": good.split(".")[0] + "." + "0" * 32 + "." + good.split(".")[2],
            "other mesh": ".".join(good.split(".")[:2]) + "." + "f" * 64,
        }
        for why, token in bad.items():
            agent = Agent(m.agent_config(f"bad-{why.replace(' ', '-')}", token))
            with pytest.raises(Exception) as err:
                await asyncio.wait_for(agent.join(), 10)
            assert "token" in str(err.value), why
        assert await m.coordinator.store.revision() == rev0  # nothing persisted

        # expired
        clock.step_wall(61)  # expiry is a point in time on the wall clock
        with pytest.raises(Unauthenticated, match="expired"):
            await Agent(m.agent_config("late", good)).join()
        clock.step_wall(-61)
        # revoked
        revoked = await m.token()
        await m.admission().RevokeToken(admission_pb2.RevokeTokenRequest(id=revoked.split(".")[0]))
        with pytest.raises(Unauthenticated, match="revoked"):
            await Agent(m.agent_config("rev", revoked)).join()
        # used up
        await Agent(m.agent_config("first", good)).join()
        with pytest.raises(Unauthenticated, match="used up"):
            await Agent(m.agent_config("second", good)).join()
        listed = (await m.admission().ListTokens(admission_pb2.ListTokensRequest())).tokens
        assert {t.id: t.uses for t in listed}[good.split(".")[0]] == 1
    finally:
        await m.close()


async def test_invalid_node_name_is_refused_without_using_the_token(mesh):
    token = await mesh.token(uses=1)
    for name in ["Upper", "under_score", "-lead", "x" * 64]:
        with pytest.raises(InvalidArgument, match="RFC 1123"):
            await Agent(mesh.agent_config(name, token)).join()
    await Agent(mesh.agent_config("fine", token)).join()  # the token is still unused


@pytest.mark.parametrize("name,port,rule", [
    ("Qwen", 8000, "uppercase"), ("qwen_coder", 8000, "'_'"), ("x" * 64, 8000, "longer than 63"),
    ("-qwen", 8000, "start or end with '-'"), ("qwen", 0, "between 1 and 65535"),
    ("qwen", 65536, "between 1 and 65535"),
])
async def test_expose_refuses_bad_names_and_ports(mesh, name, port, rule):
    a = await mesh.agent()
    rev = await mesh.coordinator.store.revision()
    code, details = await code_of(a.catalog_stub.Expose(svc(name, port)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and rule in details
    assert await mesh.coordinator.store.revision() == rev


async def test_names_belong_to_one_node(mesh):
    a = await mesh.agent("holder")
    b = await mesh.agent("intruder")
    await a.catalog_stub.Expose(svc("llm"))
    code, details = await code_of(b.catalog_stub.Expose(svc("llm", 9000)))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "holder" in details
    code, details = await code_of(b.catalog_stub.Unexpose(catalog_pb2.UnexposeRequest(name="llm")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "holder" in details
    await a.catalog_stub.Expose(svc("llm", 8001))  # the holder may change it
    listed = (await mesh.catalog().ListServices(catalog_pb2.ListServicesRequest())).services
    assert [(s.name, s.port, s.node_name) for s in listed] == [("llm", 8001, "holder")]


async def test_nodes_cannot_call_admin_rpcs_and_anonymous_callers_only_join(mesh):
    a = await mesh.agent()
    node_admission = admission_pb2_grpc.AdmissionServiceStub(a._channel)
    code, _ = await code_of(node_admission.CreateToken(admission_pb2.CreateTokenRequest()))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    creds = grpc.ssl_channel_credentials(mesh.coordinator.ca.pem)
    async with grpc.aio.secure_channel(mesh.join_address, creds, options=channel_options()) as ch:
        # the join port answers Join and nothing else (not even health or reflection)
        code, _ = await code_of(catalog_pb2_grpc.CatalogServiceStub(ch).ListServices(catalog_pb2.ListServicesRequest()))
        assert code == grpc.StatusCode.UNIMPLEMENTED
        code, _ = await code_of(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()))
        assert code == grpc.StatusCode.UNIMPLEMENTED


async def test_client_certificate_from_another_ca_is_refused(mesh, tmp_path):
    a = await mesh.agent()
    other = pki.CertificateAuthority.load_or_create(tmp_path / "other-ca")
    key = pki.new_key()
    cert = other.sign_csr(pki.make_csr(key, "x"), a.identity.node_id, pki.KIND_NODE)
    creds = grpc.ssl_channel_credentials(mesh.coordinator.ca.pem, pki.key_pem(key), cert)
    async with grpc.aio.secure_channel(mesh.address, creds, options=channel_options()) as ch:
        code, _ = await code_of(catalog_pb2_grpc.CatalogServiceStub(ch).ListServices(
            catalog_pb2.ListServicesRequest(), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


async def test_admin_certificate_works_over_mtls(mesh):
    key = pki.new_key()
    resp = await mesh.admission().IssueAdminCert(
        admission_pb2.IssueAdminCertRequest(csr_pem=pki.make_csr(key, "alice").decode()))
    creds = grpc.ssl_channel_credentials(resp.ca_pem.encode(), pki.key_pem(key), resp.certificate_pem.encode())
    async with grpc.aio.secure_channel(mesh.address, creds, options=channel_options()) as ch:
        created = await admission_pb2_grpc.AdmissionServiceStub(ch).CreateToken(admission_pb2.CreateTokenRequest())
        status = await __import__("mesh.v1.nodes_pb2_grpc", fromlist=["x"]).NodeServiceStub(ch).Status(
            nodes_pb2.StatusRequest())
    assert created.secret.count(".") == 2 and status.caller == "admin:alice"


async def test_addresses_are_unique_survive_restarts_and_free_only_on_removal(mesh):
    first = [await mesh.agent() for _ in range(3)]
    addrs = [a.identity.mesh_address for a in first]
    assert len(set(addrs)) == 3
    await mesh.restart()
    later = await mesh.agent()
    assert later.identity.mesh_address not in addrs
    await mesh.nodes().RemoveNode(nodes_pb2.RemoveNodeRequest(id_or_name=first[0].identity.name))
    kvs, _ = await mesh.coordinator.store.range("/addresses/")
    assert first[0].identity.mesh_address not in {kv.key.rsplit("/", 1)[1] for kv in kvs}
    # the removed node's certificate no longer works (once its channel is back from the restart's backoff)
    for _ in range(100):  # bounded: ~10 s
        code, details = await code_of(first[0].catalog_stub.Expose(svc("ghost")))
        if code != grpc.StatusCode.UNAVAILABLE:
            break
        await asyncio.sleep(0.1)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "removed" in details


async def test_watch_resumes_with_exactly_what_was_missed(mesh):
    a = await mesh.agent()
    await a.catalog_stub.Expose(svc("one"))
    listed = await mesh.catalog().ListServices(catalog_pb2.ListServicesRequest())
    await a.catalog_stub.Expose(svc("two"))
    await a.catalog_stub.Unexpose(catalog_pb2.UnexposeRequest(name="one"))
    events = await mesh.watch_until_synced(listed.revision)
    assert events == [("EVENT_TYPE_PUT", "two"), ("EVENT_TYPE_DELETE", "one"), ("EVENT_TYPE_SYNCED", "")]


async def test_agent_restarts_without_token_and_reasserts_services(mesh):
    a = await mesh.agent("keeper")
    await mesh.agents[-1].stop()
    mesh.agents.pop()
    # restart with no token: identity comes from the state directory
    cfg = mesh.agent_config("keeper", token="")
    again = Agent(cfg)
    mesh.agents.append(again)
    await again.start()
    assert again.identity.node_id == a.identity.node_id
    resp = await again.catalog_stub.Expose(svc("kept"))
    again.remember(resp.service)
    # an admin removes it behind the agent's back: anti-entropy puts it back on the next resync
    await mesh.catalog().Unexpose(catalog_pb2.UnexposeRequest(name="kept"))
    await mesh.restart()  # the agent reconnects, gets SYNCED, re-asserts
    await until(lambda: "kept" in again.catalog.services.items, timeout=15)


async def test_lease_expiry_marks_unreachable_then_removes_services(tmp_path):
    clock = manual_clock()
    m = await Mesh(tmp_path, clock=clock, lease_ttl_s=10, grace_s=20).start()
    try:
        a = await m.agent("sleepy")
        await a.catalog_stub.Expose(svc("nap"))
        for t in a._tasks:  # the agent stops renewing
            t.cancel()
        clock.advance(11)
        await m.coordinator.leases.check()
        node = (await m.nodes().GetNode(nodes_pb2.GetNodeRequest(id_or_name="sleepy"))).node
        assert node.state == types_pb2.NODE_STATE_UNREACHABLE
        assert (await m.catalog().ListServices(catalog_pb2.ListServicesRequest())).services  # still in grace
        clock.advance(20)
        await m.coordinator.leases.check()
        assert not (await m.catalog().ListServices(catalog_pb2.ListServicesRequest())).services
    finally:
        await m.close()


async def test_meshd_grants_a_longer_lease_as_the_fleet_grows_and_agents_renew_by_it(tmp_path):
    # 3 nodes renewing every third of the TTL at most 0.5 times a second: 18 s, granted as 20
    m = await Mesh(tmp_path, lease_ttl_s=10, max_renewals_per_s=0.5).start()
    try:
        a = await m.agent("a")
        renew = admission_pb2.RenewRequest(node=types_pb2.Node())
        assert (await a.admission_stub.Renew(renew)).lease_ttl_s == 10  # one node: the configured TTL
        await m.agent("b")
        await m.agent("c")
        await m.coordinator.leases.tick()
        assert (await a.admission_stub.Renew(renew)).lease_ttl_s == 20
        assert (await m.agent("d")).identity.name == "d"
        await m.coordinator.leases.tick()
        assert (await a.admission_stub.Renew(renew)).lease_ttl_s == 25  # 4 nodes: 24 s
        # nobody's lease expired on the way
        listed = (await m.nodes().ListNodes(nodes_pb2.ListNodesRequest())).nodes
        assert {n.name: n.state for n in listed} == dict.fromkeys("abcd", types_pb2.NODE_STATE_READY)
    finally:
        await m.close()


async def test_agent_started_while_meshd_is_down_joins_when_it_comes_up(tmp_path, caplog, monkeypatch):
    import meshagent.uplink
    attempts = []
    real_fetch = meshagent.uplink.fetch_pinned_ca

    def counted(*args, **kw):
        attempts.append(1)
        return real_fetch(*args, **kw)
    monkeypatch.setattr(meshagent.uplink, "fetch_pinned_ca", counted)
    m = await Mesh(tmp_path).start()
    try:
        token = await m.token()
        await m.stop_coordinator()
        m.config.listen = f"127.0.0.1:{m.ports['listen']}"
        m.config.join_listen = f"127.0.0.1:{m.ports['join']}"
        cfg = m.agent_config("patient", token)
        cfg.coordinator, cfg.join_address = m.config.listen, m.config.join_listen
        agent = Agent(cfg)
        m.agents.append(agent)
        starting = asyncio.create_task(agent.start())
        await until(lambda: len(attempts) >= 3, timeout=15)  # retried several times, whatever the load
        assert not starting.done()
        assert sum("unreachable" in r.message for r in caplog.records) == 1  # said once, not per retry
        await m.start()
        await asyncio.wait_for(starting, 15)
        assert agent.identity.name == "patient"
    finally:
        await m.close()


@pytest.mark.parametrize("field,value,rule", [
    ("wireguard_public_key", "not-base64!", "WireGuard public key"),
    ("wireguard_public_key", "AAAA", "WireGuard public key"),
    ("public_address", "300.1.2.3", "public address"),
    ("private_address", "0.0.0.0", "unicast"),
])
async def test_bad_node_facts_are_refused_at_meshd_and_never_stored(mesh, field, value, rule):
    token = await mesh.token(uses=1)
    agent = Agent(mesh.agent_config("facts", token))
    real_facts = agent.facts

    def bad_facts():
        f = real_facts()
        setattr(f, field, value)
        return f
    agent.facts = bad_facts
    rev = await mesh.coordinator.store.revision()
    with pytest.raises(InvalidArgument, match=rule):
        await agent.join()
    assert await mesh.coordinator.store.revision() == rev
    renew = await mesh.agent("honest")
    from mesh.v1 import admission_pb2 as adm
    code, details = await code_of(renew.admission_stub.Renew(adm.RenewRequest(
        node=types_pb2.Node(wireguard_public_key="short"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "WireGuard public key" in details


async def test_concurrent_joins_all_succeed_with_distinct_addresses(mesh):
    token = await mesh.token(uses=0)
    agents = [Agent(mesh.agent_config(f"burst-{i}", token)) for i in range(20)]
    idents = await asyncio.wait_for(asyncio.gather(*(a.join() for a in agents)), 60)
    assert len({i.mesh_address for i in idents}) == 20 and len({i.node_id for i in idents}) == 20


async def test_batched_watch_sends_the_current_set_in_few_events(mesh):
    a = await mesh.agent("many")
    for i in range(300):
        await a.catalog_stub.Expose(svc(f"s{i:03d}", 1000 + i))
    stream = mesh.catalog().WatchServices(types_pb2.WatchRequest(batch=True))
    shapes = []
    async for ev in stream:
        shapes.append((types_pb2.EventType.Name(ev.type), len(ev.services), len(ev.records)))
        if ev.type == types_pb2.EVENT_TYPE_SYNCED:
            break
    stream.cancel()
    assert shapes == [("EVENT_TYPE_RESET", 0, 0), ("EVENT_TYPE_PUT", 256, 256), ("EVENT_TYPE_PUT", 44, 44),
                      ("EVENT_TYPE_SYNCED", 0, 0)]
    await until(lambda: len(a.catalog.services.items) == 300)  # the agent's own (batched) copy


async def test_watchers_starting_at_different_revisions_get_the_whole_set_each_record_with_its_service(mesh):
    """Batches are put together from each object's own encoding (meshd.fanout.batch): what a
    watcher decodes is the set as a listing shows it, records paired with their services."""
    from meshcore.gossip.codec import _read_record, _Reader
    a = await mesh.agent("sets")
    sets = []
    for i in range(300):
        await a.catalog_stub.Expose(svc(f"s{i:03d}", 1000 + i))
        if i in (100, 299):  # a watcher starting here, and one after 199 more changes
            got_services, got_nodes = [], []
            async for ev in mesh.catalog().WatchServices(types_pb2.WatchRequest(batch=True)):
                for s, rec in zip(ev.services, ev.records, strict=True):
                    assert _read_record(_Reader(rec)).key.endswith(s.name)
                got_services += ev.services
                if ev.type == types_pb2.EVENT_TYPE_SYNCED:
                    break
            async for ev in mesh.nodes().WatchNodes(types_pb2.WatchRequest(batch=True)):
                got_nodes += ev.nodes
                if ev.type == types_pb2.EVENT_TYPE_SYNCED:
                    break
            sets.append((got_services, got_nodes))
    listed = (await mesh.catalog().ListServices(catalog_pb2.ListServicesRequest())).services
    nodes = (await mesh.nodes().ListNodes(nodes_pb2.ListNodesRequest())).nodes
    assert [s.name for s in sets[0][0]] == [f"s{i:03d}" for i in range(101)]
    assert sorted(sets[1][0], key=lambda s: s.name) == sorted(listed, key=lambda s: s.name)
    assert [(n.id, n.revision) for n in sets[0][1]] == [(n.id, n.revision) for n in sets[1][1]] == \
        [(n.id, n.revision) for n in nodes]


async def test_watch_streams_take_turns_sending_the_initial_set_and_all_sync(tmp_path, monkeypatch):
    from meshcore import limits
    monkeypatch.setattr(limits, "WATCH_SYNCS_AT_ONCE", 1)
    m = await Mesh(tmp_path).start()
    try:
        a = await m.agent("turns")
        for i in range(20):
            await a.catalog_stub.Expose(svc(f"t{i:02d}", 2000 + i))

        async def synced(stream) -> int:
            got = 0
            async for ev in stream:
                many = ev.services if hasattr(ev, "services") else ev.nodes
                got += len(many) + ev.HasField("service" if hasattr(ev, "services") else "node")
                if ev.type == types_pb2.EVENT_TYPE_SYNCED:
                    return got
        streams = [m.catalog().WatchServices(types_pb2.WatchRequest(batch=True)) for _ in range(6)] + \
                  [m.nodes().WatchNodes(types_pb2.WatchRequest()) for _ in range(6)]
        counts = await asyncio.wait_for(asyncio.gather(*(synced(s) for s in streams)), 30)
        assert counts == [20] * 6 + [1] * 6  # one turn at a time, each released once its set was sent
        for s in streams:
            s.cancel()
    finally:
        await m.close()


async def test_labels_follow_the_kubernetes_label_syntax_for_tokens_joins_and_renewals(mesh):
    rev = await mesh.coordinator.store.revision()
    code, details = await code_of(mesh.admission().CreateToken(admission_pb2.CreateTokenRequest(
        ttl_s=60, labels={"gpu model": "L4"})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Kubernetes label syntax" in details
    code, details = await code_of(mesh.admission().CreateToken(admission_pb2.CreateTokenRequest(
        ttl_s=60, labels={"pool": "two words"})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Kubernetes label syntax" in details
    assert await mesh.coordinator.store.revision() == rev
    token = await mesh.token(uses=1, **{"gpu.model": "L4"})
    agent = Agent(mesh.agent_config("labelled", token))
    real_facts = agent.facts

    def bad_facts():
        f = real_facts()
        f.labels["pool"] = "two words"
        return f
    agent.facts = bad_facts
    with pytest.raises(InvalidArgument, match="Kubernetes label syntax"):
        await agent.join()
    renew = await mesh.agent("honest")
    code, details = await code_of(renew.admission_stub.Renew(admission_pb2.RenewRequest(
        node=types_pb2.Node(labels={"pool": "two words"}))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Kubernetes label syntax" in details


async def drain(mesh: Mesh, name: str, on: bool) -> int:
    """Drain (or undrain) a node through meshd's admin socket; the revision of the change."""
    resp = await mesh.nodes().DrainNode(nodes_pb2.DrainNodeRequest(id_or_name=name, drain=on))
    return resp.node.revision


async def held_node_watch(mesh: Mesh, monkeypatch):
    """Agents "one" and "two", and a batch node stream read past SYNCED whose pauses after live
    changes are held from now on (HeldPauses, armed); returns the pauses, the stream and its events."""
    pauses = HeldPauses(monkeypatch)
    await mesh.agent("one")
    await mesh.agent("two")
    stream = mesh.nodes().WatchNodes(types_pb2.WatchRequest(batch=True))
    events = await synced(stream)
    pauses.armed.set()
    return pauses, stream, events


async def test_a_batch_node_watcher_gets_what_waited_as_one_message_each_node_once(mesh, monkeypatch):
    pauses, stream, events = await held_node_watch(mesh, monkeypatch)
    await drain(mesh, "one", True)  # the first change after a quiet spell: sent at once, alone
    first = await asyncio.wait_for(anext(events), 30)
    assert first.node.name == "one" and first.node.drained and not first.nodes
    await asyncio.wait_for(pauses.paused.wait(), 30)
    revs = [await drain(mesh, "two", True), await drain(mesh, "one", False), await drain(mesh, "one", True),
            await drain(mesh, "one", False)]
    pauses.release.set()
    grouped = await asyncio.wait_for(anext(events), 30)
    stream.cancel()
    assert grouped.type == types_pb2.EVENT_TYPE_PUT and not grouped.HasField("node")
    assert [(n.name, n.drained, n.revision) for n in grouped.nodes] == [("two", True, revs[0]), ("one", False, revs[3])]
    assert grouped.revision == revs[3]


async def test_a_batch_service_watcher_behind_gets_what_waited_grouped_each_with_its_record(mesh, monkeypatch):
    """A services stream whose writes waited (meshd busy) sends the changes that waited as runs
    of one kind, each service once as it is now, each with its signed record; the agent's copy
    follows them."""
    from meshcore.gossip.codec import _read_record, _Reader
    from meshd import servicers
    plain, gate, waiting = servicers.WatchSlots.send_turn, asyncio.Event(), asyncio.Event()

    async def send_turn(self):  # once the gate is shut, the next write waits until it opens
        if not gate.is_set():
            waiting.set()
            await gate.wait()
        return await plain(self)
    gate.set()
    monkeypatch.setattr(servicers.WatchSlots, "send_turn", send_turn)
    a = await mesh.agent("grouped")
    events = await synced(mesh.catalog().WatchServices(types_pb2.WatchRequest(batch=True)))
    gate.clear()
    first = (await a.catalog_stub.Expose(svc("alone", 7000))).service.revision
    await asyncio.wait_for(waiting.wait(), 10)  # its write waits for a turn; what follows waits behind it
    for name, port in (("b", 7001), ("c", 7002), ("b", 7003)):
        await a.catalog_stub.Expose(svc(name, port))
    for name in ("b", "c"):
        await a.catalog_stub.Unexpose(catalog_pb2.UnexposeRequest(name=name))
    last = await mesh.coordinator.store.revision()
    gate.set()
    got = [await asyncio.wait_for(anext(events), 10) for _ in range(3)]
    shapes = []
    for ev in got:
        services = [ev.service] if ev.HasField("service") else list(ev.services)
        records = [ev.record] if ev.HasField("service") else list(ev.records)
        decoded = [_read_record(_Reader(r)) for r in records]
        assert [r.key.rsplit("/", 1)[-1] for r in decoded] == [s.name for s in services]
        assert {r.deleted for r in decoded} == {ev.type == types_pb2.EVENT_TYPE_DELETE}
        shapes.append((types_pb2.EventType.Name(ev.type), ev.HasField("service"), [(s.name, s.port) for s in services]))
    assert shapes == [("EVENT_TYPE_PUT", True, [("alone", 7000)]),
                      ("EVENT_TYPE_PUT", False, [("c", 7002), ("b", 7003)]),
                      ("EVENT_TYPE_DELETE", False, [("b", 7003), ("c", 7002)])]
    assert got[0].revision == first and got[2].revision == last
    await until(lambda: set(a.catalog.services.items) == {"alone"})


async def test_watch_streams_pause_longer_as_more_are_open_so_the_fleet_is_sent_a_bounded_rate(tmp_path, monkeypatch):
    """After it sent live changes, a batch watch stream pauses long enough that the open streams
    of its kind are sent at most --max-watch-messages-per-s messages a second between them."""
    from meshd import servicers
    pauses: dict[str, list[float]] = {"nodes": [], "services": []}
    plain = servicers.WatchSlots.pause

    def pause(self, kind: str, floor: float = 0.0) -> float:
        pauses[kind].append(plain(self, kind, floor))
        return pauses[kind][-1]

    async def wait(self, seconds: float) -> None:  # the pause is recorded, not taken
        pass
    monkeypatch.setattr(servicers.WatchSlots, "pause", pause)
    monkeypatch.setattr(servicers.WatchSlots, "wait", wait)
    m = await Mesh(tmp_path, max_watch_messages_per_s=4).start()
    try:
        one = await m.agent("one")
        two = await m.agent("two")  # each agent keeps a node stream and a services stream
        streams = [m.nodes().WatchNodes(types_pb2.WatchRequest(batch=True)) for _ in range(2)]
        streams += [m.catalog().WatchServices(types_pb2.WatchRequest(batch=True)) for _ in range(2)]
        for stream in streams:
            await synced(stream)
        pauses["nodes"].clear(), pauses["services"].clear()
        await drain(m, "two", True)
        await one.catalog_stub.Expose(svc("paced", 7000))
        await until(lambda: len(pauses["nodes"]) >= 4 and len(pauses["services"]) >= 4)
        assert set(pauses["nodes"]) == set(pauses["services"]) == {1.0}  # 4 streams, 4 messages a second
        for stream in streams:
            stream.cancel()
        await until(lambda: m.coordinator.watch_slots.streams == {"nodes": 2, "services": 2})
        pauses["nodes"].clear(), pauses["services"].clear()
        await drain(m, "two", False)
        await one.catalog_stub.Unexpose(catalog_pb2.UnexposeRequest(name="paced"))
        await until(lambda: len(pauses["nodes"]) >= 2 and len(pauses["services"]) >= 2)
        assert set(pauses["nodes"]) == set(pauses["services"]) == {0.5}  # the agents' own streams
        await until(lambda: "paced" not in two.catalog.services.items
                    and [n.drained for n in one.catalog.nodes.items.values() if n.name == "two"] == [False])
    finally:
        await m.close()


async def test_a_grouped_run_longer_than_a_batch_comes_in_order_and_a_cut_stream_resumes_missing_nothing(
        mesh, monkeypatch):
    """What waited for a batch node watcher goes out in messages of at most BATCH nodes, in the
    order of their last change, each message's revision its last node's: a watcher cut off after
    the first resumes from that revision and gets the rest."""
    from meshd import servicers
    monkeypatch.setattr(servicers, "BATCH", 1)
    pauses, stream, events = await held_node_watch(mesh, monkeypatch)
    await drain(mesh, "one", True)  # sent at once, alone; the stream then pauses
    assert (await asyncio.wait_for(anext(events), 30)).node.name == "one"
    await asyncio.wait_for(pauses.paused.wait(), 30)
    revs = [await drain(mesh, "one", False), await drain(mesh, "two", True), await drain(mesh, "one", True)]
    pauses.release.set()
    parts = [await asyncio.wait_for(anext(events), 30) for _ in range(2)]
    stream.cancel()
    assert [[(n.name, n.drained, n.revision) for n in p.nodes] for p in parts] == \
        [[("two", True, revs[1])], [("one", True, revs[2])]]
    assert [p.revision for p in parts] == [revs[1], revs[2]]
    # cut off after the first message: resuming from its revision brings the rest
    resumed = mesh.nodes().WatchNodes(types_pb2.WatchRequest(batch=True, from_revision=parts[0].revision))
    got = []
    async for ev in resumed:
        got += [(n.name, n.drained) for n in ev.nodes] or ([(ev.node.name, ev.node.drained)] if ev.HasField("node") else [])
        if ev.type == types_pb2.EVENT_TYPE_SYNCED or len(got) >= 1:
            break
    resumed.cancel()
    assert got == [("one", True)]


async def test_a_batch_watcher_resuming_gets_the_history_it_missed_as_one_group_then_synced(mesh):
    """A resumed history comes from the store a revision at a time; a batch watcher gets it as
    one group (runs of one kind, each service once as it is now), not one message per revision
    each followed by its pause."""
    a = await mesh.agent()
    listed = await mesh.catalog().ListServices(catalog_pb2.ListServicesRequest())
    for name, port in (("one", 7001), ("two", 7002), ("one", 7003), ("three", 7004)):
        await a.catalog_stub.Expose(svc(name, port))
    stream = mesh.catalog().WatchServices(types_pb2.WatchRequest(batch=True, from_revision=listed.revision))
    got = []
    async for ev in stream:
        got.append((types_pb2.EventType.Name(ev.type), [(s.name, s.port) for s in ev.services]))
        if ev.type == types_pb2.EVENT_TYPE_SYNCED:
            break
    stream.cancel()
    assert got == [("EVENT_TYPE_PUT", [("two", 7002), ("one", 7003), ("three", 7004)]), ("EVENT_TYPE_SYNCED", [])]


async def test_the_ca_is_taken_from_the_join_listener_only_when_it_matches_the_tokens_pin(mesh, tmp_path):
    """The agent reads meshd's chain without verifying it (it has nothing to verify with yet) and
    keeps the certificate whose SHA-256 is the token's pin: meshd's CA, or nothing."""
    host, port = mesh.join_address.rsplit(":", 1)
    ca_pem = mesh.coordinator.ca.pem
    got = await asyncio.to_thread(fetch_pinned_ca, host, int(port), pki.pin(ca_pem))
    assert pki.pin(got) == pki.pin(ca_pem)
    other = pki.CertificateAuthority.load_or_create(tmp_path / "other-ca")
    with pytest.raises(Unauthenticated, match="not the meshd this token belongs to"):
        await asyncio.to_thread(fetch_pinned_ca, host, int(port), pki.pin(other.pem))
