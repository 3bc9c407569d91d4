"""What an idle meshagent process holds: the modules it imported, and the metrics it serves.

The agent runs as a real process against a real meshd; a probe thread started
before meshagent's main lists sys.modules when the test asks (a file appears),
so the list is the running agent's, after start-up, not an import of a module.
"""

from __future__ import annotations

import sys
import time

from testbed.etcd_cluster import free_port
from testbed.localmesh import samples, scrape

PROBE = """
import os, sys, threading, time
from pathlib import Path
ask, out = Path(os.environ["MESH_PROBE_ASK"]), Path(os.environ["MESH_PROBE_OUT"])
def answer():
    for _ in range(1200):  # bounded: 60 s
        if ask.exists():
            out.write_text("\\n".join(sorted(sys.modules)))
            return
        time.sleep(0.05)
threading.Thread(target=answer, daemon=True).start()
from meshagent.main import main
sys.exit(main(sys.argv[1:]))
"""

#: libraries of meshctl, infra and the sky templates that an agent never needs
NEVER = {"boto3", "botocore", "kubernetes", "rich", "typer", "yaml"}


def idle_modules(local_mesh, name: str, extra: list[str]) -> set[str]:
    ask, out = local_mesh.root / f"{name}.ask", local_mesh.root / f"{name}.modules"
    local_mesh.env.update(MESH_PROBE_ASK=str(ask), MESH_PROBE_OUT=str(out))
    local_mesh.start_agent(name, local_mesh.token(), extra=extra, program=[sys.executable, "-c", PROBE])
    time.sleep(1.0)  # idle: joined, watching, gossiping
    ask.touch()
    for _ in range(200):  # bounded: 10 s
        if out.exists() and out.read_text():
            break
        time.sleep(0.05)
    return set(out.read_text().split())


def test_an_idle_agent_imports_no_cloud_cli_or_metrics_library(local_mesh):
    mods = idle_modules(local_mesh, "idle", [])
    assert {"meshagent.agent", "meshagent.dns.server", "grpc", "meshcore.gossip.swim"} <= mods  # the real agent
    top = {m.split(".")[0] for m in mods}
    assert not top & NEVER, f"an idle agent imported {sorted(top & NEVER)}"
    # metrics off (--metrics ''): its counters are kept without prometheus_client
    assert "prometheus_client" not in top


def test_an_agent_serving_metrics_exports_its_own_values(local_mesh):
    port = free_port()
    mods = idle_modules(local_mesh, "scraped", ["--metrics", f"127.0.0.1:{port}"])
    assert "prometheus_client" in mods
    body = scrape(port)
    assert samples(body, "mesh_agent_meshd_connected") == [({}, 1.0)]
    assert "# TYPE mesh_agent_meshd_disconnects_total counter" in body
    assert "# TYPE mesh_agent_loop_failures_total counter" in body
    assert samples(body, "mesh_agent_healthy") == [({}, 1.0)] and "mesh_agent_catalog_revision" in body
    assert samples(body, "mesh_gossip_members", state="alive")
    assert samples(body, "mesh_build_info", component="meshagent")
