"""A profile switch on loopback, with real processes: meshd on SQLite → a three-member etcd → SQLite again.

What `meshctl cluster edit` does on AWS between the old and the new
coordinators (infra/cluster/switch.py), on one machine: stop the old meshd
(writes stop), `meshd store copy` into the new store with a client certificate
made by `meshctl install store-certs` from the store CA (etcd speaks TLS and
wants client certificates, as on the replicas), start meshd on it at the same
address, while real
meshagents stay connected throughout (they only see meshd go away and come
back). Each hop is timed from stopping the old meshd until every agent has
applied a change made through the new one; nodes, tokens and agent logs are
read before and after, so the caller can check that no node joined again.

Used by tests/e2e/test_store_switch.py and `python -m bench ha`.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed.etcd_cluster import EtcdCluster
from testbed.localmesh import BIN, LocalMesh, samples, scrape

AGENTS = ("alpha", "beta", "gamma")


@dataclass
class Hop:
    to: str  # the store spec meshd serves from after the hop
    seconds: float
    joins: float  # successful Join calls counted by the new meshd
    copy_output: str
    copied_s: float = 0.0  # from the stop until the copy finished
    serving_s: float = 0.0  # ... until the new meshd served


@dataclass
class SwitchRun:
    before: dict  # node name -> (id, mesh address)
    after: list[dict] = field(default_factory=list)  # the same, after each hop
    tokens_before: list[dict] = field(default_factory=list)
    tokens_after: list[list[dict]] = field(default_factory=list)
    hops: list[Hop] = field(default_factory=list)
    agent_joins: dict[str, int] = field(default_factory=dict)  # "joined the mesh" lines per agent log
    agent_pids_unchanged: bool = False
    store_tokens: list[str] = field(default_factory=list)  # the store identity after each hop (id/epoch)


def nodes(mesh: LocalMesh) -> dict[str, tuple[str, str]]:
    raw = json.loads(mesh.meshctl("nodes", "-o", "json").stdout)
    return {n["name"]: (n["id"], n.get("mesh_address", "")) for n in raw.get("nodes", [])}


def tokens(mesh: LocalMesh) -> list[dict]:
    raw = json.loads(mesh.meshctl("token", "list", "-o", "json").stdout)
    return sorted(({k: t.get(k) for k in ("id", "uses", "max_uses", "revoked")} for t in raw.get("tokens", [])),
                  key=lambda t: t["id"])


def joins_ok(metrics_port: str) -> float:
    """mesh_joins_total{result="ok"} of a meshd (0 when it never admitted one)."""
    return sum(v for _, v in samples(scrape(metrics_port), "mesh_joins_total", result="ok"))


def store_copy(source: str, target: str, state_dir: Path, store_ca: Path, work: Path) -> str:
    """As the switch's copy script: a client certificate from the store CA, then `meshd store copy`."""
    r = subprocess.run([str(BIN / "meshctl"), "install", "store-certs", "--ca-key", str(store_ca / "ca.key"),
                        "--ca-cert", str(store_ca / "ca.crt"), "--name", "switch", "--address", "127.0.0.1",
                        "--etcd-dir", str(work / "etcd"), "--meshd-dir", str(work / "meshd")],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"meshctl install store-certs failed: {r.stderr.strip()}")
    m = work / "meshd"
    r = subprocess.run([str(BIN / "meshd"), "store", "--state-dir", str(state_dir), "--etcd-ca", str(m / "ca.crt"),
                        "--etcd-cert", str(m / "client.crt"), "--etcd-key", str(m / "client.key"), "copy",
                        "--from", source, "--to", target], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"meshd store copy {source} → {target} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def visible(mesh: LocalMesh, agent: str, service: str) -> bool:
    r = mesh.meshctl("services", "-o", "json", agent=agent, check=False)
    return r.returncode == 0 and any(s.get("name") == service for s in json.loads(r.stdout or "{}").get("services", []))


def wait_all_see(mesh: LocalMesh, service: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(mesh.agents)
    while pending and time.monotonic() < deadline:
        pending = {a for a in pending if not visible(mesh, a, service)}
        if pending:
            time.sleep(0.1)
    if pending:
        raise RuntimeError(f"{sorted(pending)} did not see {service} within {timeout}s")


def hop(mesh: LocalMesh, ports: dict[str, str], source: str, target: str, n: int, etcd: EtcdCluster) -> Hop:
    state = mesh.root / "meshd"
    t0 = time.monotonic()
    mesh.stop(mesh.meshd)  # writes stop: nothing changes in the source from here on
    out = store_copy(source, target, state, etcd.tls_dir, mesh.root / f"switch-{n}")
    copied = time.monotonic() - t0
    ca, cert, key = etcd.client_files  # meshd's own, as a replica has them
    tls = ("--etcd-ca", ca, "--etcd-cert", cert, "--etcd-key", key) if target.startswith("etcds://") else ()
    mesh.start_meshd(f"127.0.0.1:{ports['listen']}", f"127.0.0.1:{ports['join']}",
                     extra=("--store", target, "--metrics", "127.0.0.1:0", *tls))
    serving = time.monotonic() - t0
    # a change made through the new meshd, seen by every agent: all of them follow the new store
    agent = sorted(mesh.agents)[n % len(mesh.agents)]
    deadline = time.monotonic() + 60
    while mesh.meshctl("expose", "--port", str(9100 + n), "--name", f"after-hop-{n}", agent=agent,
                       check=False).returncode != 0:  # until the agent has reconnected (its backoff)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{agent} could not expose through the new meshd within 60 s")
        time.sleep(0.1)
    wait_all_see(mesh, f"after-hop-{n}")
    seconds = time.monotonic() - t0
    return Hop(target, seconds, joins_ok(mesh.meshd.ready["metrics"]), out, copied, serving)


def store_token(state_dir: Path) -> str:
    data = json.loads((state_dir / "store.json").read_text())
    return f"{data['id']}/{data['epoch']}"


def run(root: Path, agents: tuple[str, ...] = AGENTS) -> SwitchRun:
    """SQLite → etcd (3 members) → SQLite with `agents` connected; everything stopped on return."""
    root.mkdir(parents=True, exist_ok=True)
    mesh = LocalMesh(root / "mesh", lease_ttl_s=5, grace_s=30)
    mesh.root.mkdir()
    etcd = EtcdCluster(3, root / "etcd", heartbeat_ms=50, election_ms=300, tls=True)
    try:
        mesh.start_meshd(extra=("--metrics", "127.0.0.1:0"))
        ports = dict(mesh.meshd.ready)
        token = mesh.token(uses=len(agents))
        spare = json.loads(mesh.meshctl("token", "create", "-o", "json").stdout)["token"]["id"]
        mesh.meshctl("token", "revoke", spare)  # a revocation must move with the store too
        for a in agents:
            mesh.start_agent(a, token)
        mesh.meshctl("expose", "--port", "9000", "--name", "before", agent=agents[0])
        wait_all_see(mesh, "before")
        pids = {a: p.popen.pid for a, p in mesh.agents.items()}
        run = SwitchRun(before=nodes(mesh), tokens_before=tokens(mesh))
        etcd.start()
        sqlite = f"sqlite://{mesh.root / 'meshd' / 'state.db'}"
        for n, (source, target) in enumerate(((sqlite, etcd.url), (etcd.url, sqlite))):
            run.hops.append(hop(mesh, ports, source, target, n, etcd))
            run.after.append(nodes(mesh))
            run.tokens_after.append(tokens(mesh))
            run.store_tokens.append(store_token(mesh.root / "meshd"))
        run.agent_pids_unchanged = all(mesh.agents[a].popen.poll() is None and mesh.agents[a].popen.pid == pid
                                       for a, pid in pids.items())
        run.agent_joins = {a: mesh.agents[a].log.read_text().count("joined the mesh as") for a in agents}
        return run
    finally:
        mesh.close()
        etcd.stop()
