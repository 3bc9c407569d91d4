"""Quotas against the Service Quotas double (EC2 regions from moto): check, request, explain."""

from __future__ import annotations

import pytest

from infra import quotas
from infra.config import InfraConfig
from testbed.doubles.servicequotas import ServiceQuotasDouble

G_OD, G_SPOT = "L-DB2E81BA", "L-3819A6DF"


@pytest.fixture
def g6(builder, make_aws, quotas_double: ServiceQuotasDouble):
    """LMRun's default types, their region selection, and an Aws whose quotas go to the double."""
    cfg = InfraConfig(name="q")
    sel = builder.selection(cfg)
    aws = make_aws(cfg, endpoint_urls={"service-quotas": quotas_double.url})
    return cfg, sel, aws


def test_check_counts_vcpus_per_region_and_family(g6, quotas_double) -> None:
    cfg, sel, aws = g6
    quotas_double.set("us-east-1", G_OD, 64)
    quotas_double.set("us-east-1", G_SPOT, 48)
    quotas_double.set("us-east-2", G_OD, 8)  # LMRun's minimum: too few for one g6.12xlarge
    rows = quotas.check(cfg, aws, sel)
    assert len(rows) == 2 * len(sel.selected)
    by = {(r.need.region, r.need.code): r for r in rows}
    assert by[("us-east-1", G_OD)].need.vcpus == 48  # one g6.12xlarge, counted in vCPUs
    assert not by[("us-east-1", G_OD)].short and not by[("us-east-1", G_SPOT)].short
    assert by[("us-east-2", G_OD)].short and by[("us-east-2", G_OD)].current == 8
    assert by[("us-east-2", G_OD)].row()["quota"] == "Running On-Demand G and VT instances"
    regions_asked = {region for region, op in quotas_double.operations if op == "GetServiceQuota"}
    assert regions_asked == set(sel.selected)


def test_configured_vcpus_override_the_largest_type(builder, make_aws, quotas_double) -> None:
    cfg = InfraConfig(name="q", on_demand_vcpus=8, spot_vcpus=96)
    aws = make_aws(cfg, endpoint_urls={"service-quotas": quotas_double.url})
    rows = quotas.check(cfg, aws, builder.selection(cfg))
    assert {r.need.vcpus for r in rows if r.need.code == G_OD} == {8}
    assert {r.need.vcpus for r in rows if r.need.code == G_SPOT} == {96}


def test_request_only_where_short_never_twice_and_spaced_out(g6, quotas_double, sleeps) -> None:
    cfg, sel, aws = g6
    for region in sel.selected:
        quotas_double.set(region, G_OD, 100)  # on-demand fine everywhere; spot short everywhere
    import io

    from meshctl.progress import Printer
    said = io.StringIO()
    rows = quotas.request(cfg, aws, sel, sleep=sleeps, interval_s=45, progress=Printer(said, tty=False))
    filed = [r for r in rows if r.status.startswith("requested")]
    assert len(filed) == len(sel.selected) and all(r.need.code == G_SPOT for r in filed)
    lines = said.getvalue().splitlines()  # one line per step, with the waits said
    assert lines[0].endswith("quota requests ...")
    assert sum("waiting for 45 s before the next request" in x for x in lines) == len(filed) - 1
    assert sum(f"{G_SPOT}: requested" in x for x in lines) == len(filed)
    assert all(r.status == "ok" for r in rows if r.need.code == G_OD)
    assert sleeps.calls == [45] * (len(filed) - 1)  # one wait between two requests
    assert {(q["_region"], q["QuotaCode"], q["DesiredValue"]) for q in quotas_double.requests} == \
        {(r, G_SPOT, 48.0) for r in sel.selected}
    # again: every one is pending, nothing new is filed
    again = quotas.request(cfg, aws, sel, sleep=sleeps, interval_s=45)
    assert len(quotas_double.requests) == len(sel.selected)
    assert all(r.status.startswith("pending") for r in again if r.need.code == G_SPOT)
    # once approved, the quota is no longer short
    for q in list(quotas_double.requests):
        quotas_double.resolve(q["Id"])
    assert all(not r.short for r in quotas.check(cfg, aws, sel))


