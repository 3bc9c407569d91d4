"""`meshctl costs` and meshd's cost gauges: nodes with known types, priced per lifecycle."""

from __future__ import annotations

import pytest

from meshcore import costs
from meshctl.costs_cmd import price_table


class FakePrices:
    """Like infra.prices.Prices: $/h by (type, region, lifecycle); records what was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []
        self.table = {("g6.xlarge", "us-east-1", "on-demand"): 0.8048, ("g6.xlarge", "us-east-1", "spot"): 0.35,
                      ("m6i.large", "us-east-1", "on-demand"): 0.096, ("g6.12xlarge", "us-west-2", "spot"): 1.9}

    def hourly(self, itype: str, region: str, lifecycle: str = "on-demand") -> float | None:
        self.asked.append((itype, region, lifecycle))
        return self.table.get((itype, region, lifecycle))


def labels(itype: str, region: str = "", lifecycle: str = "") -> dict[str, str]:
    out = {costs.TYPE_LABEL: itype}
    if region:
        out[costs.REGION_LABEL] = region
    if lifecycle:
        out[costs.LIFECYCLE_LABEL] = lifecycle
    return out


NODES = [costs.node_key("replica-0", "us-east-1", labels("m6i.large", "us-east-1", "on-demand")),
         costs.node_key("gpu-a", "us-east-1", labels("g6.xlarge", "us-east-1", "on-demand")),
         costs.node_key("gpu-b", "us-east-1", labels("g6.xlarge", "", "spot")),  # region from the node itself
         costs.node_key("gpu-c", "us-west-2", labels("g6.12xlarge", "us-west-2", "spot")),
         costs.node_key("laptop", "", {})]  # no facts: unpriced, never zero


def test_cost_per_node_service_and_total_with_spot_and_on_demand_apart() -> None:
    fake = FakePrices()
    table = price_table(NODES, fake)
    assert len(fake.asked) == 4 and ("g6.xlarge", "us-east-1", "spot") in fake.asked, "each price asked once"
    c = costs.compute(NODES, [("qwen", "gpu-a"), ("embed", "gpu-a"), ("llama", "gpu-c")], table)
    per_node = {n.name: p for n, p in c.nodes}
    assert per_node == {"replica-0": 0.096, "gpu-a": 0.8048, "gpu-b": 0.35, "gpu-c": 1.9, "laptop": None}
    assert c.totals["on-demand"] == pytest.approx(0.096 + 0.8048) and c.totals["spot"] == pytest.approx(2.25)
    assert c.services == {"qwen": pytest.approx(0.4024), "embed": pytest.approx(0.4024), "llama": 1.9}
    assert c.unpriced == ["laptop"] and c.total == pytest.approx(0.9008 + 2.25)
    rows = costs.rows(c)
    assert rows[-1] == {"kind": "total", "name": "all", "type": "", "region": "", "lifecycle": "",
                        "per_hour": pytest.approx(3.1508)}


def test_the_price_table_file_round_trips_and_refuses_garbage(tmp_path) -> None:
    table = price_table(NODES, FakePrices())
    path = tmp_path / "prices.json"
    table.dump(path)
    assert costs.PriceTable.load(path).prices == table.prices
    assert table.get("spot", "us-west-2", "g6.12xlarge") == 1.9 and table.get("scheduled", "us-east-1",
                                                                              "m6i.large") == 0.096
    path.write_text('{"usd_per_hour": {"x": "cheap"}}')
    with pytest.raises(ValueError, match="not a price table"):
        costs.PriceTable.load(path)


def test_meshd_cost_gauges_from_a_price_table_file_at_scrape_time(tmp_path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from mesh.v1 import types_pb2
    from meshd.metrics import CostCollector

    path = tmp_path / "prices.json"
    nodes = [types_pb2.Node(name="gpu-a", region="us-east-1", labels=labels("g6.xlarge", "us-east-1", "on-demand")),
             types_pb2.Node(name="gpu-b", region="us-east-1", labels=labels("g6.xlarge", "us-east-1", "spot"))]
    services = [types_pb2.Service(name="qwen", node_name="gpu-b")]
    reg = CollectorRegistry()
    reg.register(CostCollector(str(path), lambda: (nodes, services)))
    assert b"mesh_node_cost" not in generate_latest(reg), "no table yet: no cost gauges, no error"
    price_table([costs.node_key(n.name, n.region, dict(n.labels)) for n in nodes], FakePrices()).dump(path)
    text = generate_latest(reg).decode()
    assert ('mesh_node_cost_dollars_per_hour{instance_type="g6.xlarge",lifecycle="spot",node="gpu-b",'
            'region="us-east-1"} 0.35') in text
    assert 'mesh_service_cost_dollars_per_hour{service="qwen"} 0.35' in text
    assert 'mesh_cost_dollars_per_hour{lifecycle="on-demand"} 0.8048' in text
    assert "mesh_cost_unpriced_nodes 0.0" in text
