"""A small AWS Price List endpoint, for what moto does not implement (pricing:GetProducts).

Written from the AWS Price List Query API reference: the JSON 1.1 protocol
(POST /, `X-Amz-Target: AWSPriceListService.<Operation>`, JSON bodies,
errors as HTTP 400 with `{"__type": ..., "Message": ...}`), and the one
operation meshctl uses:

- GetProducts(ServiceCode, Filters[], FormatVersion, NextToken, MaxResults)
  → {"FormatVersion": "aws_v1", "PriceList": [<JSON string>, ...], "NextToken"?}.
  Each PriceList item is a JSON *string* (not an object) holding `product`
  (`attributes` such as instanceType, location, operatingSystem, tenancy,
  preInstalledSw, capacitystatus) and `terms.OnDemand.<offer>.priceDimensions
  .<rate>.pricePerUnit.USD`, as AWS sends it.

Refused as AWS refuses: an unknown ServiceCode (NotFoundException), a
filter Type outside TERM_MATCH/EQUALS/CONTAINS/ANY_OF/NONE_OF, a filter
without Field or Value, MaxResults outside 1..100, a NextToken it did not
issue (InvalidParameterException / InvalidNextTokenException).

The catalog holds EC2 compute products per (instance type, region): the
Linux/Shared/NA/Used product a cluster runs on, and beside it the products
the filters must leave out (Windows, Dedicated, a reserved-capacity line), so
a client that forgets a filter gets several prices and notices. Served by
testbed/doubles/httpdouble.py (127.0.0.1, port 0).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from testbed.doubles.httpdouble import AWSError, JSON11Double, Request

TARGET_PREFIX = "AWSPriceListService."
FILTER_TYPES = ("TERM_MATCH", "EQUALS", "CONTAINS", "ANY_OF", "NONE_OF")
SERVICES = ("AmazonEC2", "AWSELB", "AmazonVPC")

# The Price List's location names (what the `location` filter matches).
LOCATIONS = {"us-east-1": "US East (N. Virginia)", "us-east-2": "US East (Ohio)",
             "us-west-1": "US West (N. California)", "us-west-2": "US West (Oregon)",
             "eu-west-1": "EU (Ireland)", "eu-central-1": "EU (Frankfurt)", "ap-south-1": "Asia Pacific (Mumbai)",
             "ap-northeast-1": "Asia Pacific (Tokyo)"}

# us-east-1 Linux on-demand $/h from aws.amazon.com/ec2/pricing (other regions: see REGION_FACTOR).
SEED = {"m6i.large": 0.096, "m6i.xlarge": 0.192, "t3.micro": 0.0104, "g6.xlarge": 0.8048, "g6.2xlarge": 0.9776,
        "g6.12xlarge": 4.6016, "g5.xlarge": 1.006, "trn1.2xlarge": 1.34375, "p4d.24xlarge": 32.7726}
SPECS = {"m6i.large": (2, "8 GiB", "0"), "m6i.xlarge": (4, "16 GiB", "0"), "t3.micro": (2, "1 GiB", "0"),
         "g6.xlarge": (4, "16 GiB", "1"), "g6.2xlarge": (8, "32 GiB", "1"), "g6.12xlarge": (48, "192 GiB", "4"),
         "g5.xlarge": (4, "16 GiB", "1"), "trn1.2xlarge": (8, "32 GiB", "0"), "p4d.24xlarge": (96, "1152 GiB", "8")}
REGION_FACTOR = {"us-east-1": 1.0, "us-east-2": 1.0, "us-west-2": 1.0, "us-west-1": 1.17, "eu-west-1": 1.12,
                 "eu-central-1": 1.2, "ap-south-1": 1.06, "ap-northeast-1": 1.3}


class PricingDouble(JSON11Double):
    """State and control: `set_price` adds or changes the Linux/Shared/Used product of a type in a region."""

    TARGET_PREFIX = TARGET_PREFIX
    MESSAGE_KEY = "Message"
    BAD_REQUEST = "InvalidParameterException"

    def __init__(self, seed: bool = True) -> None:
        super().__init__()
        self.products: list[dict[str, Any]] = []
        self.operations: list[tuple[str, dict[str, Any]]] = []  # (operation, request body)
        self._tokens: dict[str, int] = {}
        if seed:
            for region, factor in REGION_FACTOR.items():
                for itype, usd in SEED.items():
                    self.set_price(itype, region, round(usd * factor, 6))

    # control ---------------------------------------------------------------
    def set_price(self, instance_type: str, region: str, usd_per_hour: float) -> None:
        self.products = [p for p in self.products
                         if not (p["product"]["attributes"]["instanceType"] == instance_type
                                 and p["product"]["attributes"]["regionCode"] == region)]
        for os_, tenancy, cap, factor in (("Linux", "Shared", "Used", 1.0), ("Windows", "Shared", "Used", 1.6),
                                          ("Linux", "Dedicated", "Used", 1.1),
                                          ("Linux", "Shared", "UnusedCapacityReservation", 1.0)):
            self.products.append(_product(instance_type, region, os_, tenancy, cap, usd_per_hour * factor))

    def operate(self, op: str, handler, req: Request, body: dict[str, Any]) -> dict[str, Any]:
        self.operations.append((op, body))
        return handler(body)

    # operations ------------------------------------------------------------
    def _op_GetProducts(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        service = body.get("ServiceCode")
        if not service:
            raise AWSError("InvalidParameterException", "ServiceCode is required")
        if service not in SERVICES:
            raise AWSError("NotFoundException", f"Service Code {service} not found")
        filters = body.get("Filters") or []
        for f in filters:
            if f.get("Type") not in FILTER_TYPES:
                raise AWSError("InvalidParameterException",
                             f"Invalid filter type {f.get('Type')!r}: valid types are {', '.join(FILTER_TYPES)}")
            if not f.get("Field") or "Value" not in f:
                raise AWSError("InvalidParameterException", "A filter needs Field and Value")
        size = int(body.get("MaxResults", 100))
        if not 1 <= size <= 100:
            raise AWSError("InvalidParameterException", "MaxResults must be between 1 and 100")
        start = 0
        if body.get("NextToken"):
            if body["NextToken"] not in self._tokens:
                raise AWSError("InvalidNextTokenException", "The NextToken is not valid")
            start = self._tokens.pop(body["NextToken"])
        found = [p for p in self.products if p["serviceCode"] == service and all(_match(p, f) for f in filters)]
        out: dict[str, Any] = {"FormatVersion": "aws_v1",
                               "PriceList": [json.dumps(p) for p in found[start:start + size]]}
        if start + size < len(found):
            token = uuid.uuid4().hex
            self._tokens[token] = start + size
            out["NextToken"] = token
        return out


def _match(product: dict[str, Any], f: dict[str, Any]) -> bool:
    attrs = product["product"]["attributes"]
    have = attrs.get(f["Field"], product["product"].get(f["Field"]))
    value, kind = f["Value"], f["Type"]
    if have is None:
        return kind == "NONE_OF"
    if kind in ("TERM_MATCH", "EQUALS"):
        return have.lower() == value.lower() if kind == "TERM_MATCH" else have == value
    if kind == "CONTAINS":
        return value.lower() in have.lower()
    choices = [v.strip() for v in value.split(",")]
    return (have in choices) if kind == "ANY_OF" else (have not in choices)


def _product(itype: str, region: str, os_: str, tenancy: str, capacity: str, usd: float) -> dict[str, Any]:
    sku = hashlib.sha256(f"{itype}/{region}/{os_}/{tenancy}/{capacity}".encode()).hexdigest()[:16].upper()
    vcpu, memory, gpu = SPECS.get(itype, (2, "4 GiB", "0"))
    offer, rate = "JRTCKXETXF", "6YS6EN2CT7"
    return {
        "product": {"productFamily": "Compute Instance", "sku": sku, "attributes": {
            "servicecode": "AmazonEC2", "instanceType": itype, "instanceFamily": "GPU instance" if gpu != "0"
            else "General purpose", "location": LOCATIONS.get(region, region), "locationType": "AWS Region",
            "regionCode": region, "operatingSystem": os_, "tenancy": tenancy, "preInstalledSw": "NA",
            "capacitystatus": capacity, "licenseModel": "No License required", "vcpu": str(vcpu), "memory": memory,
            "gpu": gpu, "usagetype": f"BoxUsage:{itype}", "operation": "RunInstances"}},
        "serviceCode": "AmazonEC2",
        "terms": {"OnDemand": {f"{sku}.{offer}": {
            "offerTermCode": offer, "sku": sku, "effectiveDate": "2024-06-01T00:00:00Z", "termAttributes": {},
            "priceDimensions": {f"{sku}.{offer}.{rate}": {
                "unit": "Hrs", "beginRange": "0", "endRange": "Inf", "appliesTo": [], "rateCode": f"{sku}.{offer}.{rate}",
                "description": f"${usd:.4f} per On Demand {os_} {itype} Instance Hour",
                "pricePerUnit": {"USD": f"{usd:.10f}"}}}}}},
        "version": "20240601000000", "publicationDate": "2024-06-01T00:00:00Z"}
