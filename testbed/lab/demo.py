"""`make demo-lab` (root): the loopback demo's story across the lab's five nodes.

A real meshd on the hub and a meshagent with WireGuard on every node; each
node exposes a port under a name; every node resolves every name through its
own agent's DNS and connects, and the table shows which path each pair took.
The lab is removed at the end, whatever happens.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from meshagent.paths import NodeFacts, select_path
from testbed.lab.daemons import ROLES, LabDaemons, query
from testbed.lab.lab import Lab


def main() -> int:
    lab = Lab.create()
    daemons = None
    servers = []
    try:
        print(f"lab {lab.tag}: hub (main-region VPC, meshd), ra and rb (regional VPCs), cloud (public address), "
              f"nat (behind NAT)")
        daemons = LabDaemons(lab, Path(tempfile.mkdtemp(prefix="meshlab-"))).start()
        for role in ROLES:
            print(f"  {role:<6} joined: mesh address {daemons.ready[role]['address']}")
        servers = [lab.serve(role, 7000) for role in ROLES]
        for role in ROLES:
            daemons.meshctl("expose", "--port", "7000", "--name", f"svc-{role}", agent=role)
        print("each node: meshctl expose --port 7000 --name svc-<node>\n")
        address: dict[str, str] = {}
        for role in ROLES:
            for _ in range(100):  # bounded: ~20 s
                answers = query(lab, ROLES[0], daemons.ready[ROLES[0]]["dns"], f"svc-{role}.default.svc.cluster.local")
                if answers:
                    address[role] = answers[0]
                    break
                time.sleep(0.2)
        facts = {r: NodeFacts(**{**lab.nodes[r].facts().__dict__, "mesh_address": address[r]}) for r in ROLES}
        print(f"{'from':<6} {'to':<22} {'address':<12} {'path':<16} answer")
        ok = True
        for src in ROLES:
            for dst in ROLES:
                if src == dst:
                    continue
                name = f"svc-{dst}.default.svc.cluster.local"
                got = query(lab, src, daemons.ready[src]["dns"], name)
                result = {"ok": False}
                for _ in range(20):  # tunnels may still be handshaking: bounded retries
                    result = lab.connect(src, [f"{got[0]}:7000"] if got else ["0.0.0.0:1"], timeout=1)[0]
                    if result["ok"]:
                        break
                    time.sleep(0.25)
                kind = select_path(facts[src], facts[dst], facts["hub"], facts["hub"].region).kind
                via = " (via hub)" if kind == "relay" else ""
                answer = result.get("answer", result.get("error", "")).split()[0] if result.get("ok") else "FAILED"
                ok &= bool(result["ok"])
                print(f"{src:<6} svc-{dst:<18} {got[0] if got else '-':<12} {kind + via:<16} {answer}")
        print("\ndemo-lab ok: every node reached every name" if ok else "\ndemo-lab FAILED")
        return 0 if ok else 1
    finally:
        for s in servers:
            s.terminate()
        if daemons:
            daemons.stop()
        lab.down()
        print("lab removed")


if __name__ == "__main__":
    sys.exit(main())
