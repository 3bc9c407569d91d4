"""Serve a cloud's instance metadata double at an address, for a lab VM.

    python -m testbed.doubles.metadata_server aws '{"meta": {...}, "lifecycle": "on-demand"}' 169.254.169.254:80
    python -m testbed.doubles.metadata_server gcp '{"ip": "...", "external_ip": "..."}' 169.254.169.254:80

Prints "ready" once listening, then serves until killed. The lab runs one in
each VM namespace that has a cloud, on the link-local address every cloud uses.
"""

from __future__ import annotations

import json
import sys
import threading

from testbed.doubles.cloudmeta import AzureImdsDouble, GcpMetadataDouble
from testbed.doubles.imds import ImdsDouble


def make(cloud: str, spec: dict):
    if cloud == "aws":
        double = ImdsDouble(lifecycle=spec.get("lifecycle", "on-demand"), meta=spec["meta"])
        if spec.get("notice"):  # a spot interruption notice already posted: {"action": ..., "time": ...}
            double.post_notice(spec["notice"]["action"], spec["notice"]["time"])
        return double
    if cloud == "gcp":
        return GcpMetadataDouble(**spec)
    if cloud == "azure":
        return AzureImdsDouble(**spec)
    raise SystemExit(f"unknown cloud {cloud!r}: aws, gcp or azure")


def main(argv: list[str]) -> None:
    cloud, spec, listen = argv
    host, port = listen.rsplit(":", 1)
    double = make(cloud, json.loads(spec))
    double.bind = (host, int(port))
    double.start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
