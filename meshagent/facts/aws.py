"""AWS: instance metadata (IMDSv2).

A session token is asked for first (PUT /latest/api/token); every GET carries
it. A metadata service that does not know the token call (IMDSv1 only)
answers 404/405 to it, and then plain GETs are used; a 401 or 403 on the
token means this source is refused, and the next one is asked. The VPC
facts come from the primary interface: its MAC names the directory with
`vpc-id`, `vpc-ipv4-cidr-blocks` and `subnet-id`.
"""

from __future__ import annotations

import ipaddress

from meshagent.facts.base import Fetch, FactsError, text

TOKEN_PATH = "/latest/api/token"
MD = "/latest/meta-data/"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"

#: path under meta-data -> fact name (the VPC ones are under the interface's directory)
PATHS = {"instance-id": "instance_id", "instance-type": "instance_type", "placement/region": "region",
         "placement/availability-zone": "zone", "local-ipv4": "private_address", "public-ipv4": "public_address",
         "instance-life-cycle": "lifecycle"}
INTERFACE_PATHS = {"vpc-id": "vpc_id", "vpc-ipv4-cidr-blocks": "vpc_cidr", "subnet-id": "subnet_id"}
OPTIONAL = {"public-ipv4", "instance-life-cycle"}


def fetch(get: Fetch) -> dict[str, str]:
    status, body = get("PUT", TOKEN_PATH, {TTL_HEADER: "300"})
    if status == 200:
        headers = {TOKEN_HEADER: text(body, "IMDSv2 token", 512)}
    elif status in (404, 405):
        headers = {}  # IMDSv1 only
    else:
        raise FactsError(f"IMDSv2 token request answered {status}")
    raw: dict[str, bytes | None] = {}

    def read(path: str, optional: bool) -> bytes | None:
        st, b = get("GET", MD + path, headers)
        if st == 200:
            return b
        if st == 404 and optional:
            return None
        raise FactsError(f"{MD}{path} answered {st}")

    for path in PATHS:
        raw[path] = read(path, path in OPTIONAL)
    mac = text(read("mac", False) or b"", "mac", 32)
    for path in INTERFACE_PATHS:
        raw[path] = read(f"network/interfaces/macs/{mac}/{path}", False)
    return parse(raw)


def parse(raw: dict[str, bytes | None]) -> dict[str, str]:
    """Facts from the metadata values (None: absent, as public-ipv4 is without a public address)."""
    out: dict[str, str] = {"cloud": "aws"}
    for path, name in {**PATHS, **INTERFACE_PATHS}.items():
        body = raw.get(path)
        if body is None:
            continue
        out[name] = text(body, path, 1024)
    for name in ("private_address", "public_address"):
        if out.get(name):
            out[name] = _ipv4(out[name], name)
    if "vpc_cidr" in out:
        out["vpc_cidr"] = _vpc_cidr(out["vpc_cidr"], out.get("private_address", ""))
    lifecycle = out.get("lifecycle", "")
    if lifecycle and lifecycle not in ("spot", "on-demand", "scheduled", "capacity-block"):
        raise FactsError(f"instance-life-cycle: unknown value {lifecycle!r}")
    zone, region = out.get("zone", ""), out.get("region", "")
    if zone and region and not zone.startswith(region):
        raise FactsError(f"availability zone {zone!r} is not in region {region!r}")
    return out


def _ipv4(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise FactsError(f"{what}: {value!r} is not an IPv4 address") from None


def _vpc_cidr(blocks: str, private: str) -> str:
    """The VPC block that holds the private address (the first block when none does)."""
    nets = []
    for line in blocks.split():
        try:
            nets.append(ipaddress.IPv4Network(line))
        except ValueError:
            raise FactsError(f"vpc-ipv4-cidr-blocks: {line!r} is not a CIDR") from None
    if not nets:
        raise FactsError("vpc-ipv4-cidr-blocks is empty")
    if private:
        for n in nets:
            if ipaddress.IPv4Address(private) in n:
                return str(n)
    return str(nets[0])
