"""What an instance costs per hour: on-demand from the AWS Price List, spot from EC2, both cached.

On-demand prices come from the Price List Query API (`pricing:GetProducts`,
served from us-east-1 for every region), filtered down to the one product a
mesh instance runs as: Linux, shared tenancy, no pre-installed software,
capacitystatus=Used (the other capacity lines are reservations). The price
is the OnDemand term's USD per hour.

Spot prices come from `ec2:DescribeSpotPriceHistory` in the instance's
region with StartTime=now, which returns the current price in each zone;
a region's spot price is the median over its zones (a node's zone is not
always known, and the median is what a placement across zones pays).

Both are cached in one JSON file (~/.cache/meshctl/prices.json, or memory
only when no path is given): on-demand prices for a day (AWS changes them
rarely), spot prices for an hour (they move with demand). A price AWS does
not have is cached as unknown for as long, so a typo does not call again.

Network charges are AWS list prices in us-east-1, not looked up: a Network
Load Balancer's hour and one NLCU-hour (an idle mesh's control traffic is
far below one NLCU: 800 new flows/min, 100k active flows, 1 GB/h), and
the public IPv4 charge per address (Elastic IP, each NLB zone, each instance).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.aws import Aws, AwsError

PRICING_REGION = "us-east-1"  # the Price List endpoint; it prices every region
ON_DEMAND_TTL_S = 24 * 3600.0
SPOT_TTL_S = 3600.0

# $/h, us-east-1 list prices (aws.amazon.com/elasticloadbalancing/pricing, /vpc/pricing).
NLB_HOUR = 0.0225
NLB_LCU_HOUR = 0.006
NLB_LCU_ESTIMATE = 1.0
PUBLIC_IPV4_HOUR = 0.005

# The Price List names regions by location, not code.
LOCATIONS = {
    "us-east-1": "US East (N. Virginia)", "us-east-2": "US East (Ohio)", "us-west-1": "US West (N. California)",
    "us-west-2": "US West (Oregon)", "ca-central-1": "Canada (Central)", "ca-west-1": "Canada West (Calgary)",
    "sa-east-1": "South America (Sao Paulo)", "eu-west-1": "EU (Ireland)", "eu-west-2": "EU (London)",
    "eu-west-3": "EU (Paris)", "eu-central-1": "EU (Frankfurt)", "eu-central-2": "EU (Zurich)",
    "eu-north-1": "EU (Stockholm)", "eu-south-1": "EU (Milan)", "eu-south-2": "EU (Spain)",
    "ap-south-1": "Asia Pacific (Mumbai)", "ap-south-2": "Asia Pacific (Hyderabad)",
    "ap-northeast-1": "Asia Pacific (Tokyo)", "ap-northeast-2": "Asia Pacific (Seoul)",
    "ap-northeast-3": "Asia Pacific (Osaka)", "ap-southeast-1": "Asia Pacific (Singapore)",
    "ap-southeast-2": "Asia Pacific (Sydney)", "ap-southeast-3": "Asia Pacific (Jakarta)",
    "ap-southeast-4": "Asia Pacific (Melbourne)", "ap-east-1": "Asia Pacific (Hong Kong)",
    "me-south-1": "Middle East (Bahrain)", "me-central-1": "Middle East (UAE)", "il-central-1": "Israel (Tel Aviv)",
    "af-south-1": "Africa (Cape Town)",
}


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meshctl" / "prices.json"


def product_filters(instance_type: str, region: str) -> list[dict[str, str]]:
    where = ({"Field": "location", "Value": LOCATIONS[region]} if region in LOCATIONS
             else {"Field": "regionCode", "Value": region})
    return [{"Type": "TERM_MATCH", **f} for f in (
        {"Field": "instanceType", "Value": instance_type}, where, {"Field": "operatingSystem", "Value": "Linux"},
        {"Field": "tenancy", "Value": "Shared"}, {"Field": "preInstalledSw", "Value": "NA"},
        {"Field": "capacitystatus", "Value": "Used"})]


def on_demand_from(price_list: list[str]) -> float | None:
    """The hourly USD price in GetProducts' PriceList (JSON strings); None when it names none."""
    prices = []
    for item in price_list:
        doc = json.loads(item) if isinstance(item, str) else item
        for term in doc.get("terms", {}).get("OnDemand", {}).values():
            for dim in term.get("priceDimensions", {}).values():
                usd = dim.get("pricePerUnit", {}).get("USD")
                if usd is not None and dim.get("unit", "Hrs") in ("Hrs", "Hours"):
                    prices.append(float(usd))
    nonzero = [p for p in prices if p > 0]
    return min(nonzero) if nonzero else None


