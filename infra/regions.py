"""Which regions get a VPC.

A region is selected when it is enabled in the account and offers any of the
chosen instance types (EC2 instance type offerings), or when it is the main
region; excluded regions (LMRun's ROGUE_REGIONS: GPUs, but not yet every API
the network needs) never are. Opt-in regions that the account has not enabled
are shown with their status and never touched unless listed in
`opt_in_regions`: then `enable_requested` asks AWS to enable them (an
account-wide change, so only on request), and they are used by the first
apply after AWS reports them enabled.

The instance types' vCPU counts come along, since quotas are counted in vCPUs.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from infra.aws import Aws
from infra.config import InfraConfig
from meshcore.errors import ConfigError, FailedPrecondition

# Regions are listed and instance types described from here: it exists in
# every commercial account, unlike a main region that may be mistyped.
DISCOVERY_REGION = "us-east-1"
ENABLED = ("opt-in-not-required", "opted-in")


@dataclass(frozen=True)
class RegionInfo:
    name: str
    opt_in_status: str
    offered: tuple[str, ...]
    selected: bool
    reason: str


@dataclass(frozen=True)
class Selection:
    main_region: str
    regions: tuple[RegionInfo, ...]
    vcpus: dict[str, int]
    enabled: tuple[str, ...]

    @property
    def selected(self) -> tuple[str, ...]:
        """Main region first, then the others by name."""
        rest = sorted(r.name for r in self.regions if r.selected and r.name != self.main_region)
        return (self.main_region, *rest)

    def info(self, region: str) -> RegionInfo:
        return next(r for r in self.regions if r.name == region)


def partition(region: str) -> str:
    """AWS partition of a region: credentials of one never work in another."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def list_regions(aws: Aws) -> dict[str, str]:
    """Every region of the commercial partition AWS lists for this account, with its opt-in status."""
    out = aws.call("ec2", DISCOVERY_REGION, "DescribeRegions", AllRegions=True)
    return {r["RegionName"]: r.get("OptInStatus", "opt-in-not-required") for r in out.get("Regions", [])
            if partition(r["RegionName"]) == partition(DISCOVERY_REGION)}


def offerings(aws: Aws, regions: list[str], types: tuple[str, ...], parallel: int) -> dict[str, tuple[str, ...]]:
    """region → the chosen types offered there (one call per region, in parallel)."""

    def one(region: str) -> tuple[str, tuple[str, ...]]:
        items = aws.paginate("ec2", region, "DescribeInstanceTypeOfferings", "InstanceTypeOfferings",
                             LocationType="region",
                             Filters=[{"Name": "instance-type", "Values": list(types)}])
        return region, tuple(sorted({i["InstanceType"] for i in items}))

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return dict(pool.map(one, regions))


def describe_vcpus(aws: Aws, types_by_region: dict[str, list[str]]) -> dict[str, int]:
    vcpus: dict[str, int] = {}
    for region, types in sorted(types_by_region.items()):
        out = aws.call("ec2", region, "DescribeInstanceTypes", InstanceTypes=sorted(types))
        for t in out.get("InstanceTypes", []):
            vcpus[t["InstanceType"]] = int(t["VCpuInfo"]["DefaultVCpus"])
    return vcpus


def select_regions(cfg: InfraConfig, aws: Aws) -> Selection:
    """Decide the regions for `cfg`. Raises ConfigError for an unknown main region or instance type."""
    statuses = list_regions(aws)
    known = sorted(statuses)
    if cfg.main_region not in statuses:
        raise ConfigError(f"unknown main region {cfg.main_region!r}: not an AWS region of this account "
                          f"(known: {', '.join(known)})")
    if statuses[cfg.main_region] not in ENABLED:
        raise FailedPrecondition(
            f"main region {cfg.main_region!r} is not enabled in this account ({statuses[cfg.main_region]}): "
            f"enable it with `aws account enable-region --region-name {cfg.main_region}` first")
    for key in ("opt_in_regions", "only_regions"):
        for r in getattr(cfg, key):
            if r not in statuses:
                raise ConfigError(f"unknown region {r!r} in {key}: not an AWS region of this account")
    enabled = [r for r in known if statuses[r] in ENABLED]
    offered = offerings(aws, enabled, cfg.instance_types, cfg.max_parallel_regions)
    first_offered: dict[str, list[str]] = {}
    for t in cfg.instance_types:
        where = [r for r in enabled if t in offered[r]]
        if not where:
            raise ConfigError(f"unknown instance type {t!r}: offered in no enabled region "
                              "(DescribeInstanceTypeOfferings); check the spelling, e.g. 'g6.xlarge'")
        home = cfg.main_region if cfg.main_region in where else where[0]
        first_offered.setdefault(home, []).append(t)
    vcpus = describe_vcpus(aws, first_offered)
    infos = []
    for r in known:
        status = statuses[r]
        types = offered.get(r, ())
        if r == cfg.main_region:
            selected, reason = True, "main region"
        elif r in cfg.excluded_regions:
            selected, reason = False, "excluded (excluded_regions)"
        elif cfg.only_regions and r not in cfg.only_regions:
            selected, reason = False, "not listed (only_regions)"
        elif status not in ENABLED:
            selected = False
            if r in cfg.opt_in_regions:
                reason = f"{status}: listed in opt_in_regions, so apply asks AWS to enable it"
            else:
                reason = f"{status} (offerings unknown until enabled): enable it and list it in opt_in_regions"
        elif types:
            selected, reason = True, "offers " + ", ".join(types)
        else:
            selected, reason = False, "offers none of the instance types"
        infos.append(RegionInfo(r, status, types, selected, reason))
    return Selection(cfg.main_region, tuple(infos), vcpus, tuple(enabled))


def instance_family(instance_type: str) -> str:
    """The family prefix of an instance type: 'g6.xlarge' → 'g', 'trn1.2xlarge' → 'trn'."""
    m = re.match(r"^([a-z]+?)\d", instance_type)
    if not m:
        raise ConfigError(f"invalid instance type {instance_type!r}: an EC2 instance type looks like 'g6.xlarge'")
    return m.group(1)


def enable_requested(cfg: InfraConfig, aws: Aws, selection: Selection) -> dict[str, str]:
    """Ask AWS to enable the regions listed in `opt_in_regions` that are not enabled yet.

    Only what the config asks for is enabled: opting in is an account-wide
    decision. Enabling takes minutes to hours; the regions are used by the
    first apply after AWS reports them enabled. Returns region → status.
    """
    out: dict[str, str] = {}
    for region in cfg.opt_in_regions:
        if selection.info(region).opt_in_status in ENABLED:
            continue
        status = aws.call("account", DISCOVERY_REGION, "GetRegionOptStatus", RegionName=region)["RegionOptStatus"]
        if status == "DISABLED":
            aws.call("account", DISCOVERY_REGION, "EnableRegion", RegionName=region)
            status = "ENABLING"
        out[region] = status
    return out
