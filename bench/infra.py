"""Benchmark of the AWS network builder on a moto server (python -m bench infra).

LMRun's default instance types select every region moto offers them in.
Measured, after warming moto (its first touch of a region costs seconds
that real AWS does not charge):

- apply_all_regions_s / _calls: plan and apply to every selected region;
- noop_plan_calls (and _s): the plan right after, which must be empty;
- destroy_s (and destroy_calls): removing everything again;
- apply_all_regions_s_serial: the same apply one region at a time, side by
  side, to show what bounded parallelism buys.

Moto answers from the same process, so times are CPU-bound Python on both
ends: compare runs of this benchmark with each other, not with AWS.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import record

def _one(url: str, name: str, parallel: int, session: Any) -> dict[str, float]:
    from infra.apply import apply
    from infra.aws import aws_from_config
    from infra.config import InfraConfig
    from infra.destroy import destroy
    from infra.plan import make_plan

    cfg = InfraConfig(name=name, max_parallel_regions=parallel)
    aws = aws_from_config(cfg, lambda: session, endpoint_url=url)
    t0 = time.monotonic()
    result = apply(cfg, aws=aws)
    apply_s = time.monotonic() - t0
    if not result.ok:
        raise RuntimeError(f"apply failed: {result.failed} {result.leftovers}")
    calls0 = aws.calls
    t0 = time.monotonic()
    plan = make_plan(cfg, aws)
    noop_s = time.monotonic() - t0
    if not plan.empty:
        raise RuntimeError(f"second plan not empty: {plan.rows()[:3]}")
    noop_calls = aws.calls - calls0
    gone = destroy(cfg, aws)
    if not gone.complete:
        raise RuntimeError(f"destroy left {gone.leftovers}")
    return {"apply_s": apply_s, "apply_calls": result.calls, "regions": len(result.plan.selection.selected),
            "noop_s": noop_s, "noop_calls": noop_calls, "destroy_s": gone.seconds, "destroy_calls": gone.calls}


def run() -> list[dict[str, Any]]:
    import boto3

    from infra.aws import aws_from_config
    from infra.config import InfraConfig
    from infra.regions import select_regions
    from testbed.doubles.motoserver import moto_server

    with moto_server() as url:
        session = boto3.session.Session()
        t0 = time.monotonic()
        warm = InfraConfig(name="warm")
        select_regions(warm, aws_from_config(warm, lambda: session, endpoint_url=url))
        warm_s = time.monotonic() - t0
        par = _one(url, "bench-par", InfraConfig().max_parallel_regions, session)
        ser = _one(url, "bench-ser", 1, session)
    params = {"regions": par["regions"], "types": "g6.xlarge,g6.2xlarge,g6.12xlarge",
              "parallel": InfraConfig().max_parallel_regions, "moto_warmup_s": round(warm_s, 2)}
    return [
        record("infra", "apply_all_regions_s", par["apply_s"], "s", **params),
        record("infra", "apply_all_regions_calls", par["apply_calls"], "calls", **params),
        record("infra", "noop_plan_calls", par["noop_calls"], "calls", **params),
        record("infra", "noop_plan_s", par["noop_s"], "s", **params),
        record("infra", "destroy_s", par["destroy_s"], "s", **params),
        record("infra", "destroy_calls", par["destroy_calls"], "calls", **params),
        record("infra", "apply_all_regions_s_serial", ser["apply_s"], "s", **{**params, "parallel": 1}),
        record("infra", "apply_parallel_speedup", ser["apply_s"] / par["apply_s"] if par["apply_s"] else 0.0,
               "x", better="higher", **params),
    ]
