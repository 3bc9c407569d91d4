"""`make demo`: the mesh on loopback, as real processes, in under a screen.

meshd and three agents (alpha, beta, gamma) start; a web server on alpha is
exposed with `meshctl expose --port 8000`, named after its SkyPilot cluster;
gamma's DNS responder resolves qwen-coder.default.svc.cluster.local and the
page is fetched through that address. No root, no cloud account.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time

from rich.console import Console

from testbed.localmesh import LocalMesh, resolve

NAME = "qwen-coder"
FQDN = f"{NAME}.default.svc.cluster.local"


def main() -> int:
    out = Console(highlight=False)
    step = lambda text: out.print(f"[bold cyan]›[/] {text}", soft_wrap=True)  # noqa: E731
    with LocalMesh() as mesh:
        mesh.start_meshd()
        step(f"meshd is up: API {mesh.coordinator} (mTLS), join {mesh.join_address}, state in {mesh.root}/meshd")
        token = mesh.token(uses=3)
        step(f"meshctl token create --uses 3  →  {token[:24]}…")
        facts = {"alpha": ["--cloud", "lambda", "--label", "gpu.model=H100", "--label", "gpu.count=8"]}
        for name in ("alpha", "beta", "gamma"):
            a = mesh.start_agent(name, token, extra=facts.get(name, []))
            step(f"meshagent --token … --name {name}  →  joined, mesh address {a.ready['address']}, DNS {a.ready['dns']}")
        site = mesh.root / "site"
        site.mkdir()
        (site / "index.html").write_text(f"hello from {NAME} on alpha\n")
        alpha_addr = mesh.agents["alpha"].ready["address"]
        mesh.extra.append(subprocess.Popen([sys.executable, "-m", "http.server", "8000", "--bind", alpha_addr,
                                            "--directory", str(site)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, start_new_session=True))
        sky = {"SKYPILOT_CLUSTER_INFO": json.dumps({"cluster_name": NAME})}
        t0 = time.monotonic()
        mesh.meshctl("expose", "--port", "8000", agent="alpha", env=sky)
        step(f"on alpha: meshctl expose --port 8000  →  named {NAME!r} after its SkyPilot cluster")
        answers: list[str] = []
        for _ in range(200):  # bounded: at most ~10 s
            answers = resolve(FQDN, mesh.dns("gamma"))
            if answers:
                break
            time.sleep(0.05)
        if not answers:
            out.print(f"[red]error:[/] {FQDN} did not resolve through gamma's DNS")
            return 1
        ms = (time.monotonic() - t0) * 1000
        step(f"on gamma: {FQDN}  →  {answers[0]}  ({ms:.0f} ms after `meshctl expose` started)")
        page = fetch(answers[0], 8000, FQDN)
        step(f"on gamma: GET http://{FQDN}:8000/  →  {page[0]} {page[1].strip()!r}")
        for what in ("services", "nodes"):
            out.print(f"\n[bold]$ meshctl {what}[/]  (on beta)")
            out.print(mesh.meshctl(what, agent="beta").stdout.rstrip(), soft_wrap=True, markup=False)
        ok = page[0] == 200 and NAME in page[1]
        out.print("\n[bold green]demo ok[/]: a name, resolved and reached across the mesh; everything stopped and removed."
                  if ok else "[red]demo failed[/]", soft_wrap=True)
        return 0 if ok else 1


def fetch(address: str, port: int, host: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(address, port, timeout=5)
    try:
        for _ in range(50):  # the server may still be starting: bounded retries
            try:
                conn.request("GET", "/", headers={"Host": f"{host}:{port}"})
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
                conn.close()
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
