"""DnsConfig rules, upstream lists (resolv.conf, loop avoidance) and Target checks."""

from __future__ import annotations

import pytest

from meshcore.errors import ConfigError, InvalidArgument
from meshagent.dns.config import DnsConfig, Upstream, parse_upstream
from meshagent.dns.target import Target
from meshagent.dns.upstreams import parse_resolv_conf, resolve_upstreams


def test_defaults_are_valid():
    config = DnsConfig().validate()
    assert (config.ttl, config.negative_ttl, config.namespace) == (5, 5, "default")


@pytest.mark.parametrize("change, rule", [
    ({"port": 70000}, "0-65535"),
    ({"namespace": "Default"}, "RFC 1123"),
    ({"mesh_domain": "me_sh"}, "RFC 1123"),
    ({"cluster_domain": ""}, "RFC 1123"),
    ({"mesh_domain": "local", "cluster_domain": "cluster.local"}, "contain one another"),
    ({"ttl": -1}, "0-86400"),
    ({"negative_ttl": 1.5}, "whole seconds"),
    ({"upstream_timeout": 0}, "> 0"),
    ({"max_forwards": 0}, "at least 1"),
    ({"answer_cache_s": -1}, ">= 0"),
    ({"upstreams": ("dns.google",)}, "must be an IP address"),
    ({"cluster_upstreams": ("10.43.0.10:99999",)}, "port must be 1-65535"),
])
def test_bad_config_names_the_rule(change, rule):
    with pytest.raises(ConfigError, match=rule):
        DnsConfig(**change).validate()


@pytest.mark.parametrize("text, upstream", [
    ("10.0.0.2", Upstream("10.0.0.2", 53)),
    ("10.0.0.2:5353", Upstream("10.0.0.2", 5353)),
    ("fd00::1", Upstream("fd00::1", 53)),
    ("[fd00::1]:5353", Upstream("fd00::1", 5353)),
    (" 127.0.0.1 ", Upstream("127.0.0.1", 53)),
])
def test_parse_upstream(text, upstream):
    assert parse_upstream(text) == upstream


@pytest.mark.parametrize("text, rule", [
    ("dns.google", "must be an IP address"),
    ("10.0.0.2:0", "port must be 1-65535"),
    ("10.0.0.2:x", "port must be 1-65535"),
    ("[fd00::1", "use host, host:port"),
])
def test_bad_upstream_names_the_rule(text, rule):
    with pytest.raises(ConfigError, match=rule):
        parse_upstream(text)


RESOLV = """# generated
search example.internal
nameserver 10.255.255.53
nameserver   fd00::53
nameserver not-an-address
options ndots:1
nameserver 127.0.0.1
nameserver fe80::1%eth0
"""


def test_resolv_conf_nameservers_in_order():
    assert parse_resolv_conf(RESOLV) == [Upstream("10.255.255.53"), Upstream("fd00::53"),
                                         Upstream("127.0.0.1"), Upstream("fe80::1%eth0")]


def test_own_address_is_never_an_upstream():
    config = DnsConfig(host="127.0.0.1", port=53)
    ups = resolve_upstreams(config, read=lambda path: RESOLV)
    assert Upstream("127.0.0.1") not in ups
    assert ups[0] == Upstream("10.255.255.53")


def test_wildcard_bind_drops_loopback_upstreams_on_our_port():
    config = DnsConfig(host="0.0.0.0", port=53, upstreams=("127.0.0.53", "127.0.0.1:5353", "10.0.0.2"))
    assert resolve_upstreams(config) == (Upstream("127.0.0.1", 5353), Upstream("10.0.0.2"))


def test_bound_port_decides_the_loop_check():
    config = DnsConfig(host="127.0.0.1", port=0, upstreams=("127.0.0.1:4000", "127.0.0.1:4001"))
    assert resolve_upstreams(config, bound_port=4000) == (Upstream("127.0.0.1", 4001),)


def test_configured_upstreams_win_over_resolv_conf_and_duplicates_go():
    config = DnsConfig(upstreams=("10.0.0.9", "10.0.0.9:53"))
    assert resolve_upstreams(config, read=lambda path: RESOLV) == (Upstream("10.0.0.9"),)


def test_unreadable_resolv_conf_gives_no_upstreams():
    def unreadable(path: str) -> str:
        raise PermissionError(path)

    assert resolve_upstreams(DnsConfig(), read=unreadable) == ()


def test_target_checks_and_derives():
    t = Target("fd00:0::5", 8000, "udp", "gpu-1")
    assert (t.address, t.version, t.host_label) == ("fd00::5", 6, "gpu-1")
    odd = Target("10.0.0.1", 80, "tcp", "Node_1")
    assert odd.host_label.startswith("host-") and odd.host_label == Target("10.0.0.1", 81, "tcp", "Node_1").host_label


@pytest.mark.parametrize("args, rule", [
    (("10.0.0.300", 80), "IPv4 or IPv6"),
    (("10.0.0.1", 0), "between 1 and 65535"),
    (("10.0.0.1", 70000), "between 1 and 65535"),
    (("10.0.0.1", 80, "sctp"), "tcp, udp"),
])
def test_bad_target_names_the_rule(args, rule):
    with pytest.raises(InvalidArgument, match=rule):
        Target(*args)
