"""The address plan: LMRun's table kept, main region at 10.4/16, append-only, no overlaps."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.addressing import (AVOID, MAIN_CIDR, OVERLAY_POOL, PLAN_SPACE, REGION_TABLE, allocate,
                              main_node_address, subnet_for_zone, zone_index)
from meshcore.errors import FailedPrecondition

LMRUN = {r: c for r, c in REGION_TABLE[:30]}
TABLE_REGIONS = [r for r, _ in REGION_TABLE]
NEW_REGIONS = [f"zz-new-{i}" for i in range(1, 12)]
ALL = TABLE_REGIONS + NEW_REGIONS


def test_lmrun_table_is_kept_and_main_gets_10_4() -> None:
    plan = allocate("us-east-1", TABLE_REGIONS)
    assert str(plan.cidr("us-east-1")) == "10.4.0.0/16"
    for region, cidr in LMRUN.items():
        if region != "us-east-1":
            assert str(plan.cidr(region)) == cidr
    assert main_node_address(plan) == "10.4.0.4"


def test_main_region_row_stays_reserved() -> None:
    # us-east-1's own row (10.28/16) is never handed to another region.
    plan = allocate("eu-west-2", ["us-east-1", *NEW_REGIONS])
    assert str(plan.cidr("eu-west-2")) == "10.4.0.0/16"
    assert str(plan.cidr("us-east-1")) == "10.28.0.0/16"
    assert all(str(plan.cidr(r)) not in LMRUN.values() for r in NEW_REGIONS)


def test_new_regions_fill_free_slots_never_k3s_or_reserved() -> None:
    plan = allocate("us-east-1", NEW_REGIONS)
    nets = [plan.cidr(r) for r in NEW_REGIONS]
    for n in nets:
        assert n.prefixlen == 16 and n.subnet_of(PLAN_SPACE)
        assert str(n) not in ("10.0.0.0/16", "10.42.0.0/16", "10.43.0.0/16", "10.4.0.0/16")


def test_subnets_by_zone_letter() -> None:
    net = ipaddress.ip_network("10.22.0.0/16")
    assert str(subnet_for_zone(net, "eu-west-2a")) == "10.22.0.0/19"
    assert str(subnet_for_zone(net, "eu-west-2c")) == "10.22.64.0/19"
    assert zone_index("us-east-1h") == 7
    with pytest.raises(FailedPrecondition, match="beyond the 8"):
        zone_index("us-east-1i")


def test_deployed_vpcs_win_and_overlaps_are_refused() -> None:
    plan = allocate("us-east-1", ["eu-west-2"], existing={"eu-west-2": "10.99.0.0/16"})
    assert str(plan.cidr("eu-west-2")) == "10.99.0.0/16"
    with pytest.raises(FailedPrecondition, match="overlap"):
        allocate("us-east-1", ["eu-west-2", "eu-west-1"],
                 existing={"eu-west-2": "10.99.0.0/16", "eu-west-1": "10.99.0.0/16"})
    with pytest.raises(FailedPrecondition, match="kept for the main region"):
        allocate("us-east-1", ["eu-west-2"], existing={"eu-west-2": "10.4.0.0/16"})
    with pytest.raises(FailedPrecondition, match="10.42.0.0/16"):
        allocate("us-east-1", ["eu-west-2"], existing={"eu-west-2": "10.42.0.0/16"})


def test_overlay_pool_is_outside_the_plan() -> None:
    assert not OVERLAY_POOL.overlaps(PLAN_SPACE)
    assert OVERLAY_POOL in AVOID


regions = st.lists(st.sampled_from(ALL), min_size=1, max_size=len(ALL), unique=True)


@settings(max_examples=150, deadline=None)
@given(main=st.sampled_from(ALL), steps=st.lists(regions, min_size=1, max_size=5))
def test_property_no_overlap_and_nothing_moves_as_regions_are_added(main: str, steps: list[list[str]]) -> None:
    deployed: dict[str, str] = {}
    wanted: set[str] = set()
    for added in steps:
        wanted |= set(added)
        plan = allocate(main, wanted, existing=deployed)
        nets = list(plan.cidrs.values())
        assert len(nets) == len(wanted | {main})
        for i, a in enumerate(nets):
            assert a.prefixlen == 16 and a.subnet_of(PLAN_SPACE)
            assert not any(a.overlaps(x) for x in AVOID)
            assert not any(a.overlaps(b) for b in nets[i + 1:])
        assert plan.cidr(main) == MAIN_CIDR
        for r, c in deployed.items():
            assert str(plan.cidr(r)) == c  # nothing existing ever moves
        for r in wanted - {main}:
            if r in LMRUN:
                assert str(plan.cidr(r)) == LMRUN[r]
        deployed = {r: str(c) for r, c in plan.cidrs.items()}


@settings(max_examples=100, deadline=None)
@given(main=st.sampled_from(TABLE_REGIONS), a=regions, b=regions)
def test_property_table_regions_do_not_depend_on_the_others(main: str, a: list[str], b: list[str]) -> None:
    pa, pb = allocate(main, a), allocate(main, b)
    for r in set(a) & set(b) & set(TABLE_REGIONS):
        assert pa.cidr(r) == pb.cidr(r)
