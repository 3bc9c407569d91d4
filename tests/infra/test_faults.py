"""Bad input and faults, each with one clear error: throttling, credentials, unknown names."""

from __future__ import annotations

import random

import pytest

from infra.aws import aws_from_config
from infra.regions import select_regions
from meshcore.errors import ConfigError, Unauthenticated, Unavailable
from tests.infra.helpers import few_config

THROTTLED = (b"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error><Code>RequestLimitExceeded</Code>"
             b"<Message>Request limit exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>")


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: object):
        yield self.body


def throttle(operation: str, times: int):
    """An on_client hook making EC2 answer `operation` with RequestLimitExceeded `times` times,
    as EC2 does under its request-rate limits (HTTP 503 with that code)."""
    from botocore.awsrequest import AWSResponse

    left = {"n": times}

    def before_send(request, **_: object):
        if left["n"] > 0:
            left["n"] -= 1
            return AWSResponse(request.url, 503, {"Content-Type": "text/xml"}, _Raw(THROTTLED))
        return None

    def hook(client) -> None:
        if client.meta.service_model.service_name == "ec2":
            client.meta.events.register(f"before-send.ec2.{operation}", before_send)

    return hook, left


def test_throttled_calls_are_retried_with_bounded_backoff(moto, mesh, builder, make_aws, sleeps) -> None:
    cfg = few_config(mesh, backoff_base_s=0.5, backoff_max_s=4.0)
    hook, left = throttle("CreateVpc", 4)
    aws = make_aws(cfg, on_client=hook, rng=random.Random(7))
    result = builder.apply(cfg, aws)
    assert result.ok and left["n"] == 0
    assert aws.throttled == 4 and len(sleeps.calls) == 4
    caps = [min(4.0, 0.5 * 2 ** i) for i in range(4)]
    assert all(0 <= s <= cap for s, cap in zip(sleeps.calls, caps))
    assert builder.plan(cfg).empty


def test_a_throttle_that_never_eases_fails_with_one_line(moto, mesh, builder, make_aws, sleeps) -> None:
    cfg = few_config(mesh, max_attempts=3)
    hook, _ = throttle("DescribeVpcs", 1000)
    aws = make_aws(cfg, on_client=hook)
    with pytest.raises(Unavailable) as e:
        builder.plan(cfg, aws)
    assert "ec2:DescribeVpcs" in str(e.value) and "still throttled after 3 attempts" in str(e.value)
    attempts = aws.operations["ec2:DescribeVpcs"]
    assert attempts % 3 == 0 and len(sleeps.calls) == attempts // 3 * 2  # each call: 3 attempts, 2 waits


def test_missing_credentials(moto, monkeypatch) -> None:
    import boto3

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    cfg = few_config("nocreds")
    aws = aws_from_config(cfg, lambda: boto3.session.Session(), endpoint_url=moto)
    with pytest.raises(Unauthenticated) as e:
        select_regions(cfg, aws)
    assert "no AWS credentials found" in str(e.value) and "AWS_PROFILE" in str(e.value)


def test_unknown_profile(moto, monkeypatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    cfg = few_config("noprofile")
    aws = aws_from_config(cfg, lambda: boto3.session.Session(), endpoint_url=moto)
    with pytest.raises(Unauthenticated, match="no-such-profile"):
        select_regions(cfg, aws)


def test_unknown_instance_type(moto, make_aws) -> None:
    cfg = few_config("x", instance_types=("g6.xlarge", "g6.xlarg"))
    with pytest.raises(ConfigError) as e:
        select_regions(cfg, make_aws(cfg))
    assert "unknown instance type 'g6.xlarg'" in str(e.value)


def test_unknown_main_region(moto, make_aws) -> None:
    cfg = few_config("x", main_region="us-north-9")
    with pytest.raises(ConfigError) as e:
        select_regions(cfg, make_aws(cfg))
    assert "unknown main region 'us-north-9'" in str(e.value)


def test_default_selection_excludes_rogue_and_not_opted_in_regions(moto, make_aws) -> None:
    from infra.config import InfraConfig

    cfg = InfraConfig(name="x")
    sel = select_regions(cfg, make_aws(cfg))
    assert sel.selected[0] == "us-east-1" and "us-east-2" in sel.selected
    info = sel.info("ap-southeast-5")  # offers g6 but is LMRun's rogue region
    assert not info.selected and "excluded" in info.reason
    opt = sel.info("eu-central-2")  # offers g6, not opted in
    assert not opt.selected and opt.opt_in_status == "not-opted-in" and "opt_in_regions" in opt.reason
    assert sel.vcpus == {"g6.xlarge": 4, "g6.2xlarge": 8, "g6.12xlarge": 48}
    asked = InfraConfig(name="x", opt_in_regions=("eu-central-2",))
    sel2 = select_regions(asked, make_aws(asked))
    assert "apply asks AWS to enable it" in sel2.info("eu-central-2").reason


def test_opt_in_regions_are_enabled_only_when_listed(moto, make_aws) -> None:
    from infra.config import InfraConfig
    from infra.regions import enable_requested
    from testbed.doubles.account import AccountDouble

    d = AccountDouble({"eu-central-2": "DISABLED", "ap-south-2": "DISABLED", "me-central-1": "ENABLING"}).start()
    try:
        cfg = InfraConfig(name="x", opt_in_regions=("eu-central-2", "me-central-1"))
        aws = make_aws(cfg, endpoint_urls={"account": d.url})
        sel = select_regions(cfg, aws)
        assert enable_requested(cfg, aws, sel) == {"eu-central-2": "ENABLING", "me-central-1": "ENABLING"}
        assert ("EnableRegion", "eu-central-2") in d.operations
        assert not any(region == "ap-south-2" for _, region in d.operations)  # offers g6, but never asked for
        assert [c for c in d.operations if c[0] == "EnableRegion"] == [("EnableRegion", "eu-central-2")]
        # asking again while AWS is still enabling it files nothing new
        enable_requested(cfg, aws, sel)
        assert [c for c in d.operations if c[0] == "EnableRegion"] == [("EnableRegion", "eu-central-2")]
    finally:
        d.stop()
