"""What the builder relies on from STS AssumeRole with an external id, checked against the double and AWS.

Always runs against testbed/doubles/sts.py, backed by a moto server of this
module's own (on 127.0.0.1, with the fake credentials of tests/infra/conftest.py
set only while a double test runs), in whose IAM each test creates a role that
trusts the account only with the right `sts:ExternalId`.

With MESH_CONTRACT_AWS=1, MESH_CONTRACT_ROLE_ARN and MESH_CONTRACT_EXTERNAL_ID
set, the shared cases also run against real STS (region
MESH_CONTRACT_AWS_REGION, default us-east-1) with the caller's own
credentials. That role must trust the caller (its account root, or the caller
itself) only under `"Condition": {"StringEquals": {"sts:ExternalId": <id>}}`,
and allow sessions of at least one hour. Nothing is created there; the
"missing" role is a random name in the role's account. Without the
variables the real variant does not exist (nothing is skipped). The cases
that need a switch only the double has (faults, its request log, trust
policies of our choosing) run against the double alone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from testbed.doubles.sts import StsDouble, trust_allows
from testbed.doubles.motoserver import FAKE_ENV, moto_server

ACCOUNT = "123456789012"  # moto's
REAL = (os.environ.get("MESH_CONTRACT_AWS") == "1" and bool(os.environ.get("MESH_CONTRACT_ROLE_ARN"))
        and bool(os.environ.get("MESH_CONTRACT_EXTERNAL_ID")))
TARGETS = ["double"] + (["real"] if REAL else [])
REGION = os.environ.get("MESH_CONTRACT_AWS_REGION", "us-east-1")
# The caller's own AWS settings, as they were before any fixture put fake ones in place.
REAL_ENV = {k: v for k, v in os.environ.items() if k.startswith("AWS_")} if REAL else {}
# One attempt, bounded waits: a refusal must show as itself, not as retries.
ONE_TRY = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=15)


def trust(external_id: str | list[str] | None, principal: Any = None, **extra: Any) -> dict[str, Any]:
    stmt: dict[str, Any] = {"Effect": "Allow", "Principal": principal or {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                            "Action": "sts:AssumeRole", **extra}
    if external_id is not None:
        stmt["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return {"Version": "2012-10-17", "Statement": [stmt]}


@dataclass
class Target:
    """One STS to test: the double (with its moto server) or AWS, and a role requiring `external_id`."""

    role_arn: str
    external_id: str
    endpoint: str | None = None  # the double's URL; None for AWS
    moto: str | None = None
    double: StsDouble | None = None

    @property
    def account(self) -> str:
        return self.role_arn.split(":")[4]

    @property
    def role_name(self) -> str:
        return self.role_arn.rsplit("/", 1)[1]

    def sts(self, creds: dict[str, str] | None = None, config: Config = ONE_TRY) -> Any:
        keys = {}
        if creds:
            keys = {"aws_access_key_id": creds["AccessKeyId"], "aws_secret_access_key": creds["SecretAccessKey"],
                    "aws_session_token": creds["SessionToken"]}
        return boto3.session.Session().client("sts", region_name=REGION, endpoint_url=self.endpoint, config=config,
                                              **keys)

    def assume(self, client: Any = None, **kw: Any) -> dict[str, Any]:
        kw.setdefault("RoleArn", self.role_arn)
        kw.setdefault("RoleSessionName", f"mesh-contract-{secrets.token_hex(4)}")
        return (client or self.sts()).assume_role(**kw)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_server(env=None) as url:  # credentials are set per test: the real variant keeps the caller's
        yield url


@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in FAKE_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def double(moto_endpoint: str, fake_env: None) -> Iterator[StsDouble]:
    d = StsDouble(moto_endpoint).start()
    try:
        yield d
    finally:
        d.stop()


def make_role(moto: str, policy: dict[str, Any] | str, path: str = "/mesh-contract/", **kw: Any) -> str:
    iam = boto3.client("iam", endpoint_url=moto, region_name="us-east-1", config=ONE_TRY)
    doc = policy if isinstance(policy, str) else json.dumps(policy)
    name = f"mesh-contract-{secrets.token_hex(4)}"
    return iam.create_role(RoleName=name, Path=path, AssumeRolePolicyDocument=doc, **kw)["Role"]["Arn"]


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Target:
    if request.param == "real":
        for k in [k for k in os.environ if k.startswith("AWS_")]:
            monkeypatch.delenv(k)
        for k, v in REAL_ENV.items():
            monkeypatch.setenv(k, v)
        return Target(os.environ["MESH_CONTRACT_ROLE_ARN"], os.environ["MESH_CONTRACT_EXTERNAL_ID"])
    d: StsDouble = request.getfixturevalue("double")
    external_id = f"mesh-{secrets.token_hex(8)}"
    return Target(make_role(d.iam_endpoint, trust(external_id)), external_id, d.url, d.iam_endpoint, d)


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, str]:
    r = excinfo.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"]["Message"]


def denial(role_arn: str) -> str:
    return f"is not authorized to perform: sts:AssumeRole on resource: {role_arn}"


# --- the contract -------------------------------------------------------------------
def test_right_external_id_gives_usable_credentials(target: Target) -> None:
    session = f"mesh-contract-{secrets.token_hex(4)}"
    before = dt.datetime.now(dt.timezone.utc)
    out = target.assume(ExternalId=target.external_id, RoleSessionName=session)
    creds, user = out["Credentials"], out["AssumedRoleUser"]
    assert creds["AccessKeyId"].startswith("ASIA") and creds["SecretAccessKey"] and creds["SessionToken"]
    expected = before + dt.timedelta(seconds=3600)
    assert abs((creds["Expiration"] - expected).total_seconds()) < 120
    arn = f"arn:aws:sts::{target.account}:assumed-role/{target.role_name}/{session}"
    assert user["Arn"] == arn
    assert user["AssumedRoleId"].startswith("AROA") and user["AssumedRoleId"].endswith(":" + session)

    me = target.sts(creds).get_caller_identity()
    assert (me["Arn"], me["Account"], me["UserId"]) == (arn, target.account, user["AssumedRoleId"])
    if target.moto:  # and moto, where the builder goes next, takes them
        ec2 = boto3.client("ec2", endpoint_url=target.moto, region_name="us-east-1", config=ONE_TRY,
                           aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                           aws_session_token=creds["SessionToken"])
        assert "us-east-1" in [r["RegionName"] for r in ec2.describe_regions()["Regions"]]


def test_duration_seconds_sets_the_expiry(target: Target) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    creds = target.assume(ExternalId=target.external_id, DurationSeconds=900)["Credentials"]
    assert abs((creds["Expiration"] - (before + dt.timedelta(seconds=900))).total_seconds()) < 120


@pytest.mark.parametrize("external_id", ["wrong", "missing"])
def test_wrong_or_missing_external_id_is_access_denied(target: Target, external_id: str) -> None:
    kw = {"ExternalId": target.external_id + "-wrong"} if external_id == "wrong" else {}
    with pytest.raises(ClientError) as e:
        target.assume(**kw)
    status, code, message = error_of(e)
    assert (status, code) == (403, "AccessDenied")
    assert message.startswith("User: arn:aws:") and denial(target.role_arn) in message


def test_nonexistent_role_is_access_denied(target: Target) -> None:
    missing = f"arn:aws:iam::{target.account}:role/mesh-contract-missing-{secrets.token_hex(6)}"
    with pytest.raises(ClientError) as e:
        target.assume(RoleArn=missing, ExternalId=target.external_id)
    status, code, message = error_of(e)
    assert (status, code) == (403, "AccessDenied") and denial(missing) in message


def test_malformed_arn_is_a_validation_error(target: Target) -> None:
    with pytest.raises(ClientError) as e:
        target.assume(RoleArn="not-an-arn-mesh-contract", ExternalId=target.external_id)
    assert error_of(e) == (400, "ValidationError", "not-an-arn-mesh-contract is invalid")


@pytest.mark.parametrize("seconds, bound", [(899, "greater than or equal to 900"),
                                            (43201, "less than or equal to 43200")])
def test_duration_out_of_range_is_a_validation_error(target: Target, seconds: int, bound: str) -> None:
    # botocore itself refuses 899 before sending; the service is what is under test here.
    client = target.sts(config=ONE_TRY.merge(Config(parameter_validation=False)))
    with pytest.raises(ClientError) as e:
        target.assume(client, ExternalId=target.external_id, DurationSeconds=seconds)
    status, code, message = error_of(e)
    assert (status, code) == (400, "ValidationError")
    assert f"Value '{seconds}' at 'durationSeconds' failed to satisfy constraint: Member must have value {bound}" \
        in message


# --- the double's own switches ----------------------------------------------------------
@pytest.fixture
def dtarget(double: StsDouble) -> Target:
    external_id = f"mesh-{secrets.token_hex(8)}"
    return Target(make_role(double.iam_endpoint, trust(external_id)), external_id, double.url,
                  double.iam_endpoint, double)


def test_throttling_fault(dtarget: Target) -> None:
    d = dtarget.double
    assert d is not None
    d.throttle_next(1)
    with pytest.raises(ClientError) as e:
        dtarget.assume(ExternalId=dtarget.external_id)
    assert error_of(e) == (400, "Throttling", "Rate exceeded")
    # Consumed: boto3's own retry gets through once the fault is spent.
    d.throttle_next(1)
    retrying = dtarget.sts(config=Config(retries={"mode": "standard", "total_max_attempts": 2},
                                         connect_timeout=5, read_timeout=15))
    assert dtarget.assume(retrying, ExternalId=dtarget.external_id)["Credentials"]["AccessKeyId"]
    assert [r["Action"] for r in d.requests] == ["AssumeRole"] * 3
    assert all(r.get("ExternalId") == dtarget.external_id for r in d.requests)


def test_request_log_shows_whether_external_id_was_sent(dtarget: Target) -> None:
    d = dtarget.double
    assert d is not None
    dtarget.assume(ExternalId=dtarget.external_id, RoleSessionName="with-id")
    with pytest.raises(ClientError):
        dtarget.assume(RoleSessionName="without-id")
    assert [(r["RoleSessionName"], r.get("ExternalId"), r["Version"]) for r in d.requests] == [
        ("with-id", dtarget.external_id, "2011-06-15"), ("without-id", None, "2011-06-15")]


def test_access_denied_message_names_the_caller_exactly(dtarget: Target) -> None:
    with pytest.raises(ClientError) as e:
        dtarget.assume(ExternalId="wrong-id")
    assert error_of(e)[2] == (f"User: arn:aws:iam::{ACCOUNT}:user/moto is not authorized to perform: "
                              f"sts:AssumeRole on resource: {dtarget.role_arn}")


def test_caller_identity_of_the_environment_credentials(double: StsDouble) -> None:
    me = boto3.client("sts", endpoint_url=double.url, region_name="us-east-1", config=ONE_TRY).get_caller_identity()
    assert (me["Account"], me["Arn"]) == (ACCOUNT, f"arn:aws:iam::{ACCOUNT}:user/moto") and me["UserId"]


def test_other_account_wrong_path_and_role_limits(dtarget: Target) -> None:
    other = dtarget.role_arn.replace(ACCOUNT, "210987654321")
    wrong_path = dtarget.role_arn.replace("/mesh-contract/", "/elsewhere/")
    for arn in (other, wrong_path):
        with pytest.raises(ClientError) as e:
            dtarget.assume(RoleArn=arn, ExternalId=dtarget.external_id)
        assert error_of(e)[:2] == (403, "AccessDenied")
    with pytest.raises(ClientError) as e:  # the role's MaxSessionDuration is moto's default, 3600
        dtarget.assume(ExternalId=dtarget.external_id, DurationSeconds=7200)
    assert error_of(e) == (400, "ValidationError",
                           "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.")


def test_expired_and_foreign_session_credentials_are_refused(dtarget: Target) -> None:
    d = dtarget.double
    assert d is not None
    creds = dtarget.assume(ExternalId=dtarget.external_id)["Credentials"]
    with pytest.raises(ClientError) as e:
        dtarget.sts({**creds, "SessionToken": "not-the-token"}).get_caller_identity()
    assert error_of(e)[:2] == (403, "InvalidClientTokenId")
    d.expire_sessions()
    with pytest.raises(ClientError) as e:
        dtarget.sts(creds).get_caller_identity()
    assert error_of(e)[:2] == (403, "ExpiredToken")


def test_role_without_condition_needs_no_external_id(double: StsDouble) -> None:
    arn = make_role(double.iam_endpoint, trust(None), MaxSessionDuration=43200)
    t = Target(arn, "", double.url, double.iam_endpoint, double)
    assert t.assume(DurationSeconds=43200)["AssumedRoleUser"]["Arn"].startswith(f"arn:aws:sts::{ACCOUNT}:")


ROOT = {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
CASES = [
    # (policy, external id sent, allowed)
    (trust("abc"), "abc", True),
    (trust("abc"), "abd", False),
    (trust("abc"), None, False),
    (trust(["abc", "xyz"]), "xyz", True),
    (trust(None), None, True),
    (trust("abc", principal={"AWS": ACCOUNT}), "abc", True),
    (trust("abc", principal={"AWS": ["arn:aws:iam::210987654321:root", "*"]}), "abc", True),
    (trust("abc", principal="*"), "abc", True),
    (trust("abc", principal={"AWS": "arn:aws:iam::210987654321:root"}), "abc", False),
    (trust("abc", principal={"Service": "ec2.amazonaws.com"}), "abc", False),
    (trust("abc", principal={"AWS": f"arn:aws:iam::{ACCOUNT}:user/moto"}), "abc", True),
    ({"Statement": [{"Effect": "Allow", "Principal": ROOT, "Action": ["ec2:*", "sts:*"]}]}, None, True),
    ({"Statement": {"Effect": "Allow", "Principal": ROOT, "Action": "*"}}, None, True),
    ({"Statement": [{"Effect": "Allow", "Principal": ROOT, "Action": "sts:AssumeRoleWithSAML"}]}, None, False),
    ({"Statement": [{"Effect": "Allow", "Principal": ROOT, "Action": "sts:AssumeRole",
                     "Condition": {"StringLike": {"sts:ExternalId": "ab*"}}}]}, "abc", False),
    ({"Statement": [{"Effect": "Allow", "Principal": ROOT, "Action": "sts:AssumeRole",
                     "Condition": {"StringEquals": {"sts:ExternalId": "abc", "aws:PrincipalTag/x": "y"}}}]},
     "abc", False),
    ({"Statement": [*trust("abc")["Statement"],
                    {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}, "abc", False),
    ({"Statement": [*trust(None)["Statement"],
                    {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole",
                     "Condition": {"StringEquals": {"sts:ExternalId": "bad"}}}]}, "bad", False),
    (quote(json.dumps(trust("abc"))), "abc", True),
    (json.dumps(trust("abc")), "abd", False),
]


@pytest.mark.parametrize("policy, external_id, allowed", CASES)
def test_trust_policy_evaluation(policy: Any, external_id: str | None, allowed: bool) -> None:
    caller = {f"arn:aws:iam::{ACCOUNT}:user/moto"}
    assert trust_allows(policy, account=ACCOUNT, caller=caller, external_id=external_id) is allowed
