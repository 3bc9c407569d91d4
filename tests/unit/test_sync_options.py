"""meshd's Consul and Kubernetes options: flags, Consul CLI environment variables, and which wins."""

from __future__ import annotations

import pytest

from meshd.main import build_parser, consul_config, parse_args


def consul(argv: list[str], env: dict[str, str]):
    return consul_config(build_parser().parse_args(argv), env)


def test_consul_environment_is_read_as_consuls_cli_reads_it(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-env-file\n")
    env = {"CONSUL_HTTP_ADDR": "consul.internal:8501", "CONSUL_HTTP_SSL": "true",
           "CONSUL_HTTP_TOKEN_FILE": str(token_file), "CONSUL_CACERT": "/etc/consul/ca.pem",
           "CONSUL_CLIENT_CERT": "/etc/consul/c.pem", "CONSUL_CLIENT_KEY": "/etc/consul/c.key"}
    c = consul(["--consul"], env)
    assert (c.scheme, c.host, c.port) == ("https", "consul.internal", 8501)
    assert c.token == "from-env-file" and c.ca_file == "/etc/consul/ca.pem" and c.verify
    assert (c.client_cert, c.client_key) == ("/etc/consul/c.pem", "/etc/consul/c.key")
    assert consul(["--consul"], {**env, "CONSUL_HTTP_TOKEN": "from-env"}).token == "from-env"
    assert not consul(["--consul"], {**env, "CONSUL_HTTP_SSL_VERIFY": "false"}).verify
    assert consul(["--consul"], {}).address == "http://127.0.0.1:8500"


def test_consul_flags_win_over_the_environment(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-flag\n")
    env = {"CONSUL_HTTP_ADDR": "https://env:8501", "CONSUL_HTTP_TOKEN": "from-env", "CONSUL_CACERT": "/env/ca",
           "CONSUL_CLIENT_CERT": "/env/c", "CONSUL_CLIENT_KEY": "/env/k"}
    c = consul(["--consul", "http://flag:8500", "--consul-token-file", str(token_file), "--consul-ca-file", "/f/ca",
                "--consul-client-cert", "/f/c", "--consul-client-key", "/f/k", "--consul-datacenter", "dc2"], env)
    assert (c.address, c.token, c.ca_file, c.client_cert, c.client_key, c.datacenter) == (
        "http://flag:8500", "from-flag", "/f/ca", "/f/c", "/f/k", "dc2")


def test_without_the_consul_flag_the_environment_turns_nothing_on(tmp_path, monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:8500")
    assert parse_args(["--state-dir", str(tmp_path)]).consul is None


def test_kubernetes_context_and_bad_combinations(tmp_path, capsys):
    kc = tmp_path / "kubeconfig"
    kc.write_text("apiVersion: v1\nkind: Config\n")
    cfg = parse_args(["--state-dir", str(tmp_path), "--kubernetes", str(kc), "--kubernetes-context", "prod"])
    assert cfg.kubernetes.context == "prod" and cfg.kubernetes.kubeconfig == str(kc)
    with pytest.raises(SystemExit):
        parse_args(["--state-dir", str(tmp_path), "--kubernetes", "in-cluster", "--kubernetes-context", "prod"])
    assert "in_cluster has none" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--state-dir", str(tmp_path), "--consul", "http://c:8500", "--consul-client-cert", "/c"])
    assert "client_cert and client_key must be given together" in capsys.readouterr().err
