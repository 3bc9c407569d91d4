"""A cluster's status, derived from what is there, not from what was last written.

Looked at on every call: the network (the main region's VPC and subnets),
the instances of every slot, and meshd itself (a gRPC health check over TLS
on each coordinator's join port, verified against the cluster's CA). The
document adds only what cannot be seen: that a delete is under way, and
why the last operation failed.

    deleting      a delete started and has not finished
    provisioning  something is missing or not yet answering, but it was
                  launched less than BOOT_S ago (first boot installs packages)
    running       network, every slot running, meshd healthy on every coordinator
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


@dataclass
class Status:
    doc: ClusterDoc
    status: str
    reasons: list[str] = field(default_factory=list)
    coordinators: dict[str, str] = field(default_factory=dict)  # slot → running/healthy/...

    def row(self) -> dict[str, Any]:
        d = self.doc
        regions = ", ".join(d.spec.regions) if d.spec.regions else f"{d.spec.main_region} (+ where offered)"
        return {"id": d.id, "name": d.name, "regions": regions, "profile": d.spec.profile,
                "status": self.status, "reason": "; ".join(self.reasons), "version": d.version}


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


def status(aws: Aws, doc: ClusterDoc, probe: Probe, regions: list[str] | None = None,
           now: dt.datetime | None = None) -> Status:
    """`regions`: where to look for instances (warm ones may sit wherever their type is offered);
    by default the main region and the spec's regions."""
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
    if not reasons:
        return Status(doc, "running", [], coords)
    if doc.last_error:
        return Status(doc, "failed", [doc.last_error] + reasons, coords)
    if young or (not found and _doc_age_s(doc, now) < BOOT_S):
        return Status(doc, "provisioning", reasons, coords)
    if healthy == 0:
        return Status(doc, "failed", reasons, coords)
    return Status(doc, "degraded", reasons, coords)


def _doc_age_s(doc: ClusterDoc, now: dt.datetime) -> float:
    try:
        created = dt.datetime.strptime(doc.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return float("inf")
    return (now - created).total_seconds()
