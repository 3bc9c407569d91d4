"""A small Service Quotas endpoint, for what moto does not implement (EC2 quotas).

Written from the AWS Service Quotas API reference: the JSON 1.1 protocol
(POST /, `X-Amz-Target: ServiceQuotasV20190624.<Operation>`, JSON bodies,
errors as HTTP 400 with `{"__type": ..., "message": ...}`), and the four
operations the builder uses:

- GetServiceQuota(ServiceCode, QuotaCode) → {"Quota": {...}};
  NoSuchResourceException for a code it does not know;
- ListServiceQuotas(ServiceCode[, QuotaCode]) → {"Quotas": [...]};
- RequestServiceQuotaIncrease(ServiceCode, QuotaCode, DesiredValue)
  → {"RequestedQuota": {..., "Status": "PENDING"}}; ResourceAlreadyExistsException
  while a request for the same quota is open; IllegalArgumentException when
  the desired value is not above the current one; any refusal set by a test;
- ListRequestedServiceQuotaChangeHistoryByQuota(ServiceCode, QuotaCode[, Status])
  → {"RequestedQuotas": [...]}.

The region of a call is read from the SigV4 credential scope, as AWS routes
by endpoint. Served by testbed/doubles/httpdouble.py (127.0.0.1, port 0).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from testbed.doubles.httpdouble import AWSError, JSON11Double, Request

TARGET_PREFIX = "ServiceQuotasV20190624."
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/servicequotas/aws4_request")

NAMES = {
    "L-DB2E81BA": "Running On-Demand G and VT instances",
    "L-3819A6DF": "All G and VT Spot Instance Requests",
    "L-417A185B": "Running On-Demand P instances",
    "L-7212CCBC": "All P Spot Instance Requests",
    "L-2C3B7624": "Running On-Demand Trn instances",
    "L-6B0D517C": "All Trn Spot Instance Requests",
    "L-1216C47A": "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
    "L-34B43A08": "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
}


class ServiceQuotasDouble(JSON11Double):
    """State and control. `default` is the value of every known code not set per region."""

    TARGET_PREFIX = TARGET_PREFIX
    BAD_REQUEST = "IllegalArgumentException"

    def __init__(self, default: float = 0.0, account: str = "123456789012") -> None:
        super().__init__()
        self.default = default
        self.account = account
        self.values: dict[tuple[str, str], float] = {}
        self.requests: list[dict[str, Any]] = []
        self.refusals: dict[tuple[str, str], tuple[str, str]] = {}
        self.operations: list[tuple[str, str]] = []  # (region, operation)

    # control ---------------------------------------------------------------
    def set(self, region: str, code: str, value: float) -> None:
        self.values[(region, code)] = value

    def refuse(self, region: str, code: str, kind: str = "QuotaExceededException",
               message: str = "You have exceeded the number of quota increase requests allowed.") -> None:
        self.refusals[(region, code)] = (kind, message)

    def resolve(self, request_id: str, status: str = "APPROVED") -> None:
        """Close a request as AWS support would (APPROVED raises the quota)."""
        for r in self.requests:
            if r["Id"] == request_id:
                r["Status"] = status
                if status == "APPROVED":
                    self.values[(r["_region"], r["QuotaCode"])] = r["DesiredValue"]

    def operate(self, op: str, handler, req: Request, body: dict[str, Any]) -> dict[str, Any]:
        m = _SCOPE.search(req.headers.get("authorization", ""))  # the region the request was signed for
        region = m.group(1) if m else "us-east-1"
        self.operations.append((region, op))
        return handler(region, body)

    # operations ------------------------------------------------------------
    def _quota(self, region: str, service: str, code: str) -> dict[str, Any]:
        if service != "ec2" or code not in NAMES:
            raise AWSError("NoSuchResourceException",
                         f"The request failed because the specified quota {code} does not exist.")
        return {"ServiceCode": service, "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
                "QuotaArn": f"arn:aws:servicequotas:{region}:{self.account}:{service}/{code}",
                "QuotaCode": code, "QuotaName": NAMES[code],
                "Value": self.values.get((region, code), self.default), "Unit": "None",
                "Adjustable": True, "GlobalQuota": False}

    def _op_GetServiceQuota(self, region: str, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return {"Quota": self._quota(region, body["ServiceCode"], body["QuotaCode"])}

    def _op_ListServiceQuotas(self, region: str, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        codes = [body["QuotaCode"]] if body.get("QuotaCode") else sorted(NAMES)
        return {"Quotas": [self._quota(region, body["ServiceCode"], c) for c in codes]}

    def _op_RequestServiceQuotaIncrease(self, region: str, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        service, code, desired = body["ServiceCode"], body["QuotaCode"], float(body["DesiredValue"])
        quota = self._quota(region, service, code)
        if (region, code) in self.refusals:
            raise AWSError(*self.refusals[(region, code)])
        if any(r["_region"] == region and r["QuotaCode"] == code and r["Status"] in ("PENDING", "CASE_OPENED")
               for r in self.requests):
            raise AWSError("ResourceAlreadyExistsException", "A request for this quota is already pending.")
        if desired <= quota["Value"]:
            raise AWSError("IllegalArgumentException", "The desired value must be greater than the current value.")
        now = time.time()
        req = {"Id": uuid.uuid4().hex, "CaseId": "", "ServiceCode": service, "ServiceName": quota["ServiceName"],
               "QuotaCode": code, "QuotaName": quota["QuotaName"], "DesiredValue": desired, "Status": "PENDING",
               "Created": now, "LastUpdated": now, "Requester": f"arn:aws:iam::{self.account}:user/test",
               "QuotaArn": quota["QuotaArn"], "GlobalQuota": False, "Unit": "None", "_region": region}
        self.requests.append(req)
        return {"RequestedQuota": _public(req)}

    def _op_ListRequestedServiceQuotaChangeHistoryByQuota(  # noqa: N802
            self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        self._quota(region, body["ServiceCode"], body["QuotaCode"])
        out = [_public(r) for r in self.requests
               if r["_region"] == region and r["QuotaCode"] == body["QuotaCode"]
               and (not body.get("Status") or r["Status"] == body["Status"])]
        return {"RequestedQuotas": out}


def _public(req: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in req.items() if not k.startswith("_")}
