"""A small AWS Account API endpoint (region opt-in), which moto does not implement.

From the AWS Account Management API reference (REST-JSON): `POST /enableRegion`
and `POST /getRegionOptStatus`, bodies `{"RegionName": ...}`. A region's
status is one of ENABLED, ENABLING, DISABLING, DISABLED, ENABLED_BY_DEFAULT;
enabling a region that is not DISABLED is a ConflictException, an unknown
region a ValidationException. Errors carry the `x-amzn-ErrorType` header and
a `{"message": ...}` body. Served by testbed/doubles/httpdouble.py (127.0.0.1, port 0).
"""

from __future__ import annotations

from typing import Any

from testbed.doubles.httpdouble import HTTPDouble, Reply, Request


class AccountDouble(HTTPDouble):
    def __init__(self, statuses: dict[str, str]) -> None:
        super().__init__()
        self.statuses = dict(statuses)
        self.operations: list[tuple[str, str]] = []  # (operation, region name)

    def route(self, req: Request) -> Reply:
        try:
            body = req.json() or {}
        except ValueError:
            body = {}
        status, payload, error = self._answer(req.path, body)
        return Reply(status, payload, {"x-amzn-ErrorType": error} if error else {})

    def _answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
        region = body.get("RegionName", "")
        if region not in self.statuses:
            return 400, {"message": f"Invalid region {region!r}"}, "ValidationException"
        if path == "/getRegionOptStatus":
            self.operations.append(("GetRegionOptStatus", region))
            return 200, {"RegionName": region, "RegionOptStatus": self.statuses[region]}, None
        if path == "/enableRegion":
            self.operations.append(("EnableRegion", region))
            if self.statuses[region] != "DISABLED":
                return 409, {"message": f"Region {region} is {self.statuses[region]}"}, "ConflictException"
            self.statuses[region] = "ENABLING"
            return 200, {}, None
        return 404, {"message": f"unknown path {path}"}, "ResourceNotFoundException"
