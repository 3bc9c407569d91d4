"""The bounds of meshcore.limits fit through every later door (nothing accepted upstream is refused downstream)."""

from __future__ import annotations

import random

from mesh.v1 import types_pb2
from meshagent.gossip import facts_of
from meshcore import limits
from meshcore.gossip import codec
from meshcore.gossip.adapter import encode_facts
from meshcore.gossip.keyring import Keyring
from meshcore.gossip.messages import Alive, Record
from meshcore.gossip.profiles import lan, local, wan
from meshcore.gossip.swim import Swim


def _widest_service() -> types_pb2.Service:
    return types_pb2.Service(name="s" * 63, port=65535, protocol=types_pb2.PROTOCOL_UDP, node_id="n" + "f" * 16,
                             node_name="n" * 63, address="ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                             revision=2**62, health_state=types_pb2.HEALTH_STATE_CRITICAL)


def test_a_service_meshd_accepts_fits_one_record_in_one_datagram_of_every_profile():
    # The largest payload the catalog lets through, with the widest key, origin and signature.
    rec = Record("s" * 63, 2**62, "n" + "f" * 16, b"x" * limits.MAX_SERVICE_BYTES, True, b"\xff" * 64)
    sealed = Record("s" * 63, 2**62, "n" + "f" * 16, b"x" * limits.MAX_SERVICE_BYTES, True, b"\xff" * 64,
                    "f" * codec.KEY_ID_BYTES, 2**64 - 1)  # with the catalog key id and expiry
    for profile in (lan(), wan(), local()):
        swim = Swim("n" + "f" * 16, "n" * 63, ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535), profile,
                    random.Random(1), Keyring(b"k" * 32), verify_record=lambda r: True)
        swim._check_fits(rec, "widest record")  # raises if it does not fit
        swim._check_fits(sealed, "widest sealed record")
    assert limits.MAX_SERVICE_BYTES <= limits.GOSSIP_MAX_PAYLOAD


def test_labels_meshd_accepts_fit_the_gossip_facts_of_every_profile():
    n = limits.MAX_LABELS
    room = limits.MAX_LABELS_BYTES // n
    labels = {f"k{i:02d}" + "a" * (room // 2 - 3): "v" * (room - room // 2) for i in range(n)}
    assert sum(len(k) + len(v) for k, v in labels.items()) <= limits.MAX_LABELS_BYTES
    node = types_pb2.Node(mesh_address="ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", region="r" * limits.MAX_FACT_BYTES,
                          cloud="c" * limits.MAX_FACT_BYTES, labels=labels)
    facts = encode_facts(facts_of(node))
    assert len(facts) <= codec.MAX_FACTS
    for profile in (lan(), wan(), local()):
        Swim("n" + "f" * 16, "n" * 63, ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535), profile,
             random.Random(1), Keyring(b"k" * 32), verify_record=lambda r: True, facts=facts)
    Alive(2**32 - 1, "n", "n", ("h", 1), facts)


def test_a_full_tunnel_chunk_fits_the_tunnel_message_bound_and_the_transport_cap():
    from mesh.v1 import catalog_pb2
    widest = catalog_pb2.TunnelData(service="s" * 63, port=65535, data=b"x" * limits.TUNNEL_CHUNK_BYTES)
    assert widest.ByteSize() <= limits.request_limit("Tunnel") <= limits.GRPC_MAX_REQUEST_BYTES
