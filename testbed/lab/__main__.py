"""`python -m testbed.lab up|down|status` (make lab-up / lab-down).

up: build a lab, print its namespaces and node facts, and leave it running.
down: remove every lab on this machine (the ones `up` recorded and any left by a killed test).
"""

from __future__ import annotations

import os
import subprocess
import sys

from testbed.lab.lab import REGISTRY, Lab, LabError, down_all
from testbed.lab.topology import MAIN_REGION


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd not in ("up", "down", "status"):
        print("usage: python -m testbed.lab up|down|status", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("error: the lab needs root (network namespaces)", file=sys.stderr)
        return 1
    try:
        if cmd == "up":
            lab = Lab.create()
            print(f"lab {lab.tag} is up (main region {MAIN_REGION}); remove it with: make lab-down")
            print(f"{'node':<6} {'namespace':<14} {'wireguard':<12} {'mesh address':<14} {'private':<14} public")
            for n in lab.nodes.values():
                s = n.spec
                print(f"{n.role:<6} {n.netns:<14} {n.ifname:<12} {s.mesh_address:<14} {s.private_address or '-':<14} "
                      f"{s.public_address or '-'}")
            print(f"routers: {', '.join(lab.ns[r] for r in ('inet', 'aws', 'natgw'))}")
        elif cmd == "down":
            print(f"removed {down_all()} lab(s)")
        else:
            labs = sorted(p.stem for p in REGISTRY.glob("*.json")) if REGISTRY.exists() else []
            print("labs:", ", ".join(labs) or "none")
            print(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout, end="")
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