class Prices:
    """Hourly prices by (instance type, region, lifecycle); thread-safe, cached, calls counted by `aws`."""

    def __init__(self, aws: Aws, path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.aws = aws
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, list[Any]] = self._load()
        self.lookups = 0  # AWS calls made (cache misses)

    def _load(self) -> dict[str, list[Any]]:
        if self.path is None:
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {k: v for k, v in raw.items() if isinstance(v, list) and len(v) == 2}
        except (OSError, ValueError, AttributeError):
            return {}  # no cache, or a damaged one: start over

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._entries, sort_keys=True))
            tmp.replace(self.path)
        except OSError:
            pass  # a cache that cannot be written only costs calls

    def _cached(self, key: str, ttl: float, fetch: Callable[[], float | None]) -> float | None:
        now = self.clock()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and now - hit[0] < ttl:
                return hit[1]
        value = fetch()
        with self._lock:
            self.lookups += 1
            self._entries[key] = [now, value]
            self._save()
        return value

    def on_demand(self, instance_type: str, region: str) -> float | None:
        def fetch() -> float | None:
            items: list[str] = []
            token = None
            for _ in range(10):  # one product matches; pages only if AWS splits it
                kw = {"NextToken": token} if token else {}
                out = self.aws.call("pricing", PRICING_REGION, "GetProducts", ServiceCode="AmazonEC2",
                                    FormatVersion="aws_v1", Filters=product_filters(instance_type, region), **kw)
                items += out.get("PriceList", [])
                token = out.get("NextToken")
                if not token:
                    break
            return on_demand_from(items)
        return self._cached(f"on-demand/{region}/{instance_type}", ON_DEMAND_TTL_S, fetch)

    def spot(self, instance_type: str, region: str) -> float | None:
        def fetch() -> float | None:
            import datetime as dt

            try:
                out = self.aws.call("ec2", region, "DescribeSpotPriceHistory", InstanceTypes=[instance_type],
                                    ProductDescriptions=["Linux/UNIX"], StartTime=dt.datetime.now(dt.timezone.utc))
            except AwsError as e:
                if e.aws_code in ("InvalidParameterValue", "UnsupportedOperation"):
                    return None
                raise
            latest: dict[str, tuple[str, float]] = {}
            for p in out.get("SpotPriceHistory", []):
                zone, ts = p.get("AvailabilityZone", ""), str(p.get("Timestamp", ""))
                if zone not in latest or ts > latest[zone][0]:
                    latest[zone] = (ts, float(p["SpotPrice"]))
            return statistics.median(v for _, v in latest.values()) if latest else None
        return self._cached(f"spot/{region}/{instance_type}", SPOT_TTL_S, fetch)

    def hourly(self, instance_type: str, region: str, lifecycle: str = "on-demand") -> float | None:
        return self.spot(instance_type, region) if lifecycle == "spot" else self.on_demand(instance_type, region)


__all__ = ["Prices", "product_filters", "on_demand_from", "default_cache_path", "NLB_HOUR", "NLB_LCU_HOUR",
           "NLB_LCU_ESTIMATE", "PUBLIC_IPV4_HOUR"]
