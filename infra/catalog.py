"""Instance types as a user chooses them: where each is offered, its GPUs, vCPUs, memory and price.

Offerings come from `ec2:DescribeInstanceTypeOfferings` per region (the
types a region sells), shapes from `ec2:DescribeInstanceTypes` (GPUs from
GpuInfo), prices from infra.prices (on-demand, and spot where asked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.aws import Aws

_BATCH = 100  # DescribeInstanceTypes takes at most 100 names per call


@dataclass(frozen=True)
class TypeInfo:
    name: str
    vcpus: int
    memory_mib: int
    gpus: int = 0
    gpu: str = ""  # e.g. "NVIDIA L4"
    gpu_memory_mib: int = 0

    @classmethod
    def from_aws(cls, t: dict[str, Any]) -> TypeInfo:
        gpus = t.get("GpuInfo", {}).get("Gpus", [])
        count = sum(int(g.get("Count", 0)) for g in gpus)
        name = " + ".join(f"{g.get('Manufacturer', '')} {g.get('Name', '')}".strip() for g in gpus)
        return cls(t["InstanceType"], int(t["VCpuInfo"]["DefaultVCpus"]), int(t["MemoryInfo"]["SizeInMiB"]),
                   count, name, int(t.get("GpuInfo", {}).get("TotalGpuMemoryInMiB", 0)))


def offered(aws: Aws, region: str, types: list[str] | None = None) -> list[str]:
    """The types `region` offers, of `types` (all when None)."""
    filters = [{"Name": "instance-type", "Values": list(types)}] if types else []
    items = aws.paginate("ec2", region, "DescribeInstanceTypeOfferings", "InstanceTypeOfferings",
                         LocationType="region", Filters=filters)
    return sorted({i["InstanceType"] for i in items})


def describe(aws: Aws, region: str, types: list[str]) -> dict[str, TypeInfo]:
    out: dict[str, TypeInfo] = {}
    names = sorted(set(types))
    for i in range(0, len(names), _BATCH):
        for t in aws.paginate("ec2", region, "DescribeInstanceTypes", "InstanceTypes",
                              InstanceTypes=names[i:i + _BATCH]):
            info = TypeInfo.from_aws(t)
            out[info.name] = info
    return out


def table(aws: Aws, regions: list[str], types: list[str] | None, prices: Any = None, spot: bool = False,
          gpu_only: bool = False) -> list[dict[str, Any]]:
    """One row per (region, offered type): GPUs, vCPUs, memory and $/h (None: no price known)."""
    rows = []
    for region in regions:
        here = offered(aws, region, types)
        infos = describe(aws, region, here) if here else {}
        for name in here:
            info = infos.get(name)
            if info is None or (gpu_only and not info.gpus):
                continue
            row: dict[str, Any] = {"region": region, "type": name, "gpus": info.gpus, "gpu": info.gpu,
                                   "vcpus": info.vcpus, "memory_gib": round(info.memory_mib / 1024, 1)}
            if prices is not None:
                row["on_demand_hour"] = prices.on_demand(name, region)
                if spot:
                    row["spot_hour"] = prices.spot(name, region)
            rows.append(row)
    return rows


__all__ = ["TypeInfo", "offered", "describe", "table"]
