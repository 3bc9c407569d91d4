"""Azure: the Instance Metadata Service (`Metadata: true`, api-version pinned)."""

from __future__ import annotations

import ipaddress
import json

from meshagent.facts.base import Fetch, FactsError

API_VERSION = "2021-02-01"
PATH = f"/metadata/instance?api-version={API_VERSION}"
HEADERS = {"Metadata": "true"}


def fetch(get: Fetch) -> dict[str, str]:
    status, body = get("GET", PATH, HEADERS)
    if status != 200:
        raise FactsError(f"Azure IMDS answered {status}")
    return parse(body)


def parse(body: bytes) -> dict[str, str]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FactsError("Azure instance metadata is not JSON") from None
    compute = doc.get("compute") if isinstance(doc, dict) else None
    if not isinstance(compute, dict):
        raise FactsError("Azure instance metadata has no compute object")
    out = {"cloud": "azure"}
    for key, name in (("location", "region"), ("vmSize", "instance_type"), ("vmId", "instance_id")):
        v = compute.get(key)
        if isinstance(v, str) and v and len(v) <= 128:
            out[name] = v
    if isinstance(compute.get("zone"), str) and compute["zone"]:
        out["zone"] = f"{out.get('region', '')}-{compute['zone']}"[:128]
    prio = compute.get("priority")
    if isinstance(prio, str):
        out["lifecycle"] = "spot" if prio.lower() == "spot" else "on-demand"
    try:
        ip = doc["network"]["interface"][0]["ipv4"]["ipAddress"][0]
    except (KeyError, IndexError, TypeError):
        ip = {}
    if isinstance(ip, dict):
        for key, name in (("privateIpAddress", "private_address"), ("publicIpAddress", "public_address")):
            if ip.get(key):
                try:
                    out[name] = str(ipaddress.IPv4Address(ip[key]))
                except (ValueError, TypeError):
                    raise FactsError(f"Azure {key}: {ip[key]!r} is not an IPv4 address") from None
    return out
