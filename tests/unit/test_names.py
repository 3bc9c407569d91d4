"""Names: the RFC 1123 label rule, ports, and the default service name."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.errors import InvalidArgument
from meshcore.errors import InvalidArgument
from meshcore.names import (check_name, check_port, check_service_name, default_service_name, is_name,
                            is_service_name, normalize_name)


@pytest.mark.parametrize("name", ["a", "qwen-coder", "x" * 63, "0abc", "a-b-c9"])
def test_valid_names(name):
    assert check_name(name) == name and is_name(name)


@pytest.mark.parametrize("name,rule", [("", "''"), ("Qwen", "uppercase"), ("a_b", "'_'"), ("-a", "start or end"),
                                       ("a-", "start or end"), ("x" * 64, "longer than 63"), ("a.b", "'.'")])
def test_invalid_names_name_the_rule(name, rule):
    with pytest.raises(InvalidArgument, match="RFC 1123") as e:
        check_name(name)
    assert rule in str(e.value)


@pytest.mark.parametrize("port", [0, -1, 65536, True, "80"])
def test_ports_outside_1_65535_are_refused(port):
    with pytest.raises(InvalidArgument, match="between 1 and 65535"):
        check_port(port)


def test_default_name_prefers_the_skypilot_cluster_name():
    env = {"SKYPILOT_CLUSTER_INFO": json.dumps({"cluster_name": "Qwen_Coder"})}
    assert default_service_name(env, "ip-10-4-0-4.ec2.internal") == "qwen-coder"
    assert default_service_name({}, "ip-10-4-0-4.ec2.internal") == "ip-10-4-0-4"
    assert default_service_name({"SKYPILOT_CLUSTER_INFO": "not json"}, "Host_1") == "host-1"


@given(st.text(max_size=100))
def test_normalize_gives_a_valid_name_or_a_clear_error(raw):
    try:
        assert is_name(normalize_name(raw))
    except InvalidArgument as e:
        assert "RFC 1123" in str(e)


@pytest.mark.parametrize("name", ["1web", "4090-box", "0"])
def test_service_names_start_with_a_letter_dns_1035(name):
    assert check_name(name) == name  # still a node name (RFC 1123)
    with pytest.raises(InvalidArgument, match="must start with a letter.*DNS-1035"):
        check_service_name(name)
    assert not is_service_name(name)


def test_a_default_service_name_that_is_no_service_name_asks_for_one():
    with pytest.raises(InvalidArgument, match="'4090-box'.*start with a letter.*host name '4090-box'.*--name"):
        default_service_name({}, "4090-box")
    assert check_service_name("web1") == "web1" and default_service_name({}, "box-4090") == "box-4090"
