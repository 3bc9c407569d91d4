"""What the spot watch relies on from IMDSv2, checked against the double and,
when MESH_IMDS_ENDPOINT is set (e.g. http://169.254.169.254 on an EC2 VM),
against the real instance metadata service too."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

from meshagent.spot import ACTION_PATH, LIFECYCLE_PATH, TOKEN_HEADER, TOKEN_PATH, TTL_HEADER, ImdsClient, SpotConfig
from testbed.doubles.imds import ImdsDouble

TARGETS = ["double"] + (["real"] if os.environ.get("MESH_IMDS_ENDPOINT") else [])


@pytest.fixture(params=TARGETS)
def endpoint(request):
    if request.param == "real":
        yield os.environ["MESH_IMDS_ENDPOINT"]
        return
    double = ImdsDouble().start()
    try:
        yield double.url
    finally:
        double.stop()


def call(url: str, method: str, headers: dict[str, str]) -> tuple[int, bytes, dict]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, method=method, headers=headers), timeout=2) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_token_needs_a_ttl_and_echoes_it(endpoint):
    assert call(endpoint + TOKEN_PATH, "PUT", {})[0] == 400
    status, body, headers = call(endpoint + TOKEN_PATH, "PUT", {TTL_HEADER: "60"})
    assert status == 200 and body.strip()
    assert {k.lower(): v for k, v in headers.items()}[TTL_HEADER.lower()] == "60"


def test_forwarded_token_requests_are_refused(endpoint):
    assert call(endpoint + TOKEN_PATH, "PUT", {TTL_HEADER: "60", "X-Forwarded-For": "192.0.2.1"})[0] == 403


def test_metadata_needs_a_valid_token(endpoint):
    # On a real instance with HttpTokens=optional this would be 200; the agent
    # always sends a token, and the double models the stricter "required".
    if endpoint == os.environ.get("MESH_IMDS_ENDPOINT"):
        assert call(endpoint + LIFECYCLE_PATH, "GET", {TOKEN_HEADER: "not-a-token"})[0] == 401
    else:
        assert call(endpoint + LIFECYCLE_PATH, "GET", {})[0] == 401
        assert call(endpoint + LIFECYCLE_PATH, "GET", {TOKEN_HEADER: "not-a-token"})[0] == 401


def test_lifecycle_and_instance_action_shapes(endpoint):
    client = ImdsClient(SpotConfig(endpoint=endpoint))
    assert client.lifecycle() in ("spot", "on-demand", "scheduled")
    status, body = client.get(ACTION_PATH)
    assert status in (200, 404)
    if status == 200:
        notice = json.loads(body)
        assert notice["action"] in ("terminate", "stop", "hibernate") and notice["time"].endswith("Z")
