"""`meshctl costs`: the mesh's cost per hour per node, per service and in total, from meshd's node list.

meshctl does the pricing, not meshd: prices need AWS credentials and calls
that may take seconds, and meshd's job is to answer agents. meshctl reads
the nodes and services from meshd, prices each (lifecycle, region, type)
once through infra.prices (on-demand from the Price List, spot from EC2,
cached under ~/.cache/meshctl), and prints the table. `--price-table FILE`
also writes the prices it used, for `meshd --price-table FILE`, which then
exports the same figures as gauges computed at scrape time.

AWS credentials: the current cluster's role (`meshctl cluster use`), else
the default chain (AWS_PROFILE, environment, instance role).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from meshcore import costs
from meshctl.output import OUTPUT_OPTION, Output, emit


def price_table(keys: list[costs.NodeKey], prices: Any) -> costs.PriceTable:
    """Every price these nodes need, looked up through `prices` (infra.prices.Prices or alike)."""
    table = costs.PriceTable()
    for lifecycle, region, itype in sorted(costs.needed(keys)):
        usd = prices.hourly(itype, region, lifecycle)
        if usd is not None:
            table.set(lifecycle, region, itype, usd)
    return table


def _aws(endpoint_url: str | None, pricing_endpoint_url: str | None) -> Any:
    from infra.aws import Aws
    from meshctl.context import Contexts

    urls = {"pricing": pricing_endpoint_url} if pricing_endpoint_url else None
    contexts = Contexts.load()
    if contexts.current:
        from infra.cluster.access import assume

        _, ctx = contexts.get(None)
        base = Aws(endpoint_url=endpoint_url)
        return Aws(assume(base, ctx.role_arn, ctx.external_id, ctx.home_region), endpoint_url=endpoint_url,
                   endpoint_urls=urls)
    return Aws(endpoint_url=endpoint_url, endpoint_urls=urls)


def costs_cmd(
    table_file: Optional[Path] = typer.Option(None, "--price-table", help="also write the prices used here, "
                                                                          "for `meshd --price-table`"),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", envvar="MESH_AWS_ENDPOINT_URL", hidden=True),
    pricing_endpoint_url: Optional[str] = typer.Option(None, "--pricing-endpoint-url", hidden=True,
                                                       envvar="MESH_AWS_PRICING_ENDPOINT_URL"),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Cost per hour of each node, each service and the whole mesh (spot and on-demand apart)."""
    from infra.prices import Prices, default_cache_path
    from mesh.v1 import catalog_pb2, nodes_pb2
    from meshctl.client import call
    from meshctl.infra_cmd import _run
    from meshctl.main import ENDPOINTS

    def body() -> None:
        if ENDPOINTS.to_agent():
            node_list = call(ENDPOINTS.agent().ListNodes, nodes_pb2.ListNodesRequest()).nodes
            svc_list = call(ENDPOINTS.agent().ListServices, catalog_pb2.ListServicesRequest()).services
        else:
            node_list = call(ENDPOINTS.nodes().ListNodes, nodes_pb2.ListNodesRequest()).nodes
            svc_list = call(ENDPOINTS.catalog().ListServices, catalog_pb2.ListServicesRequest()).services
        keys = [costs.node_key(n.name, n.region, dict(n.labels)) for n in node_list]
        aws = _aws(endpoint_url, pricing_endpoint_url)
        table = price_table(keys, Prices(aws, default_cache_path()))
        if table_file is not None:
            table.dump(table_file)
        result = costs.compute(keys, [(s.name, s.node_name) for s in svc_list], table)
        emit(costs.rows(result), ["kind", "name", "type", "region", "lifecycle", "per_hour"], output,
             title=f"cost per hour (USD){'; unpriced: ' + ', '.join(result.unpriced) if result.unpriced else ''}")
    _run(body)


__all__ = ["costs_cmd", "price_table"]
