"""Facts: what the agent learns about the machine it runs on.

Nothing here is typed by a user. At start (and again at each renewal, for
the facts that can change: public address, lifecycle) the agent asks, in
parallel and each within a short bounded time:

- AWS's instance metadata (IMDSv2, token first): instance id and type, region
  and zone, private and public IPv4, the primary interface's VPC id, VPC CIDR
  blocks and subnet, and the instance life cycle (spot or on-demand);
- GCP's metadata server (`Metadata-Flavor: Google`): project, zone, machine
  type, network IP, the access config's external IP, spot/preemptible;
- Azure's IMDS (`Metadata: true`, api-version pinned): location, zone,
  vmSize, private and public IP, Spot priority;
- elsewhere, the address of the interface that holds the default route;
- the GPUs, through NVML (`nvidia-ml-py`), else `nvidia-smi`.

The first cloud source that answers wins (they share 169.254.169.254, and
each answers only its own dialect). Each source is a pure parser (text in,
facts out; every malformed input is a `FactsError`) plus a thin fetcher, so
the parsers are tested on bytes and fuzzed, and the fetchers against local
doubles. Every flag the user gives overrides the fact of the same name, and
`sources` says where each fact came from ("aws-imds", "gcp-metadata",
"azure-imds", "default-route", "nvml", "nvidia-smi", "flag").
"""

from __future__ import annotations

import ipaddress
import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

from meshagent.facts.base import FactsError, Fetch, http_fetcher
from meshagent.facts.gpu import GpuFacts, discover_gpus

log = logging.getLogger("meshagent.facts")

#: The link-local address every cloud serves its metadata on.
METADATA_ENDPOINT = "http://169.254.169.254"

#: Facts a flag can override, by flag name (meshagent --<name with dashes>).
OVERRIDABLE = ("cloud", "region", "zone", "vpc_id", "vpc_cidr", "private_address", "public_address",
               "instance_type", "lifecycle")


@dataclass(frozen=True)
class Facts:
    cloud: str = ""
    region: str = ""
    zone: str = ""
    instance_id: str = ""
    #: the GCP project ("" elsewhere)
    project: str = ""
    instance_type: str = ""
    #: "spot" or "on-demand" ("" when unknown)
    lifecycle: str = ""
    vpc_id: str = ""
    vpc_cidr: str = ""
    subnet_id: str = ""
    private_address: str = ""
    public_address: str = ""
    gpus: GpuFacts | None = None
    #: where meshd sees this node's calls come from ("ip:port"), and whether that means NAT ("yes"/"no")
    observed_address: str = ""
    nat: str = ""
    #: fact name -> where it came from
    sources: dict[str, str] = field(default_factory=dict)

    def labels(self) -> dict[str, str]:
        """Node labels derived from the facts (Kubernetes' well-known keys where one exists)."""
        out: dict[str, str] = {}
        if self.region:
            out["topology.kubernetes.io/region"] = self.region
        if self.zone:
            out["topology.kubernetes.io/zone"] = self.zone
        if self.instance_type:
            out["node.kubernetes.io/instance-type"] = self.instance_type
        if self.lifecycle:
            out["mesh.lifecycle"] = self.lifecycle
        if self.gpus is not None:
            out.update(self.gpus.labels())
        return out

    def with_overrides(self, **flags: str) -> Facts:
        """These facts with every non-empty flag put in place of the discovered value."""
        given = {k: v for k, v in flags.items() if k in OVERRIDABLE and v}
        if not given:
            return self
        sources = dict(self.sources)
        sources.update({k: "flag" for k in given})
        return replace(self, **given, sources=sources)


def observed(facts: Facts, addr: str) -> Facts:
    """The facts with meshd's view of this node: behind NAT when meshd sees an address the node doesn't have."""
    if not addr:
        return facts
    host = addr.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return facts
    own = {facts.private_address, facts.public_address}
    nat = "no" if (host in own or ip.is_loopback) else "yes"
    return replace(facts, observed_address=addr, nat=nat,
                   sources={**facts.sources, "observed_address": "meshd", "nat": "meshd"})


def _from(source: str, found: dict[str, str]) -> Facts:
    found = {k: v for k, v in found.items() if v}
    return Facts(**found, sources={k: source for k in found})


def discover(endpoint: str = METADATA_ENDPOINT, timeout_s: float = 1.0, *, fetch: Fetch | None = None,
             gpus: bool = True, nvidia_smi: str = "nvidia-smi") -> Facts:
    """Ask every source within about `timeout_s` (each request is bounded) and merge what answered.

    `endpoint` "" skips the cloud metadata sources (the loopback demo, tests).
    """
    from meshagent.facts import aws, azure, gcp, local

    started = time.monotonic()
    facts = Facts()
    if endpoint:
        get = fetch or http_fetcher(endpoint, timeout_s)
        probes = (("aws-imds", aws.fetch), ("gcp-metadata", gcp.fetch), ("azure-imds", azure.fetch))
        # Each request is bounded by `timeout_s`; the whole look is bounded too, and a
        # source still talking after it is left behind (its thread ends on its own).
        pool = ThreadPoolExecutor(len(probes), thread_name_prefix="facts")
        futures = {name: pool.submit(fn, get) for name, fn in probes}
        wait(futures.values(), timeout=timeout_s * 4)
        pool.shutdown(wait=False, cancel_futures=True)
        for name, fut in futures.items():
            if not fut.done():
                log.info("facts: %s did not answer within %.1f s", name, timeout_s * 4)
                continue
            try:
                found = fut.result()
            except FactsError as e:
                log.debug("facts: %s: %s", name, e)
                continue
            facts = _from(name, found)
            break
    if not facts.private_address and not facts.cloud:
        try:
            addr = local.default_route_address()
        except FactsError as e:
            log.info("facts: no default route address: %s", e)
        else:
            # Many GPU clouds put the VM's public address on its interface: that is an endpoint.
            kind = "public_address" if ipaddress.ip_address(addr).is_global else "private_address"
            if not getattr(facts, kind):
                facts = replace(facts, **{kind: addr}, sources={**facts.sources, kind: "default-route"})
    if gpus:
        found_gpus, source = discover_gpus(nvidia_smi=nvidia_smi)
        if found_gpus is not None:
            facts = replace(facts, gpus=found_gpus, sources={**facts.sources, "gpus": source})
    used = sorted(set(facts.sources.values()))
    log.info("facts from %s in %.0f ms: %s", ", ".join(used) or "nowhere",
             (time.monotonic() - started) * 1000, describe(facts))
    return facts


def describe(facts: Facts) -> str:
    keys = ("cloud", "region", "zone", "instance_type", "lifecycle", "vpc_id", "vpc_cidr",
            "private_address", "public_address")
    parts = [f"{k}={getattr(facts, k)}" for k in keys if getattr(facts, k)]
    if facts.gpus is not None:
        parts.append(f"gpus={facts.gpus.count}x{facts.gpus.model}")
    return " ".join(parts) or "-"


__all__ = ["Facts", "FactsError", "GpuFacts", "METADATA_ENDPOINT", "describe", "discover", "observed"]
