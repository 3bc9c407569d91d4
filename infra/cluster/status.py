"""A cluster's status, derived from what is there, not from what was last written.

Looked at on every call: the network (the main region's VPC and subnets),
the instances of every slot, and meshd itself (a gRPC health check over TLS
on each coordinator's join port, verified against the cluster's CA). The
document adds only what cannot be seen: that a delete is under way, and
why the last operation failed.

With the cluster's admin certificate, meshd's node list says whether the
mesh works, not only whether it runs: agents ready out of expected (every
node meshd knows that has not left, and every running cluster instance,
whose agent should have joined), and each agent's report of its paths
(direct, tunnel, relay) with the peers down on each. An agent unreachable,
an instance whose agent never joined, or a path kind with peers down makes
the cluster degraded, named in the reasons.

    deleting      a delete started and has not finished
    provisioning  something is missing or not yet answering, but it was
                  launched less than BOOT_S ago (first boot installs packages)
    running       network, every slot running, meshd healthy on every coordinator,
                  every agent meshd expects ready and every path kind in use up
    degraded      meshd answers, but something is missing or down (reasons listed)
    failed        meshd answers nowhere and nothing is booting, or the last
                  operation failed and left the cluster incomplete (its error)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.aws import Aws
from infra.cluster import instances
from infra.cluster.spec import ClusterDoc
from infra.state import tag_filters, is_ours
from meshcore.defaults import JOIN_PORT

BOOT_S = 15 * 60
Probe = Callable[[str], bool]  # "host:port" → meshd is serving
NodeList = Callable[[], list[Any]]  # meshd's mesh.v1.Node list (raises when meshd can't be asked)


@dataclass
class Status:
    doc: ClusterDoc
    status: str
    reasons: list[str] = field(default_factory=list)
    coordinators: dict[str, str] = field(default_factory=dict)  # slot → running/healthy/...
    agents: str = "-"  # "ready/expected" from meshd's node list; "-" when it could not be read

    def row(self) -> dict[str, Any]:
        d = self.doc
        regions = ", ".join(d.spec.regions) if d.spec.regions else f"{d.spec.main_region} (+ where offered)"
        return {"id": d.id, "name": d.name, "regions": regions, "profile": d.spec.profile,
                "status": self.status, "agents": self.agents, "reason": "; ".join(self.reasons),
                "version": d.version}


def health_probe(ca_file: Path, timeout_s: float = 2.0) -> Probe:
    """A probe that meshd answers on its join port over TLS checked against the cluster's CA.

    The join port serves Join alone (no health service to anonymous callers), so the probe
    sends an empty Join: meshd's refusal (INVALID_ARGUMENT, the facts are missing) proves a
    live meshd holding this CA; no answer, or a TLS failure, is down."""
    def probe(target: str) -> bool:
        import grpc

        from mesh.v1 import admission_pb2, admission_pb2_grpc

        try:
            creds = grpc.ssl_channel_credentials(ca_file.read_bytes())
        except OSError:
            return False
        with grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "meshd.mesh")]) as ch:
            try:
                admission_pb2_grpc.AdmissionServiceStub(ch).Join(admission_pb2.JoinRequest(), timeout=timeout_s)
            except grpc.RpcError as e:
                return e.code() == grpc.StatusCode.INVALID_ARGUMENT
            return False
    return probe


def _age_s(inst: dict[str, Any], now: dt.datetime) -> float:
    t = inst.get("LaunchTime")
    if isinstance(t, str):
        t = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    return (now - t).total_seconds() if isinstance(t, dt.datetime) else 0.0


def mesh_health(nodes: list[Any], instance_nodes: set[str]) -> tuple[str, list[str], bool]:
    """("ready/expected", reasons, broken) from meshd's node list and the names of the running
    cluster instances' nodes. Expected: every node that has not left, and every such instance.
    Broken: something that worked stopped (an agent unreachable, a path down), which no first
    boot explains; an instance whose agent has not joined yet may still be booting."""
    from meshcore.defaults import NODE_STATE_NAMES
    from mesh.v1 import types_pb2

    live = {n.name: n for n in nodes if n.state != types_pb2.NODE_STATE_LEFT}
    expected = set(live) | instance_nodes
    ready = sorted(n for n in expected if n in live and live[n].state == types_pb2.NODE_STATE_READY)
    reasons = []
    missing = sorted(expected - set(ready))
    if missing:
        said = [f"{n} ({NODE_STATE_NAMES.get(live[n].state, '?')})" if n in live else f"{n} (never joined)"
                for n in missing[:5]]
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        reasons.append(f"agents {len(ready)}/{len(expected)} ready: not {', '.join(said)}{more}")
    down: dict[str, list[str]] = {}
    for n in sorted(ready):
        for k in live[n].path_report.kinds:
            if k.down:
                down.setdefault(k.kind, []).append(f"{n} {k.down}")
    for kind, who in sorted(down.items()):
        reasons.append(f"{kind} paths down: " + ", ".join(who[:5]) + (f" and {len(who) - 5} more" if len(who) > 5 else ""))
    broken = bool(down) or any(n in live for n in missing)
    return f"{len(ready)}/{len(expected)}", reasons, broken


def status(aws: Aws, doc: ClusterDoc, probe: Probe, regions: list[str] | None = None,
           now: dt.datetime | None = None, nodes: NodeList | None = None) -> Status:
    """`regions`: where to look for instances (warm ones may sit wherever their type is offered);
    by default the main region and the spec's regions. `nodes`: meshd's node list (with the
    cluster's admin certificate), for the agents and their paths; without it, those are not judged."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if doc.phase == "deleting":
        return Status(doc, "deleting", [doc.last_error] if doc.last_error else [])
    region, spec = doc.spec.main_region, doc.spec
    reasons: list[str] = []
    vpcs = [v for v in aws.call("ec2", region, "DescribeVpcs", Filters=tag_filters(doc.name)).get("Vpcs", [])
            if is_ours(v, doc.name)]
    if not vpcs:
        reasons.append(f"no network in {region}")
    found: dict[str, dict[str, Any]] = {}
    for r in sorted({region} | set(regions or spec.regions)):
        for inst in instances.find(aws, doc.name, r):
            found.setdefault(instances.tag_of(inst, "mesh:slot"), inst)
    young = any(_age_s(i, now) < BOOT_S for i in found.values())
    coords: dict[str, str] = {}
    healthy = 0
    for slot in instances.coordinator_names(spec):
        inst = found.get(slot)
        state = inst.get("State", {}).get("Name", "?") if inst else "missing"
        if state == "running":
            host = inst.get("PublicIpAddress") or inst.get("PrivateIpAddress", "")
            ok = bool(host) and probe(f"{host}:{JOIN_PORT}")
            healthy += ok
            state = "healthy" if ok else "meshd not answering"
        coords[slot] = state
        if state != "healthy":
            reasons.append(f"{slot}: {state}")
    for t in spec.instance_types:
        count = t.overprovisioned_ondemand_count
        running = sum(1 for i in range(count)
                      if found.get(instances.warm_name(t.name, i), {}).get("State", {}).get("Name") == "running")
        if running < count:
            reasons.append(f"warm {t.name}: {running}/{count} running")
    agents, broken = "-", False
    if healthy and nodes is not None:
        running = {slot for slot, inst in found.items() if slot and inst.get("State", {}).get("Name") == "running"}
        try:
            listed = nodes()
        except Exception as e:  # noqa: BLE001 - any failure to ask is said, never fatal to the listing
            reasons.append(f"cannot read meshd's node list: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
        else:
            agents, more, broken = mesh_health(listed, running)
            reasons += more
    if not reasons:
        return Status(doc, "running", [], coords, agents)
    if doc.last_error:
        return Status(doc, "failed", [doc.last_error] + reasons, coords, agents)
    if not broken and (young or (not found and _doc_age_s(doc, now) < BOOT_S)):
        return Status(doc, "provisioning", reasons, coords, agents)
    if healthy == 0:
        return Status(doc, "failed", reasons, coords, agents)
    return Status(doc, "degraded", reasons, coords, agents)


def _doc_age_s(doc: ClusterDoc, now: dt.datetime) -> float:
    try:
        created = dt.datetime.strptime(doc.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return float("inf")
    return (now - created).total_seconds()
