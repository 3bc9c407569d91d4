"""Fixtures for the AWS builder tests: a real moto server on 127.0.0.1:0 and the quotas double.

One moto server per session: starting one, and warming each region's EC2
backend, costs seconds, so tests share the account and keep apart the way
two meshes do in a real account: each test gets its own mesh name, and
everything is found by that name's tags. One boto3 session is shared too
(it caches the service models every new session would parse again).
Fake credentials and a disabled instance metadata lookup keep every
request on loopback.
"""

from __future__ import annotations

import itertools
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from infra.aws import Aws, aws_from_config
from infra.config import InfraConfig
from testbed.doubles.motoserver import moto_server
from testbed.doubles.servicequotas import ServiceQuotasDouble

@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


def moto_post(url: str, path: str, data: bytes = b"") -> None:
    req = urllib.request.Request(url + path, data=data, method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


@pytest.fixture
def moto(moto_url: str) -> str:
    """The shared moto account."""
    return moto_url


@pytest.fixture
def iam_enforced(moto_url: str):
    """A switch for moto's IAM policy evaluation; always switched off again afterwards."""

    def on() -> None:
        moto_post(moto_url, "/moto-api/reset-auth", b"0")

    try:
        yield on
    finally:
        moto_post(moto_url, "/moto-api/reset-auth", b"inf")


_names = itertools.count(1)


@pytest.fixture
def mesh() -> str:
    """A mesh name of this test's own."""
    return f"t{next(_names)}-{os.getpid()}"


@pytest.fixture(scope="session")
def shared_session(moto_url: str) -> Any:
    import boto3

    return boto3.session.Session()


@pytest.fixture(scope="session")
def shared_clients(moto_url: str) -> dict:
    return {}


class Sleeps:
    """An injected sleep that records instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, s: float) -> None:
        self.calls.append(s)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make_aws(moto: str, sleeps: Sleeps, shared_session: Any, shared_clients: dict):
    def make(cfg: InfraConfig, **kw: Any) -> Aws:
        kw.setdefault("sleep", sleeps)
        if "on_client" not in kw and "session_factory" not in kw:
            kw["clients"] = shared_clients  # clients made with these defaults are interchangeable
        kw.setdefault("session_factory", lambda: shared_session)
        return aws_from_config(cfg, endpoint_url=moto, **kw)
    return make


@pytest.fixture
def quotas_double() -> Iterator[ServiceQuotasDouble]:
    d = ServiceQuotasDouble().start()
    try:
        yield d
    finally:
        d.stop()


class Builder:
    """The infra API bound to the moto server, reusing one region selection per config shape.

    Selecting regions asks every region for its offerings; it is exercised on
    its own, and the scenarios reuse its result as issue-8 style callers may."""

    def __init__(self, make_aws: Any, cache: dict) -> None:
        self.make_aws = make_aws
        self.cache = cache

    def selection(self, cfg: InfraConfig) -> Any:
        from infra.regions import select_regions

        key = (cfg.main_region, cfg.instance_types, cfg.excluded_regions, cfg.opt_in_regions)
        if key not in self.cache:
            self.cache[key] = select_regions(cfg, self.make_aws(cfg))
        return self.cache[key]

    def plan(self, cfg: InfraConfig, aws: Aws | None = None) -> Any:
        from infra.plan import make_plan

        return make_plan(cfg, aws or self.make_aws(cfg), selection=self.selection(cfg))

    def apply(self, cfg: InfraConfig, aws: Aws | None = None) -> Any:
        from infra.apply import apply

        return apply(cfg, aws=aws or self.make_aws(cfg), selection=self.selection(cfg))


@pytest.fixture(scope="session")
def _selections() -> dict:
    return {}


@pytest.fixture
def builder(make_aws: Any, _selections: dict) -> Builder:
    return Builder(make_aws, _selections)


# -- clusters ---------------------------------------------------------------------

# moto has no Debian images; its Ubuntu image stands in (the image is a spec field).
TEST_IMAGE = {"image_owner": "099720109477", "image_name": "ubuntu/images/hvm-ssd/ubuntu-xenial-16.04-amd64-server-*",
              "package": "https://example.com/mesh-0.1.0-py3-none-any.whl"}


@pytest.fixture(scope="session")
def sts(moto_url: str):
    """STS that enforces the role's external id (moto's own accepts any)."""
    from testbed.doubles.sts import StsDouble

    d = StsDouble(moto_url).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="session")
def base_aws(moto_url: str, sts: Any, shared_session: Any) -> Aws:
    """The user's own credentials (moto's default user)."""
    return Aws(lambda: shared_session, endpoint_url=moto_url, endpoint_urls={"sts": sts.url},
               sleep=lambda s: None)


@pytest.fixture(scope="session")
def cluster_role(base_aws: Aws) -> Any:
    from infra.cluster.access import create_role

    return create_role(base_aws)


@pytest.fixture(scope="session")
def _cluster_selections() -> dict:
    return {}


@pytest.fixture(scope="session")
def pricing_double() -> Iterator[Any]:
    """The Price List (moto has none), seeded with list prices."""
    from testbed.doubles.pricing import PricingDouble

    d = PricingDouble().start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="session")
def cluster_quotas() -> Iterator[ServiceQuotasDouble]:
    """EC2 vCPU quotas for the cluster tests: ample everywhere (a test that needs a shortfall has its own)."""
    d = ServiceQuotasDouble(default=10000.0).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def cluster_ops(moto: str, base_aws: Aws, cluster_role: Any, tmp_path: Any, sleeps: Sleeps,
                _cluster_selections: dict, monkeypatch: Any, pricing_double: Any, cluster_quotas: Any):
    """Ops through the assumed cluster role; contexts and secrets under this test's tmp_path;
    prices from the Price List double (memory cache), quotas from the Service Quotas double."""
    from infra.cluster.access import assume
    from infra.cluster.lifecycle import Ops
    from infra.cluster.registry import Registry

    monkeypatch.setenv("MESHCTL_CONFIG_DIR", str(tmp_path / "meshctl"))

    def make(**aws_kw: Any) -> Ops:
        factory = assume(base_aws, cluster_role.role_arn, cluster_role.external_id, "us-east-1")
        from infra.prices import Prices

        aws_kw.setdefault("sleep", sleeps)
        aws_kw.setdefault("endpoint_urls", {"pricing": pricing_double.url, "service-quotas": cluster_quotas.url})
        aws = Aws(factory, endpoint_url=moto, **aws_kw)
        return Ops(aws, Registry(aws), lambda n: tmp_path / "meshctl" / "clusters" / n, sleep=sleeps,
                   selections=_cluster_selections, prices=Prices(aws))
    return make
