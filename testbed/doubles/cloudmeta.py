"""Doubles of GCP's metadata server and Azure's IMDS, for facts discovery.

Written from the vendors' documentation:
- GCP ("About VM metadata"): requests must carry `Metadata-Flavor: Google`
  (else 403) and must not carry `X-Forwarded-For` (403); answers carry
  `Metadata-Flavor: Google`. `/computeMetadata/v1/instance/?recursive=true`
  is the instance as JSON (zone, machineType, networkInterfaces with
  accessConfigs[].externalIp, scheduling); `/computeMetadata/v1/project/project-id`
  is text. Anything else is 404.
- Azure ("Azure Instance Metadata Service"): `Metadata: true` is required
  (else 400), `api-version` is required (else 400); `/metadata/instance` is the
  instance document (compute.location/vmSize/priority/zone, network.interface[].ipv4).

`malformed = True` makes the main document invalid JSON (a broken proxy).
"""

from __future__ import annotations

import json

from testbed.doubles.httpdouble import HTTPDouble, Reply, Request


class GcpMetadataDouble(HTTPDouble):
    def __init__(self, *, project: str = "ml-project", zone: str = "us-central1-a",
                 machine_type: str = "a2-highgpu-1g", ip: str = "10.128.0.2", external_ip: str = "",
                 network: str = "default", spot: bool = False, instance_id: int = 4242424242) -> None:
        super().__init__()
        self.project, self.malformed = project, False
        self.instance = {
            "id": instance_id, "zone": f"projects/123456/zones/{zone}",
            "machineType": f"projects/123456/machineTypes/{machine_type}",
            "networkInterfaces": [{"ip": ip, "network": f"projects/123456/networks/{network}",
                                   "accessConfigs": [{"externalIp": external_ip, "type": "ONE_TO_ONE_NAT"}]
                                   if external_ip else []}],
            "scheduling": {"preemptible": "FALSE", "provisioningModel": "SPOT" if spot else "STANDARD"},
        }

    def route(self, req: Request) -> Reply:
        if req.headers.get("x-forwarded-for") or req.headers.get("metadata-flavor") != "Google":
            return Reply(403, b"", {"Content-Type": "text/html"})
        flavor = {"Metadata-Flavor": "Google"}
        if req.method != "GET":
            return Reply(405, b"", flavor)
        if req.path == "/computeMetadata/v1/instance/" and req.query.get("recursive") == "true":
            body = b"{not json" if self.malformed else json.dumps(self.instance).encode()
            return Reply(200, body, {**flavor, "Content-Type": "application/json"})
        if req.path == "/computeMetadata/v1/project/project-id":
            return Reply(200, self.project.encode(), {**flavor, "Content-Type": "application/text"})
        return Reply(404, b"", flavor)


class AzureImdsDouble(HTTPDouble):
    def __init__(self, *, location: str = "eastus", vm_size: str = "Standard_NC24ads_A100_v4",
                 private_ip: str = "10.0.0.4", public_ip: str = "", spot: bool = False, zone: str = "1") -> None:
        super().__init__()
        self.malformed = False
        self.doc = {
            "compute": {"location": location, "vmSize": vm_size, "priority": "Spot" if spot else "Regular",
                        "zone": zone, "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6"},
            "network": {"interface": [{"ipv4": {"ipAddress": [{"privateIpAddress": private_ip,
                                                               "publicIpAddress": public_ip}],
                                                "subnet": [{"address": "10.0.0.0", "prefix": "24"}]}}]},
        }

    def route(self, req: Request) -> Reply:
        if req.headers.get("metadata") != "true":
            return Reply(400, json.dumps({"error": "Bad request. Required metadata header not specified"}).encode(),
                         {"Content-Type": "application/json"})
        if "api-version" not in req.query:
            return Reply(400, json.dumps({"error": "Bad request. api-version was not specified in the request"}
                                         ).encode(), {"Content-Type": "application/json"})
        if req.path == "/metadata/instance":
            body = b"{not json" if self.malformed else json.dumps(self.doc).encode()
            return Reply(200, body, {"Content-Type": "application/json"})
        return Reply(404, b"", {"Content-Type": "application/json"})
