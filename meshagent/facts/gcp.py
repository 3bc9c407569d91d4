"""GCP: the metadata server (`Metadata-Flavor: Google`).

One recursive read of `computeMetadata/v1/instance/` gives zone, machine type,
network interfaces (IP and the access config's external IP) and scheduling;
the project comes from `project/project-id`. The server answers only when the
request carries the flavor header, and marks its answers with it: an answer
without it is not GCP's.
"""

from __future__ import annotations

import ipaddress
import json

from meshagent.facts.base import Fetch, FactsError, text

HEADERS = {"Metadata-Flavor": "Google"}
INSTANCE_PATH = "/computeMetadata/v1/instance/?recursive=true"
PROJECT_PATH = "/computeMetadata/v1/project/project-id"


def fetch(get: Fetch) -> dict[str, str]:
    status, body = get("GET", INSTANCE_PATH, HEADERS)
    if status != 200:
        raise FactsError(f"GCP metadata answered {status}")
    pstatus, pbody = get("GET", PROJECT_PATH, HEADERS)
    return parse(body, pbody if pstatus == 200 else None)


def parse(instance: bytes, project: bytes | None = None) -> dict[str, str]:
    try:
        doc = json.loads(instance)
    except (ValueError, UnicodeDecodeError):
        raise FactsError("GCP instance metadata is not JSON") from None
    if not isinstance(doc, dict):
        raise FactsError("GCP instance metadata is not a JSON object")
    out = {"cloud": "gcp"}
    zone = _last(doc.get("zone"), "zone")
    if zone:
        out["zone"] = zone
        out["region"] = zone.rsplit("-", 1)[0]
    mtype = _last(doc.get("machineType"), "machineType")
    if mtype:
        out["instance_type"] = mtype
    if doc.get("id") is not None:
        out["instance_id"] = str(doc["id"])[:64]
    nics = doc.get("networkInterfaces")
    if isinstance(nics, list) and nics and isinstance(nics[0], dict):
        nic = nics[0]
        out["private_address"] = _ip(nic.get("ip"), "networkInterfaces[0].ip")
        network = _last(nic.get("network"), "network")
        if network:
            out["vpc_id"] = network
        for ac in nic.get("accessConfigs") or []:
            if isinstance(ac, dict) and ac.get("externalIp"):
                out["public_address"] = _ip(ac["externalIp"], "externalIp")
                break
    sched = doc.get("scheduling")
    if isinstance(sched, dict):
        spot = str(sched.get("provisioningModel", "")).upper() == "SPOT" or \
            str(sched.get("preemptible", "")).upper() == "TRUE"
        out["lifecycle"] = "spot" if spot else "on-demand"
    if project is not None:
        out["project"] = text(project, "project-id", 128)
    return out


def _last(value, what: str) -> str:
    """'projects/123/zones/us-central1-a' -> 'us-central1-a'."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 512:
        raise FactsError(f"GCP {what} is not a short string")
    return value.rsplit("/", 1)[-1]


def _ip(value, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise FactsError(f"GCP {what}: {value!r} is not an IPv4 address") from None
