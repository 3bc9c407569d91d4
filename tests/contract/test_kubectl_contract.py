"""kubectl against the Kubernetes double (and a real cluster when KUBECONFIG is given).

kubectl reads discovery (/api, /apis, group versions), OpenAPI v3 and Table
answers before it does anything, so this is the check that the double is
complete enough for an operator's own tool. Needs kubectl on PATH (the Makefile's
apt step installs Debian's kubernetes-client where no kubectl is present).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess

import pytest

from testbed.doubles.kubernetes import KubernetesDouble
from testbed.doubles.sync_helpers import write_kubeconfig
from testbed.doubles.tls import issue, make_ca

TOKEN = "contract-token"
KUBECTL = shutil.which("kubectl")


@pytest.fixture(autouse=True)
def _kubectl_installed():
    assert KUBECTL is not None, "kubectl is not installed: `make setup` installs it (Debian package kubernetes-client)"


def _client_minor() -> int:
    out = subprocess.run([KUBECTL, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
    try:
        return int(json.loads(out.stdout)["clientVersion"]["minor"].rstrip("+"))
    except (ValueError, KeyError):
        return 0


# kubectl before 1.27 validates manifests against /openapi/v2 in protobuf, which the double does not
# serve (it serves OpenAPI v3, from which newer kubectl learns the server validates fields itself).
VALIDATE = ([] if _client_minor() >= 27 else ["--validate=false"]) if KUBECTL else []

SERVICE = """apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  ports:
  - {name: http, port: 80}
"""


@pytest.fixture(params=["double"] + (["real"] if os.environ.get("KUBECONFIG") else []))
def kubectl(request, tmp_path):
    ns = f"mesh-contract-{secrets.token_hex(3)}"
    d, kc = None, os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if request.param == "double":
        # kubectl sends a bearer token only over TLS.
        ca = make_ca(tmp_path)
        server = issue(tmp_path, ca, "double")
        d = KubernetesDouble(token=TOKEN)
        d.tls = (str(server.cert), str(server.key))
        d.start()
        kc = str(write_kubeconfig(tmp_path / "kc", d.url, TOKEN, ns, ca_file=str(ca[0].cert)))

    def run(*args: str, stdin: str | None = None) -> str:
        r = subprocess.run([KUBECTL, "--kubeconfig", kc, "--cache-dir", str(tmp_path / "cache"), *args],
                           input=stdin, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    run("create", "namespace", ns)
    try:
        yield run, ns
    finally:
        run("delete", "namespace", ns, "--wait=false")
        if d:
            d.stop()


def test_kubectl_apply_get_delete(kubectl):
    run, ns = kubectl
    assert "service/web created" in run("apply", *VALIDATE, "-n", ns, "-f", "-", stdin=SERVICE)
    assert "service/web unchanged" in run("apply", *VALIDATE, "-n", ns, "-f", "-", stdin=SERVICE)
    changed = SERVICE.replace("port: 80}", "port: 80}\n  - {name: https, port: 443}")
    assert "service/web configured" in run("apply", *VALIDATE, "-n", ns, "-f", "-", stdin=changed)
    table = run("get", "svc", "-A")
    row = next(line.split() for line in table.splitlines() if line.startswith(ns))
    assert row[1] == "web" and row[2] == "ClusterIP" and "80/TCP,443/TCP" in row
    got = json.loads(run("get", "svc", "web", "-n", ns, "-o", "json"))
    assert sorted(p["port"] for p in got["spec"]["ports"]) == [80, 443]
    run("create", *VALIDATE, "-n", ns, "-f", "-", stdin=json.dumps({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-a", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.99.0.1"]}], "ports": [{"port": 80}]}))
    slices = json.loads(run("get", "endpointslices", "-n", ns, "-o", "json"))
    assert [s["metadata"]["name"] for s in slices["items"]] == ["web-a"]
    assert 'service "web" deleted' in run("delete", "-n", ns, "svc", "web")
    assert json.loads(run("get", "svc", "-n", ns, "-o", "json"))["items"] == []
