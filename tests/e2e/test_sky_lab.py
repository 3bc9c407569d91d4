"""The SkyPilot templates' setup and run sections, run unchanged on lab VMs.

`LabDaemons.run_template` runs what `sky launch` runs on a VM (setup, then
run, with the task's envs and secrets and SkyPilot's variables); the only
stand-ins are apt-get, pip, K3s (its API server on the main node is the
Kubernetes double), vLLM (a server answering /health and /v1/models) and
LiveBench (testbed/lab/standins.py). The path, in order:

1. sky/main.yaml on the hub: K3s' API server, meshd mirroring into it and
   publishing the join token in SSM (the hub's moto server), meshd's address;
2. sky/model-server.yaml as `qwen-coder` in a regional AWS VPC (parameters
   from SSM): its agent joins K3s, its name is a Service + EndpointSlice once
   vLLM answers /health;
3. sky/client.yaml on the VM of another cloud, over the main node's public
   address: the client fetches http://qwen-coder.default.svc.cluster.local:8000/v1/models
   through its agent's DNS; `meshctl proxy` there serves the page on a local port;
4. sky/model-server-job.yaml as the managed job `qwen-job` on the spot VM; a
   spot notice, the agent leaves; the job recovered in another namespace takes
   the name; a node of another job is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time

import pytest

from meshcore.jointoken import PUBLISHED_BY_MESHD
from meshd.publish import DEFAULT_TTL_S
from testbed.lab.daemons import LabDaemons, query
from tests.meshfix import wait_for

MODEL = "Qwen/Qwen2.5-Coder-7B-Instruct"
SVC = "qwen-coder.default.svc.cluster.local"
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def sky(lab, tmp_path_factory):
    daemons = LabDaemons(lab, tmp_path_factory.mktemp("skylab"))
    try:
        yield daemons
    finally:
        daemons.stop()


def ok(r) -> None:
    assert not isinstance(r, subprocess.CompletedProcess) or r.returncode == 0, \
        f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def mesh_address(sky, vm: str) -> str:
    return json.loads(sky.node_file(vm).read_text())["mesh_address"]


def resolves(sky, role: str, name: str) -> list[str]:
    return query(sky.lab, role, sky.ready[role]["dns"], name)


def test_main_yaml_starts_meshd_mirroring_into_k3s_and_stores_the_join_parameters(sky):
    r = sky.run_template("hub", "sky/main.yaml", "main")
    ok(r)
    assert "main" in r.stdout  # run: meshctl status, meshctl nodes
    assert sky.ssm_get("/mesh/lab/meshd-address") == "10.4.0.10:7443"
    assert sky.ssm_get("/mesh/lab/meshd-public-address") == "198.18.0.4:7443"
    # The join token in SSM is the short-lived one meshd published (not one the setup stored), labelled
    # so the nodes it admits may fetch the K3s agent token; the main node's agent joined with a one-use one.
    assert sky.ssm_description("/mesh/lab/join-token").startswith(PUBLISHED_BY_MESHD)
    rec = published_token(sky)
    assert lifetime(rec) == DEFAULT_TTL_S
    assert rec["labels"] == {"mesh.k3s": "agent"} and rec["max_uses"] == 0
    own = [t for t in tokens(sky) if t.get("description") == "the main node's agent"]
    assert len(own) == 1 and own[0]["max_uses"] == 1 and own[0]["uses"] == 1
    assert lifetime(own[0]) == 600


def lifetime(token: dict) -> float:
    """Seconds from a token's creation to its expiry (meshctl's JSON has them in RFC 3339)."""
    at = [dt.datetime.fromisoformat(token[k].replace("Z", "+00:00")) for k in ("created_at", "expires_at")]
    return (at[1] - at[0]).total_seconds()


def tokens(sky) -> list[dict]:
    return json.loads(sky.meshctl("token", "list", "-o", "json").stdout).get("tokens", [])


def published_token(sky) -> dict:
    token = sky.ssm_get("/mesh/lab/join-token")
    return next(t for t in tokens(sky) if token.startswith(t["id"] + "."))


def test_model_server_yaml_joins_k3s_and_its_name_becomes_a_kubernetes_service(sky):
    # A VM that comes up before meshd has (re)published the token waits for it: the parameter is gone
    # (as before meshd's first publication); meshd's next check (within a minute) publishes a new one.
    sky.ssm_delete("/mesh/lab/join-token")
    server = sky.run_template("ra", "sky/model-server.yaml", "qwen-coder", run="background")
    ok(server)
    # setup read the join token meshd published in SSM and joined with it
    rec = published_token(sky)
    assert not sky.token.startswith(rec["id"] + ".") and rec["uses"] >= 1 and rec["labels"] == {"mesh.k3s": "agent"}
    assert sky.ssm_description("/mesh/lab/join-token").startswith(PUBLISHED_BY_MESHD)
    assert json.loads(sky.node_file("ra").read_text())["name"] == "qwen-coder"
    svc = wait_for(lambda: sky.kube_get("/api/v1/namespaces/default/services/qwen-coder"), 30,
                   "qwen-coder in K3s")
    assert [p["port"] for p in svc["spec"]["ports"]] == [8000]
    slices = wait_for(lambda: sky.kube_get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
                                           "?labelSelector=kubernetes.io/service-name%3Dqwen-coder")["items"], 30,
                      "qwen-coder's EndpointSlice")
    assert [e["addresses"] for e in slices[0]["endpoints"]] == [["10.21.0.10"]]
    k3s = sky.host_path("ra", "/var/log/mesh-lab/k3s-agent.args").read_text()
    assert "--server https://10.4.0.10:6443" in k3s and "--node-ip 10.21.0.10" in k3s
    assert "K3S_TOKEN set" in k3s  # the agent token, from meshd over mTLS; never in argv


def test_client_yaml_on_another_cloud_fetches_the_model_server_by_name(sky):
    public = sky.ssm_get("/mesh/lab/meshd-public-address")  # as sky/README.md has you read it
    r = sky.run_template("cloud", "sky/client.yaml", "client", cloud="gcp",
                         envs={"SERVER": "qwen-coder", "MESH_COORDINATOR": public},
                         secrets={"MESH_JOIN_TOKEN": sky.token})
    ok(r)
    assert f"against {MODEL} at http://{SVC}:8000/v1" in r.stdout
    page = sky.vm_run("cloud", ["curl", "-sf", f"http://{SVC}:8000/v1/models"]).stdout
    assert json.loads(page)["data"][0]["id"] == MODEL
    nodes = {n["name"]: n for n in json.loads(sky.meshctl("nodes", "-o", "json").stdout)["nodes"]}
    assert nodes["client"]["cloud"] == "gcp" and nodes["client"]["public_address"] == "198.18.0.20"


def test_meshctl_proxy_serves_the_page_by_name_on_a_local_port(sky):
    proxy = sky.vm_popen("cloud", ["meshctl", "proxy", "qwen-coder:8000", "--local-port", "18000"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def fetch():
            r = sky.lab.run("cloud", ["curl", "-sf", "-m", "3", "http://127.0.0.1:18000/v1/models"], check=False)
            return r.stdout if r.returncode == 0 else None
        assert json.loads(wait_for(fetch, 20, "the page through meshctl proxy"))["data"][0]["id"] == MODEL
    finally:
        proxy.terminate()
        proxy.wait(10)


def job_token(sky, job: str) -> str:
    return json.loads(sky.meshctl("token", "create", "--ttl", "1h", "--uses", "0", "--label", f"sky.job={job}",
                                  "--label", "mesh.k3s=agent", "-o", "json").stdout)["secret"]


def holder(sky, name: str = "qwen-job") -> str:
    services = json.loads(sky.meshctl("services", "-o", "json").stdout)["services"]
    return next((s.get("node_name") or s.get("node", "") for s in services if s["name"] == name), "")


def test_a_recovered_managed_job_takes_its_name_and_another_job_is_refused(sky):
    token = job_token(sky, "qwen-job")
    ok(sky.run_template("rb", "sky/model-server-job.yaml", "qwen-job-1", secrets={"MESH_JOIN_TOKEN": token},
                        run="background"))
    old = json.loads(sky.node_file("rb").read_text())["name"]
    assert old.startswith("qwen-job-")
    for role in ("hub", "ra", "cloud"):
        wait_for(lambda: resolves(sky, role, "qwen-job.mesh") == ["10.31.0.10"], 30, f"{role} resolving qwen-job")
    # The spot notice: the agent leaves; the name is kept for the job, out of DNS.
    sky.cloud_changes("rb", notice={"action": "terminate", "time": "2030-01-01T00:00:00Z"})
    left = wait_for(lambda: time.monotonic() if not resolves(sky, "cloud", "qwen-job.mesh") else None, 30,
                    "qwen-job leaving DNS")
    # SkyPilot relaunches the job on a new VM (another namespace, another cloud, over the public address).
    started = time.monotonic()
    ok(sky.run_template("nat", "sky/model-server-job.yaml", "qwen-job-2", cloud="runpod",
                        envs={"MESH_COORDINATOR": "198.18.0.4:7443"}, secrets={"MESH_JOIN_TOKEN": token},
                        run="background"))
    exposed = time.monotonic()
    new_addr = mesh_address(sky, "nat")
    for role in ("hub", "ra", "cloud"):
        wait_for(lambda: resolves(sky, role, "qwen-job.mesh") == [new_addr], 30, f"{role} resolving the new node")
    everywhere = time.monotonic()
    TIMINGS.update(setup_s=exposed - started, leave_to_all_agents_s=everywhere - left,
                   setup_done_to_all_agents_s=everywhere - exposed)
    print("job takeover:", json.dumps({k: round(v, 3) for k, v in TIMINGS.items()}))
    # Setup exposes before run starts vLLM; the name waits for the first passing health check.
    assert everywhere - exposed < 30
    new = json.loads(sky.node_file("nat").read_text())["name"]
    assert new.startswith("qwen-job-") and new != old and holder(sky) == new
    page = sky.vm_run("cloud", ["curl", "-sf", "http://qwen-job.default.svc.cluster.local:8000/v1/models"]).stdout
    assert json.loads(page)["data"][0]["id"] == MODEL
    # A node of another job, on a fresh VM where the old one was, is refused the name, naming the holder.
    sky.stop("rb")
    sky.lab.run("rb", ["ip", "link", "del", "mesh0"], check=False)
    sky.meshctl("node", "remove", old)
    sky.cloud_changes("rb")
    r = sky.run_template("rb", "sky/model-server-job.yaml", "other-job", vm="rb-other",
                         secrets={"MESH_JOIN_TOKEN": job_token(sky, "other-job")}, run="none")
    assert r.returncode != 0
    assert new in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert holder(sky) == new