def test_request_limit_and_refusal(g6, quotas_double, sleeps) -> None:
    cfg, sel, aws = g6
    quotas_double.refuse("us-east-1", G_OD)
    rows = quotas.request(cfg, aws, sel, sleep=sleeps, interval_s=0, limit=3)
    refused = [r for r in rows if r.status.startswith("refused")]
    assert [(r.need.region, r.need.code) for r in refused] == [("us-east-1", G_OD)]
    assert "QuotaExceededException" in refused[0].status
    assert len(quotas_double.requests) == 3
    assert any("limit reached" in r.status for r in rows)


SKY_LOG = """\
I 11-20 10:00:01 optimizer.py:910] Considered resources (1 node):
I 11-20 10:00:01 optimizer.py:910]  AWS(g6.xlarge[Spot], {'L4': 1})  us-east-1  0.39
I 11-20 10:00:02 cloud_vm_ray_backend.py:1400] Launching on AWS us-east-1 (us-east-1a)
W 11-20 10:00:09 instance.py:411] create_instances: Attempt failed with An error occurred (VcpuLimitExceeded) when calling the RunInstances operation: You have requested more vCPU capacity than your current vCPU limit of 0 allows for the instance bucket that the specified instance type belongs to.
I 11-20 10:00:10 cloud_vm_ray_backend.py:1400] Launching on AWS us-east-1 (us-east-1b)
W 11-20 10:00:15 instance.py:411] create_instances: Attempt failed with An error occurred (VcpuLimitExceeded) when calling the RunInstances operation: You have requested more vCPU capacity than your current vCPU limit of 0 allows.
I 11-20 10:00:20 cloud_vm_ray_backend.py:1400] Launching on AWS eu-west-2 (eu-west-2a)
W 11-20 10:00:21 instance.py:411] create_instances: Attempt failed with An error occurred (InsufficientInstanceCapacity) when calling the RunInstances operation
I 11-20 10:00:30 optimizer.py:910]  AWS(p4d.24xlarge, {'A100': 8})  us-west-2  32.77
I 11-20 10:00:31 cloud_vm_ray_backend.py:1400] Launching on AWS us-west-2 (us-west-2a)
W 11-20 10:00:33 instance.py:411] create_instances: Attempt failed with An error occurred (VcpuLimitExceeded) when calling the RunInstances operation
"""


def test_explain_finds_region_and_quota_behind_each_failure() -> None:
    found = quotas.explain(SKY_LOG)
    assert [(e.region, e.code, e.failures, e.instance_types) for e in found] == [
        ("us-east-1", G_SPOT, 2, ("g6.xlarge",)),
        ("us-west-2", "L-417A185B", 1, ("p4d.24xlarge",)),
    ]
    assert quotas.explain("nothing to see\n") == []


def test_unknown_family_is_named() -> None:
    from meshcore.errors import ConfigError

    with pytest.raises(ConfigError, match="no vCPU quota known for instance type 'x2idn.16xlarge'"):
        quotas.codes_for("x2idn.16xlarge")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

lines = st.one_of(st.text(max_size=60), st.sampled_from(SKY_LOG.splitlines()),
                  st.just("Launching on AWS xx-yy-9 (VcpuLimitExceeded) AWS(u-6tb1.metal[Spot]"))


@settings(max_examples=200, deadline=None)
@given(st.lists(lines, max_size=12))
def test_fuzz_explain_never_fails_and_counts_every_failure(log: list[str]) -> None:
    text = "\n".join(log)
    found = quotas.explain(text)
    expected = sum(1 for line in text.splitlines() if "VcpuLimitExceeded" in line)
    assert sum(e.failures for e in found) == expected
