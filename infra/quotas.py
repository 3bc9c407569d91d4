"""GPU quotas: what the chosen instance types need, what the account has, and asking for more.

EC2 counts running instances against per-family quotas measured in vCPUs,
not instances (a quota of 8 fits two g6.xlarge or one g6.2xlarge), with
separate quotas for on-demand and spot. In every selected region where a
chosen type is offered, each family's quota must reach the configured vCPUs,
by default enough for one of the largest chosen type offered there.

`request` files increase requests only where the quota is short, never a
second one while a request for that quota is still open, and spaces them
out by `quota_request_interval_s` (many requests at once tend to be ignored).

`explain` reads a `sky launch` log and lists, per region, the quota behind
each `VcpuLimitExceeded` failure: the region is the last one SkyPilot said
it was launching in, the family and market the last resources it named.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from infra.apply import ApplyProgress
from infra.aws import Aws, AwsError
from infra.config import InfraConfig
from infra.regions import Selection, instance_family
from meshcore.errors import ConfigError

SERVICE = "ec2"
SQ = "service-quotas"  # boto3's name; IAM says "servicequotas"
OPEN_STATUSES = ("PENDING", "CASE_OPENED")

# family → ((on-demand code, name), (spot code, name)), from the Service Quotas console.
QUOTA_CODES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {}
for _fams, _od, _spot in (
    (("g", "vt"), ("L-DB2E81BA", "Running On-Demand G and VT instances"),
     ("L-3819A6DF", "All G and VT Spot Instance Requests")),
    (("p",), ("L-417A185B", "Running On-Demand P instances"), ("L-7212CCBC", "All P Spot Instance Requests")),
    (("inf",), ("L-1945791B", "Running On-Demand Inf instances"), ("L-B5D1601B", "All Inf Spot Instance Requests")),
    (("trn",), ("L-2C3B7624", "Running On-Demand Trn instances"), ("L-6B0D517C", "All Trn Spot Instance Requests")),
    (("dl",), ("L-6E869C2A", "Running On-Demand DL instances"), ("L-85EED4F7", "All DL Spot Instance Requests")),
    (("a", "c", "d", "h", "i", "m", "r", "t", "z"),
     ("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
     ("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests")),
):
    for _f in _fams:
        QUOTA_CODES[_f] = (_od, _spot)


def codes_for(instance_type: str) -> tuple[tuple[str, str], tuple[str, str]]:
    fam = instance_family(instance_type)
    if fam not in QUOTA_CODES:
        raise ConfigError(f"no vCPU quota known for instance type {instance_type!r} (family {fam!r}): "
                          f"supported families are {', '.join(sorted(QUOTA_CODES))}")
    return QUOTA_CODES[fam]


@dataclass(frozen=True)
class Need:
    region: str
    code: str
    name: str
    vcpus: int
    types: tuple[str, ...]


@dataclass
class QuotaRow:
    need: Need
    current: float | None = None
    status: str = ""
    #: vCPUs of on-demand instances already running under the quota (counted only where asked)
    used: int = 0

    @property
    def free(self) -> float:
        return (self.current or 0.0) - self.used

    @property
    def short(self) -> bool:
        return self.current is None or self.free < self.need.vcpus

    def row(self) -> dict[str, object]:
        n = self.need
        return {"region": n.region, "code": n.code, "quota": n.name, "current": self.current, "used": self.used,
                "needed": n.vcpus, "types": ", ".join(n.types), "status": self.status}


def needs(cfg: InfraConfig, selection: Selection) -> list[Need]:
    """Per selected region and quota code: the vCPUs the chosen types need."""
    out = []
    for region in selection.selected:
        offered = selection.info(region).offered
        by_code: dict[tuple[str, str, bool], list[str]] = {}
        for t in offered:
            od, spot = codes_for(t)
            by_code.setdefault((*od, False), []).append(t)
            by_code.setdefault((*spot, True), []).append(t)
        for (code, name, is_spot), types in sorted(by_code.items()):
            configured = cfg.spot_vcpus if is_spot else cfg.on_demand_vcpus
            vcpus = configured if configured is not None else max(selection.vcpus[t] for t in types)
            out.append(Need(region, code, name, vcpus, tuple(sorted(types))))
    return out


def check(cfg: InfraConfig, aws: Aws, selection: Selection) -> list[QuotaRow]:
    """Current value of every needed quota (one GetServiceQuota per region and code)."""
    return check_needs(aws, needs(cfg, selection))


def running_vcpus(aws: Aws, region: str) -> dict[str, int]:
    """On-demand vCPUs pending or running in `region`, per quota code: what EC2 counts against the
    quotas before it launches one more (spot instances count against the spot quotas instead).
    vCPUs from each instance's CpuOptions, else from its type's description."""
    from infra import catalog

    pages = aws.paginate("ec2", region, "DescribeInstances", "Reservations",
                         Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    found = [i for r in pages for i in r.get("Instances", []) if i.get("InstanceLifecycle") != "spot"]
    unknown = sorted({i["InstanceType"] for i in found if not i.get("CpuOptions")})
    shapes = catalog.describe(aws, region, unknown) if unknown else {}
    used: dict[str, int] = {}
    for i in found:
        cpu, itype = i.get("CpuOptions"), i["InstanceType"]
        vcpus = cpu["CoreCount"] * cpu.get("ThreadsPerCore", 1) if cpu else getattr(shapes.get(itype), "vcpus", 0)
        try:
            code = codes_for(itype)[0][0]
        except ConfigError:
            continue  # a family this tool has no quota code for: it cannot share one we check
        used[code] = used.get(code, 0) + vcpus
    return used


def check_needs(aws: Aws, wanted: list[Need], count_used: bool = False) -> list[QuotaRow]:
    """Each need against its quota; `count_used`: against what is free under it (quota minus the
    on-demand vCPUs already running in the region), as EC2 judges the next launch."""
    rows = []
    used: dict[str, dict[str, int]] = {}
    for n in wanted:
        row = QuotaRow(n)
        if count_used:
            if n.region not in used:
                used[n.region] = running_vcpus(aws, n.region)
            row.used = used[n.region].get(n.code, 0)
        try:
            q = aws.call(SQ, n.region, "GetServiceQuota", ServiceCode=SERVICE, QuotaCode=n.code)
            row.current = float(q["Quota"]["Value"])
        except AwsError as e:
            if e.aws_code != "NoSuchResourceException":
                raise
            row.current = None  # never set in this region: treated as 0
        row.status = "ok" if not row.short else "short"
        rows.append(row)
    return rows


def open_request(aws: Aws, region: str, code: str) -> dict | None:
    """An increase request for `code` in `region` that is still open, if any."""
    reqs = aws.paginate(SQ, region, "ListRequestedServiceQuotaChangeHistoryByQuota",
                        "RequestedQuotas", max_pages=10, ServiceCode=SERVICE, QuotaCode=code)
    for r in reqs:
        if r.get("Status") in OPEN_STATUSES:
            return r
    return None


def request(cfg: InfraConfig, aws: Aws, selection: Selection, sleep: Callable[[float], None] = time.sleep,
            interval_s: float | None = None, limit: int | None = None,
            progress: ApplyProgress | None = None) -> list[QuotaRow]:
    """File increase requests where quotas are short; returns every row with what was done."""
    interval = cfg.quota_request_interval_s if interval_s is None else interval_s
    return request_needs(aws, needs(cfg, selection), sleep, interval, limit, progress)


def request_needs(aws: Aws, wanted: list[Need], sleep: Callable[[float], None] = time.sleep,
                  interval: float = 30.0, limit: int | None = None,
                  progress: ApplyProgress | None = None) -> list[QuotaRow]:
    """File the missing increases; `progress` hears each step and each wait (they can be long)."""
    progress = progress or ApplyProgress()
    progress.phase("quota requests")
    rows = check_needs(aws, wanted)
    filed = 0
    for row in rows:
        if not row.short:
            continue
        pending = open_request(aws, row.need.region, row.need.code)
        if pending is not None:
            row.status = (f"pending: request {pending.get('Id', '?')} for {pending.get('DesiredValue')} "
                          f"({pending.get('Status')})")
            continue
        if limit is not None and filed >= limit:
            row.status = "short: not requested (limit reached, run again later)"
            continue
        if filed:
            progress.waiting(row.need.region, f"{interval:.0f} s before the next request (bursts get ignored)")
            sleep(interval)  # spaced out: bursts of requests get ignored
        try:
            out = aws.call(SQ, row.need.region, "RequestServiceQuotaIncrease",
                           ServiceCode=SERVICE, QuotaCode=row.need.code, DesiredValue=float(row.need.vcpus))
        except AwsError as e:
            row.status = f"refused: {e.aws_code}"
            msg = str(e).split(": ", 2)[-1]
            if msg and msg != e.aws_code:
                row.status += f": {msg}"
            continue
        filed += 1
        rq = out.get("RequestedQuota", {})
        row.status = f"requested: {rq.get('Id', '?')} ({rq.get('Status', 'PENDING')})"
        progress.note(row.need.region, f"{row.need.code}: {row.status}")
    return rows


# --- sky launch logs -------------------------------------------------------

_REGION = r"([a-z]{2}(?:-gov)?-[a-z]+-\d+)"
_REGION_LINES = (
    re.compile(r"Launching on AWS " + _REGION),
    re.compile(r"Failed to acquire resources in " + _REGION),
    re.compile(r"\bregion[=: ]+['\"]?" + _REGION),
)
_RESOURCES = re.compile(r"AWS\(([a-z][a-z0-9-]*\.[a-z0-9-]+)(\[Spot\])?")
_VCPU = re.compile(r"VcpuLimitExceeded")


@dataclass(frozen=True)
class Explained:
    region: str
    code: str
    name: str
    failures: int
    instance_types: tuple[str, ...]


def explain(log_text: str) -> list[Explained]:
    """The (region, quota code) pairs behind VcpuLimitExceeded failures in a sky launch log."""
    region, itype, spot = "unknown", None, False
    hits: dict[tuple[str, str, str], list[str]] = {}
    for line in log_text.splitlines():
        m = _RESOURCES.search(line)
        if m:
            itype, spot = m.group(1), bool(m.group(2))
        for pat in _REGION_LINES:
            m = pat.search(line)
            if m:
                region = m.group(1)
                break
        if _VCPU.search(line):
            if itype is None:
                key = (region, "unknown", "instance type not named in the log")
            else:
                try:
                    od, sp = codes_for(itype)
                    key = (region, *(sp if spot else od))
                except ConfigError:
                    key = (region, "unknown", f"no quota known for {itype}")
            hits.setdefault(key, []).append(itype or "?")
    return [Explained(r, c, n, len(ts), tuple(sorted(set(ts)))) for (r, c, n), ts in sorted(hits.items())]
