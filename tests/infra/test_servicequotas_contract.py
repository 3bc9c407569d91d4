"""Contract of the Service Quotas double: the same checks run against real AWS when asked.

With MESH_CONTRACT_AWS=1 (and credentials in the environment) the read-only
checks run against AWS in MESH_CONTRACT_AWS_REGION (default us-east-1); no
increase is ever requested there. Otherwise they run against the double, as
do the increase checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from testbed.doubles.servicequotas import ServiceQuotasDouble

REAL = os.environ.get("MESH_CONTRACT_AWS") == "1"
REGION = os.environ.get("MESH_CONTRACT_AWS_REGION", "us-east-1")


@pytest.fixture
def sq(moto_url: str) -> Iterator[tuple[Any, ServiceQuotasDouble | None]]:
    # moto_url sets fake credentials for the double; real AWS uses the caller's own.
    if REAL:
        yield boto3.session.Session().client("service-quotas", region_name=REGION), None
        return
    d = ServiceQuotasDouble(default=0.0).start()
    try:
        yield boto3.client("service-quotas", region_name=REGION, endpoint_url=d.url), d
    finally:
        d.stop()


def test_get_service_quota_shape(sq) -> None:
    client, _ = sq
    q = client.get_service_quota(ServiceCode="ec2", QuotaCode="L-DB2E81BA")["Quota"]
    assert q["QuotaCode"] == "L-DB2E81BA" and q["ServiceCode"] == "ec2"
    assert "G and VT" in q["QuotaName"]
    assert isinstance(q["Value"], float) and q["Value"] >= 0
    assert REGION in q["QuotaArn"]


def test_unknown_quota_code_is_no_such_resource(sq) -> None:
    client, _ = sq
    with pytest.raises(ClientError) as e:
        client.get_service_quota(ServiceCode="ec2", QuotaCode="L-00000000")
    assert e.value.response["Error"]["Code"] == "NoSuchResourceException"


def test_list_service_quotas_by_code(sq) -> None:
    client, _ = sq
    qs = client.list_service_quotas(ServiceCode="ec2", QuotaCode="L-3819A6DF")["Quotas"]
    assert [q["QuotaCode"] for q in qs] == ["L-3819A6DF"]


def test_change_history_shape(sq) -> None:
    client, _ = sq
    out = client.list_requested_service_quota_change_history_by_quota(ServiceCode="ec2", QuotaCode="L-DB2E81BA")
    assert isinstance(out["RequestedQuotas"], list)
    for r in out["RequestedQuotas"]:
        assert {"Id", "Status", "DesiredValue", "QuotaCode"} <= set(r)


@pytest.mark.skipif(REAL, reason="never files a quota request on a real account")
def test_increase_is_pending_then_refused_as_duplicate(sq) -> None:
    client, d = sq
    r = client.request_service_quota_increase(ServiceCode="ec2", QuotaCode="L-DB2E81BA", DesiredValue=8.0)
    assert r["RequestedQuota"]["Status"] == "PENDING" and r["RequestedQuota"]["DesiredValue"] == 8.0
    with pytest.raises(ClientError) as e:
        client.request_service_quota_increase(ServiceCode="ec2", QuotaCode="L-DB2E81BA", DesiredValue=16.0)
    assert e.value.response["Error"]["Code"] == "ResourceAlreadyExistsException"
    hist = client.list_requested_service_quota_change_history_by_quota(ServiceCode="ec2", QuotaCode="L-DB2E81BA")
    assert [q["Status"] for q in hist["RequestedQuotas"]] == ["PENDING"]
    assert d is not None and d.operations[-1] == (REGION, "ListRequestedServiceQuotaChangeHistoryByQuota")
