"""Item 2: a member holding the gossip key cannot make another member leave, and refutation never overflows."""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path

from meshcore import pki
from meshcore.gossip import codec
from meshcore.gossip.keyring import Keyring
from meshcore.gossip.leaveproof import leave_signer, leave_verifier
from meshcore.gossip.messages import Dead, Leave, State, newer, next_incarnation
from meshcore.gossip.profiles import local
from meshcore.gossip.swim import Swim
from testbed.localmesh import resolve
from tests.meshfix import wait_for


def _forged(keys: list[str], sender: str, msgs) -> bytes:
    ring = Keyring(bytes.fromhex(keys[0]))
    framed = [codec.frame(codec.encode_message(m)) for m in msgs]
    return ring.seal(codec.encode_packet(int(time.time() * 1000), 1, sender, framed))


def test_forged_leave_with_the_real_key_does_not_take_names_away(local_mesh):
    token = local_mesh.token(uses=2)
    local_mesh.start_agent("victim", token)
    local_mesh.start_agent("observer", token)
    local_mesh.meshctl("expose", "--port", "8000", "--name", "api", agent="victim")
    wait_for(lambda: resolve("api.mesh", local_mesh.dns("observer")), what="api resolvable on the observer")
    nodes = {n["name"]: n for n in json.loads(local_mesh.meshctl("nodes", "-o", "json").stdout)["nodes"]}
    victim, observer = nodes["victim"]["id"], nodes["observer"]
    keys = json.loads((Path(local_mesh.root) / "observer" / "gossip.json").read_text())["keys"]

    def counters(agent: str) -> dict:
        return json.loads(local_mesh.meshctl("status", "-o", "json", agent=agent).stdout)["counters"]

    for round_ in range(3):  # each claim as far ahead as serial arithmetic allows: the third crosses 2**32
        inc = (int(counters("victim")["gossip_incarnation"]) + 2**31 - 1) % 2**32
        datagram = _forged(keys, "n-attacker", [
            Dead(inc, victim, victim),               # "victim left"
            Leave(inc, victim, b"\0" * 80),          # a leave whose proof is not the victim's
            Dead(inc, victim, observer["id"]),       # "observer says victim is dead"
        ])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(datagram, ("127.0.0.1", observer["gossip_port"]))
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:  # the name never leaves the observer's DNS
            assert resolve("api.mesh", local_mesh.dns("observer")), "the forged leave took the name away"
            time.sleep(0.1)
        wait_for(lambda: int(counters("victim")["gossip_refutations"]) > round_, what="the victim refuted")
    assert int(counters("observer")["gossip_leave_proof_failures"]) >= 3
    # meshd still lists the victim, and the observer's gossip sees it alive
    wait_for(lambda: resolve("api.mesh", local_mesh.dns("observer")), what="api still resolvable")


def test_incarnations_compare_wrap_safe():
    assert newer(0, 2**32 - 1) and next_incarnation(2**32 - 1) == 0
    assert not newer(2**32 - 1, 0) and newer(5, 4) and not newer(4, 4)


def _member(tmp: Path, ca: pki.CertificateAuthority, node: str, port: int, clock):
    key = pki.new_key()
    cert = ca.sign_csr(pki.make_csr(key, node), node, pki.KIND_NODE)
    return Swim(node, node, ("127.0.0.1", port), local(), random.Random(port), Keyring(b"k" * 32),
                verify_record=lambda r: True, verify_leave=leave_verifier(ca.pem, clock),
                sign_leave=leave_signer(pki.key_pem(key), cert, clock))


def test_a_leave_signed_by_the_node_itself_is_believed_and_one_signed_by_another_is_not(tmp_path):
    ca = pki.CertificateAuthority.load_or_create(tmp_path)
    clock = time.time
    a, b, c = (_member(tmp_path, ca, n, p, clock) for n, p in (("na", 1), ("nb", 2), ("nc", 3)))
    now = 0.0
    for x in (a, b, c):
        for y in (a, b, c):
            if x is not y:
                y.seed_members([codec_state(x)], now)
    # c signs a leave naming b with c's own certificate: refused, b is at most suspected
    fake = Leave(1, "nb", c.sign_leave("nb", 1))
    a.receive(_packet("nc", [fake]), ("127.0.0.1", 3), now)
    assert a.member("nb").state in (State.ALIVE, State.SUSPECT) and a.stats.leave_proof_failures == 1
    # b's own leave: believed at once
    b.leave(now)
    for data, _ in b.datagrams_to_send():
        a.receive(data, ("127.0.0.1", 2), now)
    b._gossip(now)
    for data, addr in b.datagrams_to_send():
        if addr[1] == 1:
            a.receive(data, addr, now)
    assert a.member("nb").state == State.LEFT


def codec_state(s: Swim):
    from meshcore.gossip.messages import MemberState
    m = s.member(s.id)
    return MemberState(m.node, m.name, m.addr, m.incarnation, m.state, m.facts)


_counter = iter(range(1, 10**6))


def _packet(sender: str, msgs) -> bytes:
    framed = [codec.frame(codec.encode_message(m)) for m in msgs]
    return Keyring(b"k" * 32).seal(codec.encode_packet(1, next(_counter), sender, framed))
