"""A real Prometheus (the Debian package's binary, with its own config, on loopback, never
the system service) finds meshd and every agent through meshd's HTTP service discovery,
scrapes them, and every query of the Grafana dashboard returns data; `promtool check
metrics` passes on every endpoint."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from dnslib import DNSRecord

from testbed.doubles.consul import ConsulDouble
from testbed.localmesh import LocalMesh

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards/mesh.json"
AGENTS = ("gpu-a", "gpu-b")


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    assert path, f"{name} is missing: `make setup` installs the Debian package prometheus"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5) -> bytes:
    return urllib.request.urlopen(url, timeout=timeout).read()


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout}s (last: {last})")


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels if p.get("type") != "row" for t in p.get("targets", [])]


@pytest.fixture
def mesh(tmp_path):
    consul = ConsulDouble().start()
    m = LocalMesh(tmp_path / "mesh", lease_ttl_s=3, grace_s=3)
    m.root.mkdir()
    try:
        m.start_meshd(extra=("--metrics", "127.0.0.1:0", "--consul", consul.url))
        token = m.token(uses=len(AGENTS))
        for name in AGENTS:
            # on its mesh address (every address, here): where meshd tells Prometheus to look
            m.start_agent(name, token, extra=["--metrics", "0.0.0.0:0"])
        yield m
    finally:
        m.close()
        consul.stop()


@pytest.fixture
def prometheus(tmp_path, mesh):
    sd = f"http://127.0.0.1:{mesh.meshd.ready['metrics']}/v1/http_sd"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "mesh", "scrape_interval": "1s", "scrape_timeout": "1s",
                            "http_sd_configs": [{"url": sd, "refresh_interval": "1s"}]}]}))
    log = open(tmp_path / "prometheus.log", "w")
    p = subprocess.Popen([tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: get(f"{base}/-/ready") is not None, 30, "prometheus ready")
        yield base, sd
    finally:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        log.close()


def query(base: str, expr: str) -> list[dict]:
    body = json.loads(get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.slow
def test_prometheus_discovers_scrapes_and_every_dashboard_query_has_data(mesh, prometheus):
    base, sd = prometheus
    groups = json.loads(get(sd))
    assert [g["labels"]["mesh_component"] for g in groups] == ["meshd", "meshagent", "meshagent"]
    assert sorted(g["labels"].get("mesh_node") for g in groups[1:]) == sorted(AGENTS)

    def all_up():
        targets = json.loads(get(f"{base}/api/v1/targets"))["data"]["activeTargets"]
        return len(targets) == 1 + len(AGENTS) and all(t["health"] == "up" for t in targets) and targets
    targets = wait(all_up, 60, "meshd and every agent discovered and up")
    assert {t["labels"]["mesh_component"] for t in targets} == {"meshd", "meshagent"}

    # traffic while Prometheus watches: names exposed (mirrored into Consul) and DNS queries answered
    mesh.meshctl("expose", "--port", "8000", "--name", "qwen-coder", agent="gpu-a")
    for name in AGENTS:
        host, port = mesh.dns(name)
        for qname in ("qwen-coder.mesh", "nothing-here.mesh"):
            DNSRecord.question(qname).send(host, port, timeout=2)
    time.sleep(6)  # several scrapes after the traffic, for rate() and increase()

    missing = [(title, expr) for title, expr in dashboard_queries() if not query(base, expr)]
    assert not missing, f"dashboard queries without data: {missing}"

    # and promtool is happy with every endpoint Prometheus scrapes
    for t in targets:
        text = get(t["scrapeUrl"])
        r = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=30)
        assert r.returncode == 0, f"{t['scrapeUrl']}: {(r.stdout + r.stderr).decode()}"
