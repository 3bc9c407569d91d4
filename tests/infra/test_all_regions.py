"""LMRun's default types in every selected region: apply, a no-op re-plan, destroy to nothing."""

from __future__ import annotations

import ipaddress

from infra.apply import apply
from infra.config import InfraConfig
from infra.destroy import destroy
from infra.plan import make_plan
from tests.infra.helpers import by_tag, ec2, tagged


def test_apply_to_every_selected_region_then_destroy(moto, mesh, make_aws) -> None:
    cfg = InfraConfig(name=mesh, max_parallel_regions=8)  # g6.xlarge, g6.2xlarge, g6.12xlarge
    result = apply(cfg, aws=make_aws(cfg))
    assert result.ok, (result.failed, result.leftovers)
    selected = result.plan.selection.selected
    assert len(selected) >= 10 and "ap-southeast-5" not in selected

    cidrs = {}
    for r in selected:
        vpcs = ec2(moto, r).describe_vpcs(Filters=by_tag(mesh))["Vpcs"]
        assert len(vpcs) == 1
        cidrs[r] = ipaddress.ip_network(vpcs[0]["CidrBlock"])
    assert str(cidrs["us-east-1"]) == "10.4.0.0/16"
    nets = list(cidrs.values())
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    hub_rt = ec2(moto, "us-east-1").describe_route_tables(Filters=by_tag(mesh))["RouteTables"][0]
    peered = {r["DestinationCidrBlock"] for r in hub_rt["Routes"] if r.get("VpcPeeringConnectionId")}
    assert peered == {str(c) for r, c in cidrs.items() if r != "us-east-1"}

    assert make_plan(cfg, make_aws(cfg), selection=result.plan.selection).empty

    gone = destroy(cfg, make_aws(cfg))
    assert gone.complete, gone.leftovers
    assert all(tagged(moto, r, mesh) == [] for r in selected)
