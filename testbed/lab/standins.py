"""What a SkyPilot template needs on a lab VM that the lab cannot have: the stand-ins, and nothing else.

The templates in sky/ run unchanged (testbed/lab/daemons.py `run_template`);
these replace only what would reach the internet or needs hardware:

- `apt-get` and `pip` succeed without doing anything: the packages they would
  install are already there (the `package` step's virtualenv is this
  checkout's, linked by testbed/lab/vm.py);
- `k3s`: "installed", so sky/mesh-setup.sh skips the K3s installer. On the
  main node K3s' API server is the Kubernetes double (`serve_k3s` below,
  started the way the K3s service would already be running, with its
  kubeconfig at /etc/rancher/k3s/k3s.yaml); on other VMs `k3s agent` records
  how meshagent started it (/var/log/mesh-lab/k3s-agent.args, and whether
  K3S_TOKEN was in its environment) and stays up, as a registered agent does;
- `vllm serve`: a tiny HTTP server on --host/--port answering /health and
  /v1/models with --served-model-name, which is all the mesh and the client
  check of a model server;
- LiveBench (the client's git clone): a repository with run_livebench.py and
  show_livebench_result.py that ask the model server's /models and print what
  they got;
- `python`: SkyPilot's runtime Python on a real VM, this interpreter here.

    python -m testbed.lab.standins k3s-server KUBECONFIG HOST:PORT TOKEN
    python -m testbed.lab.standins vllm serve MODEL --host H --port P [--served-model-name N] ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from testbed.lab.vm import VmRoot

PY = sys.executable
NOOP = "#!/bin/sh\nexit 0\n"
K3S = """#!/bin/sh
# K3s stand-in: installed (the script skips the installer); `k3s agent` records its start and stays up.
if [ "$1" = agent ]; then
  mkdir -p /var/log/mesh-lab
  { echo "$*"; [ -n "$K3S_TOKEN" ] && echo "K3S_TOKEN set"; } > /var/log/mesh-lab/k3s-agent.args
  exec sleep infinity
fi
exit 0
"""
RUN_LIVEBENCH = '''import argparse, json, urllib.request
p = argparse.ArgumentParser()
p.add_argument("--model"); p.add_argument("--bench-name"); p.add_argument("--api-base")
p.add_argument("--api-key"); p.add_argument("--parallel-requests")
a = p.parse_args()
models = json.load(urllib.request.urlopen(a.api_base + "/models", timeout=10))
print(f"livebench stand-in: {a.bench_name} against {a.model} at {a.api_base}: {[m['id'] for m in models['data']]}")
'''
SHOW_RESULT = 'import sys; print("livebench stand-in results:", " ".join(sys.argv[1:]))\n'


def _script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    path.chmod(0o755)


def install(vm: VmRoot) -> None:
    """Put the stand-ins on a prepared VM."""
    bin_dir = vm.host_path("/usr/local/bin")
    for name in ("apt-get", "pip"):
        _script(bin_dir / name, NOOP)
    _script(vm.host_path("/opt/mesh/bin/pip"), NOOP)
    _script(bin_dir / "k3s", K3S)
    _script(bin_dir / "vllm", f"#!/bin/sh\nexec {PY} -m testbed.lab.standins vllm \"$@\"\n")
    _script(bin_dir / "python", f"#!/bin/sh\nexec {PY} \"$@\"\n")
    home = vm.host_path("/home/ubuntu")
    repo = home / "LiveBench"
    if not (repo / ".git").exists():
        (repo / "livebench").mkdir(parents=True, exist_ok=True)
        (repo / "livebench/run_livebench.py").write_text(RUN_LIVEBENCH)
        (repo / "livebench/show_livebench_result.py").write_text(SHOW_RESULT)
        git = ["git", "-C", str(repo), "-c", "user.name=lab", "-c", "user.email=lab@lab"]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "LiveBench stand-in"], check=True)


def kubeconfig(server: str, token: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "default",
        "clusters": [{"name": "default", "cluster": {"server": server}}],
        "users": [{"name": "default", "user": {"token": token}}],
        "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}]})


def serve_k3s(path: str, listen: str, token: str) -> None:
    """K3s' API server: the Kubernetes double on `listen`, its kubeconfig written where K3s writes it."""
    from testbed.doubles.kubernetes import KubernetesDouble

    host, port = listen.rsplit(":", 1)
    double = KubernetesDouble(token=token)
    double.port_defaults = True
    double.bind = (host, int(port))
    double.start()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(kubeconfig(f"http://127.0.0.1:{port}", token))
    Path(path).chmod(0o600)
    print("ready", flush=True)
    threading.Event().wait()


def serve_vllm(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="vllm")
    p.add_argument("verb", choices=["serve"])
    p.add_argument("model")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default="")
    a, _ = p.parse_known_args(argv)
    body = json.dumps({"object": "list", "data": [{"id": a.served_model_name or a.model, "object": "model",
                                                     "owned_by": "vllm"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            ok = self.path == "/v1/models"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) if ok else 0))
            self.end_headers()
            if ok:
                self.wfile.write(body)

    server = ThreadingHTTPServer((a.host, a.port), Handler)
    print(f"vllm stand-in serving {a.model} on {a.host}:{a.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "k3s-server":
        serve_k3s(*sys.argv[2:5])
    elif sys.argv[1] == "vllm":
        serve_vllm(sys.argv[2:])
    else:
        raise SystemExit(__doc__)
