"""Contract of the Price List double: the same checks run against real AWS when asked.

With MESH_CONTRACT_AWS=1 (and credentials in the environment) every check
runs against the Price List endpoint in us-east-1 (read-only: GetProducts
costs nothing). Otherwise they run against testbed/doubles/pricing.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from infra.prices import on_demand_from, product_filters
from testbed.doubles.pricing import PricingDouble

REAL = os.environ.get("MESH_CONTRACT_AWS") == "1"


@pytest.fixture
def pricing(moto_url: str) -> Iterator[Any]:
    # moto_url sets fake credentials for the double; real AWS uses the caller's own.
    if REAL:
        yield boto3.session.Session().client("pricing", region_name="us-east-1")
        return
    d = PricingDouble().start()
    try:
        yield boto3.client("pricing", region_name="us-east-1", endpoint_url=d.url)
    finally:
        d.stop()


def test_the_cluster_filters_find_exactly_one_linux_on_demand_price(pricing) -> None:
    out = pricing.get_products(ServiceCode="AmazonEC2", FormatVersion="aws_v1",
                               Filters=product_filters("m6i.large", "us-east-1"))
    assert out["FormatVersion"] == "aws_v1"
    items = out["PriceList"]
    assert len(items) == 1 and isinstance(items[0], str), "PriceList items are JSON strings"
    doc = json.loads(items[0])
    attrs = doc["product"]["attributes"]
    assert (attrs["instanceType"], attrs["location"], attrs["operatingSystem"], attrs["tenancy"],
            attrs["capacitystatus"]) == ("m6i.large", "US East (N. Virginia)", "Linux", "Shared", "Used")
    assert attrs["vcpu"] == "2"
    price = on_demand_from(items)
    assert price is not None and 0.01 < price < 1.0


def test_without_the_capacity_and_tenancy_filters_there_is_more_than_one_product(pricing) -> None:
    filters = [f for f in product_filters("m6i.large", "us-east-1")
               if f["Field"] not in ("tenancy", "capacitystatus", "operatingSystem")]
    out = pricing.get_products(ServiceCode="AmazonEC2", Filters=filters, MaxResults=100)
    assert len(out["PriceList"]) > 1


def test_paging_with_max_results_and_next_token(pricing) -> None:
    filters = [{"Type": "TERM_MATCH", "Field": "instanceType", "Value": "m6i.large"}]
    first = pricing.get_products(ServiceCode="AmazonEC2", Filters=filters, MaxResults=1)
    assert len(first["PriceList"]) == 1 and first.get("NextToken")
    second = pricing.get_products(ServiceCode="AmazonEC2", Filters=filters, MaxResults=1,
                                  NextToken=first["NextToken"])
    assert len(second["PriceList"]) == 1 and second["PriceList"] != first["PriceList"]


def test_an_unknown_service_code_is_not_found(pricing) -> None:
    with pytest.raises(ClientError) as e:
        pricing.get_products(ServiceCode="NoSuchService", Filters=[])
    assert e.value.response["Error"]["Code"] == "NotFoundException"


def test_a_bad_filter_type_is_an_invalid_parameter(pricing) -> None:
    with pytest.raises(ClientError) as e:
        pricing.get_products(ServiceCode="AmazonEC2",
                             Filters=[{"Type": "SORT_OF", "Field": "instanceType", "Value": "m6i.large"}])
    assert e.value.response["Error"]["Code"] in ("InvalidParameterException", "ValidationException")


def test_a_type_that_does_not_exist_has_no_products(pricing) -> None:
    out = pricing.get_products(ServiceCode="AmazonEC2", Filters=product_filters("zz9.nothing", "us-east-1"))
    assert out["PriceList"] == [] and on_demand_from(out["PriceList"]) is None
