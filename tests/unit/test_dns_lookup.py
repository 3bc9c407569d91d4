"""The lookup policy DNS answers from (meshagent.view.Catalog.lookup): health and gossip filtering."""

from __future__ import annotations

from dnslib import DNSRecord

from mesh.v1 import types_pb2
from meshagent.dns.answer import Answerer
from meshagent.dns.config import DnsConfig
from meshagent.dns.target import Target
from meshagent.view import Catalog

PUT, SYNCED = types_pb2.EVENT_TYPE_PUT, types_pb2.EVENT_TYPE_SYNCED
PASSING, CRITICAL = types_pb2.HEALTH_STATE_PASSING, types_pb2.HEALTH_STATE_CRITICAL


def service(name: str, node: str = "n1", address: str = "10.4.0.5", port: int = 8000,
            health: int = types_pb2.HEALTH_STATE_UNSPECIFIED) -> types_pb2.Service:
    return types_pb2.Service(name=name, node_id=node, node_name=f"vm-{node}", address=address, port=port,
                             health_state=health)


class Peers:
    """What gossip would say: services from records, and the nodes it declared down."""

    def __init__(self, services: dict[str, types_pb2.Service] | None = None, down: set[str] | None = None) -> None:
        self._services = services or {}
        self._down = down or set()

    def services(self) -> dict[str, types_pb2.Service]:
        return dict(self._services)

    def down(self) -> set[str]:
        return set(self._down)


def synced(*services: types_pb2.Service, peers: Peers | None = None) -> Catalog:
    catalog = Catalog(peers)
    for i, svc in enumerate(services, 1):
        catalog.services.apply(PUT, svc, i)
    catalog.services.apply(SYNCED, None, len(services))
    return catalog


def test_a_service_resolves_to_its_address_port_and_node():
    catalog = synced(service("web", port=8080))
    assert catalog.lookup("web") == [Target("10.4.0.5", 8080, "tcp", "vm-n1")]
    assert catalog.lookup("nothing") == []


def test_udp_services_say_so():
    svc = service("dns")
    svc.protocol = types_pb2.PROTOCOL_UDP
    assert synced(svc).lookup("dns")[0].protocol == "udp"


def test_a_service_failing_its_check_is_left_out():
    catalog = synced(service("vllm", health=CRITICAL), service("ok", health=PASSING))
    assert catalog.lookup("vllm") == []
    assert catalog.lookup("ok")


def test_a_critical_service_stays_out_even_when_gossip_knows_a_healthy_copy():
    peers = Peers(services={"vllm": service("vllm")})
    catalog = Catalog(peers)  # not synced: gossip answers, but meshd's copy says critical
    catalog.services.apply(PUT, service("vllm", health=CRITICAL), 1)
    assert catalog.lookup("vllm") == []


def test_services_of_nodes_gossip_declared_dead_are_left_out():
    peers = Peers(down={"n1"})
    catalog = synced(service("on-dead", node="n1"), service("on-live", node="n2", address="10.4.0.6"), peers=peers)
    assert catalog.lookup("on-dead") == []
    assert catalog.lookup("on-live") == [Target("10.4.0.6", 8000, "tcp", "vm-n2")]


def test_without_gossip_nothing_is_filtered_by_liveness():
    assert synced(service("web", node="n1")).lookup("web")


def test_before_the_first_sync_names_come_from_gossip():
    peers = Peers(services={"web": service("web", address="10.4.0.9"),
                            "sick": service("sick", health=CRITICAL)})
    catalog = Catalog(peers)
    assert not catalog.services.synced
    assert catalog.lookup("web") == [Target("10.4.0.9", 8000, "tcp", "vm-n1")]
    assert catalog.lookup("sick") == []   # gossip's copy is filtered by health too
    assert catalog.lookup("other") == []
    catalog.services.apply(SYNCED, None, 1)  # meshd's (empty) copy wins from now on
    assert catalog.lookup("web") == []


def test_peers_can_be_attached_after_start():
    catalog = synced(service("web", node="n1"))
    catalog.peers = Peers(down={"n1"})
    assert catalog.lookup("web") == []
    catalog.peers = None
    assert catalog.lookup("web")


def test_dns_answers_follow_the_policy():
    peers = Peers(down={"n2"})
    catalog = synced(service("web"), service("gone", node="n2"), service("sick", health=CRITICAL), peers=peers)
    answerer = Answerer(DnsConfig(answer_cache_s=0), catalog.lookup)
    results = {name: answerer.respond(DNSRecord.question(f"{name}.mesh").pack()).result
               for name in ("web", "gone", "sick")}
    assert results == {"web": "answer", "gone": "nxdomain", "sick": "nxdomain"}
