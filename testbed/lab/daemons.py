"""The mesh in the lab, booted the way users boot it (used by the lab tests, `make demo-lab` and the bench).

Nothing about a VM is typed here. Each VM gets what a real one has: an
instance metadata service on 169.254.169.254 inside its namespace (AWS
IMDSv2 for the VPC VMs with the lab's own VPC ids, CIDRs and addresses;
GCP's metadata server for the VM on another cloud; nothing for the VM behind
NAT), `nvidia-smi` on the two VMs with GPUs, and a file system of its own
(testbed/lab/vm.py). Then the shipped scripts run unchanged:

- the main node (lab role "hub"): `bash sky/mesh-setup.sh coordinator`, as
  sky/main.yaml runs it: meshd through `meshctl install coordinator` and the
  unit in systemd/, meshd's address into SSM Parameter Store (a moto server
  inside the hub's namespace stands in for AWS; meshd publishes the join
  token there, reaching it as the systemctl stand-in passes the AWS
  variables through), and the main node's own agent;
- every other VM: `bash sky/mesh-setup.sh agent NAME` with MESH_COORDINATOR
  and MESH_JOIN_TOKEN in the environment, as a VM outside the SSM region
  gets them: `meshctl install agent` writes the unit and its environment
  file, and `systemctl` (the stand-in) runs the unit's own ExecStart.

Each agent discovers its cloud, VPC, addresses and GPUs, and runs WireGuard
on mesh0 by default.

K3s cannot run here: on the main node `k3s` is "installed" and its API server
is the Kubernetes double (testbed/lab/standins.py), already running with its
kubeconfig at /etc/rancher/k3s/k3s.yaml when setup starts, as the K3s service
would be; meshd mirrors every name into it.

`run_template(role, yaml, ...)` runs a SkyPilot template's `setup` and `run`
on a VM as SkyPilot does (the task's envs and secrets, SKYPILOT_CLUSTER_INFO,
the node ranks, the workdir as the current directory), with stand-ins only
for apt-get, pip, K3s, vLLM and LiveBench (testbed/lab/standins.py).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import yaml

from testbed.doubles.imds import aws_instance
from testbed.lab import standins
from testbed.lab.lab import Lab
from testbed.lab.topology import MAIN_REGION
from testbed.lab.vm import ROOT, VmRoot

ROLES = ("hub", "ra", "rb", "cloud", "nat")
#: node names: the main node is "main" (sky/main.yaml's cluster), the others their SkyPilot cluster names
NAMES = {"hub": "main", "ra": "ra", "rb": "rb", "cloud": "cloud", "nat": "nat"}
COORDINATOR = {"hub": "10.4.0.10", "ra": "10.4.0.10", "rb": "10.4.0.10", "cloud": "198.18.0.4",
               "nat": "198.18.0.4"}
GPUS = {"ra": "NVIDIA L4, 23034, 550.90.07\nNVIDIA L4, 23034, 550.90.07",
        "cloud": "NVIDIA A100-SXM4-40GB, 40960, 535.104.05"}
INSTANCE_TYPES = {"hub": "m6i.large", "ra": "g6.12xlarge", "rb": "g6.xlarge"}
#: the lab's "internet" is 198.18.0.0/15, a range reserved for test networks: meshd is told to take it as public
MESHD_ARGS = "--allow-endpoint-range=198.18.0.0/15"
MOTO_PORT = 5000
K3S_API_PORT = 6443
AWS_ENV = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{MOTO_PORT}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": MAIN_REGION}


def metadata(lab: Lab, role: str) -> tuple[str, dict] | None:
    s = lab.nodes[role].spec
    if s.cloud == "aws":
        meta = aws_instance(s.private_address, s.vpc_id, s.vpc_cidr, region=s.region, public=s.public_address,
                            instance_type=INSTANCE_TYPES[role], instance_id=f"i-0{role:0>16}"[:19])
        return "aws", {"meta": meta, "lifecycle": "spot" if role == "rb" else "on-demand"}
    if s.cloud == "gcp":
        return "gcp", {"zone": f"{s.region}-a", "machine_type": "a2-highgpu-1g", "ip": s.public_address,
                       "external_ip": s.public_address}
    return None  # the VM behind NAT has no metadata service


class LabDaemons:
    def __init__(self, lab: Lab, state: Path) -> None:
        self.lab = lab
        self.state = state
        self.vms = {role: VmRoot(state, role) for role in ROLES}
        self.ready: dict[str, dict] = {}
        self.token = ""
        self._meta_procs: dict[str, subprocess.Popen] = {}
        self._netns: dict[str, str] = {}  # a VM that replaced another lives in that one's namespace

    # -- where things are -------------------------------------------------------------
    def name(self, role: str) -> str:
        return NAMES[role]

    def ifname(self, role: str) -> str:
        return "mesh0"

    def host_path(self, role: str, path: str) -> Path:
        return self.vms[role].host_path(path)

    def agent_socket(self, role: str) -> Path:
        return self.vms[role].host_path("/run/meshagent/agent.sock")

    def node_file(self, role: str) -> Path:
        return self.vms[role].host_path("/var/lib/meshagent/node.json")

    def journal(self, role: str, unit: str = "meshagent") -> Path:
        return self.vms[role].host_path(f"/var/log/mesh-lab/{unit}.log")

    @property
    def admin_socket(self) -> Path:
        return self.vms["hub"].host_path("/run/meshd/admin.sock")

    # -- booting ------------------------------------------------------------------------
    def _metadata(self, role: str, found: tuple[str, dict] | None = None) -> None:
        """The VM's instance metadata service (again, with `found`: the cloud changed something)."""
        if found is None:
            if role in self._meta_procs and self._meta_procs[role].poll() is None:
                return
            found = metadata(self.lab, role)
            if found is None:
                return
        old = self._meta_procs.pop(role, None)
        if old is not None:
            old.kill()
            old.wait(5)
        self.lab.run(role, ["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"], check=False)
        cloud, spec = found
        p = self.lab.popen(role, [sys.executable, "-m", "testbed.doubles.metadata_server", cloud, json.dumps(spec),
                                  "169.254.169.254:80"], stdout=subprocess.PIPE, text=True)
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"metadata double in {role} did not start")
        self._meta_procs[role] = p

    def cloud_changes(self, role: str, **spec) -> None:
        """The cloud changes what its metadata says of the VM (a new public address after stop/start)."""
        cloud, base = metadata(self.lab, role)
        self._metadata(role, (cloud, {**base, **spec}))

    def _moto(self) -> None:
        # On every address of the hub, so VMs in the peered VPCs reach "SSM" too (cluster user data reads it).
        p = self.lab.popen("hub", [sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", str(MOTO_PORT)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = self.lab.run("hub", ["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', "
                                                      f"{MOTO_PORT}), 1)"], check=False)
            if r.returncode == 0:
                return
            if p.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError("moto server in the hub did not start")

    def vm_run(self, role: str, command: list[str], env: dict[str, str] | None = None,
               timeout: float = 180, vm: str | None = None) -> subprocess.CompletedProcess:
        """Run a command in a VM (its namespace and its file system), as root with a login-like env.

        `vm` picks another file system in the same namespace (a VM that replaced `role`'s)."""
        vm = vm or role
        full = {"HOME": "/root", "LANG": "C.UTF-8", "MESH_NAME": "lab", "MESH_REGION": MAIN_REGION,
                **(env or {})}
        r = subprocess.run(["ip", "netns", "exec", self.lab.netns(role), "env", "-i",
                            *[f"{k}={v}" for k, v in full.items()], *self.vms[vm].argv(command)],
                           capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed in {vm} (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
                               f"\n--- journal ---\n{self._tail(vm)}")
        return r

    def wg(self, role: str, *args: str) -> str:
        """`wg ARGS` in a VM (wireguard-go's socket is in the VM's own /run/wireguard)."""
        return self.vm_run(role, ["wg", *args], timeout=30).stdout

    def _tail(self, role: str) -> str:
        out = []
        for unit in ("meshd", "meshagent"):
            j = self.journal(role, unit)
            if j.exists():
                out += [f"[{unit}] {line}" for line in j.read_text(errors="replace").splitlines()[-20:]]
        return "\n".join(out)

    def _read_ready(self, role: str) -> dict[str, str]:
        if not self.journal(role).exists():
            raise RuntimeError(f"the agent in {role} never started:\n{self._tail(role)}")
        for line in reversed(self.journal(role).read_text(errors="replace").splitlines()):
            if line.startswith("meshagent ready"):
                return dict(kv.split("=", 1) for kv in line.split()[2:] if "=" in kv)
        raise RuntimeError(f"no ready line from the agent in {role}:\n{self._tail(role)}")

    def _k3s_server(self) -> None:
        """K3s' API server on the main node (the Kubernetes double), as the K3s service would be running."""
        if getattr(self, "_k3s", None) is not None and self._k3s.poll() is None:
            return
        self.k3s_token = secrets.token_hex(16)
        p = self.vm_popen("hub", [sys.executable, "-m", "testbed.lab.standins", "k3s-server",
                                  "/etc/rancher/k3s/k3s.yaml", f"0.0.0.0:{K3S_API_PORT}", self.k3s_token],
                          stdout=subprocess.PIPE, text=True)
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("the K3s API server stand-in in the hub did not start")
        self._k3s = p

    def kube_get(self, path: str) -> dict | None:
        """GET a path of the main node's K3s API (inside the hub); None when 404."""
        code = ("import json, sys, urllib.request, urllib.error\n"
                "req = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[2]})\n"
                "try: print(urllib.request.urlopen(req, timeout=5).read().decode())\n"
                "except urllib.error.HTTPError as e:\n"
                "    if e.code != 404: raise\n"
                "    print('null')\n")
        r = self.lab.run("hub", [sys.executable, "-c", code, f"http://127.0.0.1:{K3S_API_PORT}{path}",
                                 self.k3s_token])
        return json.loads(r.stdout)

    def start_coordinator(self) -> None:
        self.vms["hub"].prepare(k3s=True)  # K3s cannot run here: a k3s that is "installed" is enough for the script
        self._metadata("hub")
        self._moto()
        self._k3s_server()
        self.vm_run("hub", ["bash", "sky/mesh-setup.sh", "coordinator"], {**AWS_ENV, "MESHD_ARGS": MESHD_ARGS})
        self._after_coordinator()

    def _after_coordinator(self) -> None:
        self.token = self.ssm_get("/mesh/lab/join-token", wait_s=60)  # meshd publishes it
        self.ready["hub"] = self._read_ready("hub")

    def ssm_get(self, name: str, wait_s: float = 0) -> str:
        """A parameter's value in the hub's moto SSM (waiting up to `wait_s` for it to be written)."""
        return self.vm_run("hub", ["/opt/mesh/bin/python", "-c", (
            "import sys, time, boto3; ssm = boto3.client('ssm'); end = time.monotonic() + float(sys.argv[2])\n"
            "while True:\n"
            "    try: print(ssm.get_parameter(Name=sys.argv[1], WithDecryption=True)['Parameter']['Value']); break\n"
            "    except ssm.exceptions.ParameterNotFound:\n"
            "        if time.monotonic() > end: raise\n"
            "        time.sleep(0.5)"), name, str(wait_s)], AWS_ENV).stdout.strip()

    def ssm_delete(self, name: str) -> None:
        self.vm_run("hub", ["/opt/mesh/bin/python", "-c", (
            "import sys, boto3; boto3.client('ssm').delete_parameter(Name=sys.argv[1])"), name], AWS_ENV)

    def ssm_description(self, name: str) -> str:
        return self.vm_run("hub", ["/opt/mesh/bin/python", "-c", (
            "import sys, boto3; print(boto3.client('ssm').describe_parameters(ParameterFilters=[{'Key': 'Name', "
            "'Values': [sys.argv[1]]}])['Parameters'][0].get('Description', ''))"), name], AWS_ENV).stdout.strip()

    def vm_popen(self, role: str, command: list[str], env: dict[str, str] | None = None, vm: str | None = None,
                 **kw) -> subprocess.Popen:
        """Start a long-running command in a VM (as vm_run does); Lab.down() ends it."""
        vm = vm or role
        full = {"HOME": "/root", "LANG": "C.UTF-8", "MESH_NAME": "lab", "MESH_REGION": MAIN_REGION,
                **(env or {})}
        return self.lab.popen(role, ["env", "-i", *[f"{k}={v}" for k, v in full.items()],
                                     *self.vms[vm].argv(command)], **kw)

    # -- SkyPilot templates ---------------------------------------------------------------
    def template_env(self, yaml_path: str, cluster: str, cloud: str, envs: dict[str, str] | None = None,
                     secrets_: dict[str, str] | None = None) -> tuple[dict, dict[str, str]]:
        """The task and the environment SkyPilot gives its setup and run (a None env left unset is an error,
        as `sky launch` says)."""
        task = yaml.safe_load((ROOT / yaml_path).read_text())
        env = {**(task.get("envs") or {}), **(task.get("secrets") or {}), **(envs or {}), **(secrets_ or {})}
        missing = [k for k, v in env.items() if v is None]
        if missing:
            raise ValueError(f"{yaml_path}: set {', '.join(missing)} (sky launch --env)")
        accel = (task.get("resources") or {}).get("accelerators") or ""
        gpus = accel.split(":")[1] if ":" in str(accel) else ("1" if accel else "0")
        env = {k: str(v) for k, v in env.items()}
        env.update({
            "SKYPILOT_CLUSTER_INFO": json.dumps({"cluster_name": cluster, "cloud": cloud, "region": "",
                                                 "zone": None, "python_path": sys.executable}),
            "SKYPILOT_SETUP_NODE_RANK": "0", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NUM_NODES": "1",
            "SKYPILOT_NUM_GPUS_PER_NODE": gpus, "SKYPILOT_TASK_ID": f"sky-lab_{cluster}_1"})
        return task, env

    def run_template(self, role: str, yaml_path: str, cluster: str, *, cloud: str = "aws",
                     envs: dict[str, str] | None = None, secrets: dict[str, str] | None = None,
                     vm: str | None = None, run: str = "foreground", timeout: float = 240):
        """`sky launch -c CLUSTER YAML` on a lab VM: setup, then run (`foreground`: wait and return the
        result; `background`: return the Popen, as a server's run never ends; `none`: setup only).
        On an AWS VM the SSM calls reach the hub's moto server, as an instance profile reaches SSM;
        setup's failure is returned (check returncode), not raised."""
        vm = vm or role
        root = self.vms.setdefault(vm, VmRoot(self.state, vm))
        if vm != role:
            self._netns[vm] = role
        root.prepare(gpus=GPUS.get(role, ""))
        standins.install(root)
        if role == "hub":
            self._metadata("hub")
            self._moto()
            self._k3s_server()
        else:
            self._metadata(role)
        task, env = self.template_env(yaml_path, cluster, cloud, envs, secrets)
        if cloud == "aws":
            env.update({**AWS_ENV, "AWS_ENDPOINT_URL": f"http://{'127.0.0.1' if role == 'hub' else '10.4.0.10'}:"
                                                       f"{MOTO_PORT}"})
        env["MESH_NAME"] = "lab"
        if role == "hub":
            env["MESHD_ARGS"] = MESHD_ARGS
        setup = self._bash(role, task.get("setup") or "", env, vm, timeout)
        if setup.returncode != 0:
            return setup
        if role == "hub" and "coordinator" in (task.get("setup") or ""):
            self._after_coordinator()
        elif self.journal(vm).exists():
            self.ready[vm] = self._read_ready(vm)
        if run == "none" or not task.get("run"):
            return setup
        if run == "background":
            log = open(root.root / "run.log", "ab")
            return self.vm_popen(role, ["bash", "-c", task["run"]], {"HOME": "/home/ubuntu", **env}, vm=vm,
                                 stdout=log, stderr=log)
        return self._bash(role, task["run"], env, vm, timeout)

    def _bash(self, role: str, script: str, env: dict[str, str], vm: str, timeout: float):
        # SkyPilot's user on the VM (ubuntu on AWS images); sudo is the stand-in that just runs its command
        return subprocess.run(["ip", "netns", "exec", self.lab.netns(role), "env", "-i",
                               *[f"{k}={v}" for k, v in {"HOME": "/home/ubuntu", "LANG": "C.UTF-8", "USER": "ubuntu",
                                                         **env}.items()],
                               *self.vms[vm].argv(["bash", "-c", script])],
                              capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))

    def start_agent(self, role: str, token: str | None = None) -> None:
        """`sky/mesh-setup.sh agent NAME` on the VM; again on a VM that has joined, it just restarts the agent."""
        if role == "hub":
            self.vm_run("hub", ["systemctl", "restart", "meshagent"])
            self.ready["hub"] = self._read_ready("hub")
            return
        self.vms[role].prepare(gpus=GPUS.get(role, ""))
        self._metadata(role)
        env = {"MESH_COORDINATOR": f"{COORDINATOR[role]}:7443"}
        joined = self.node_file(role).exists()
        if not joined:
            env["MESH_JOIN_TOKEN"] = token if token is not None else self.token
        self.vm_run(role, ["bash", "sky/mesh-setup.sh", "agent", NAMES[role]], env)
        self.ready[role] = self._read_ready(role)

    def boot_user_data(self, role: str, vm: str, script: str) -> None:
        """First boot of a `meshctl cluster` instance from its user data, on a fresh VM in `role`'s network.

        Stand-ins: apt-get and pip (the package is this checkout's virtualenv); SSM is the hub's moto
        server, reached over the VPC peering as the real one is reached over AWS's network."""
        root = VmRoot(self.state, vm).prepare(gpus=GPUS.get(role, ""))
        self.vms[vm] = root
        self._netns[vm] = role
        bin_dir = root.host_path("/usr/local/bin")
        (bin_dir / "apt-get").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "apt-get").chmod(0o755)
        pip = root.host_path("/opt/mesh/bin/pip")
        pip.unlink()
        pip.write_text('#!/bin/sh\nprintf \'%s\\n\' "$*" >> "$0.log"\n')  # what it was asked to install
        pip.chmod(0o755)
        self._metadata(role)
        path = root.root / "user-data.sh"
        path.write_text(script)
        self.vm_run(role, ["bash", str(path)],
                    {**AWS_ENV, "AWS_ENDPOINT_URL": f"http://10.4.0.10:{MOTO_PORT}"}, vm=vm)
        self.ready[vm] = self._read_ready(vm)

    def s3_put(self, bucket: str, key: str, data: bytes) -> None:
        """An object in the hub's moto S3 (the bucket made if missing), as `cluster create` uploads one."""
        self.vm_run("hub", ["/opt/mesh/bin/python", "-c", (
            "import sys, boto3; s3 = boto3.client('s3'); b = sys.argv[1]\n"
            "if b not in [x['Name'] for x in s3.list_buckets()['Buckets']]: s3.create_bucket(Bucket=b)\n"
            "s3.put_object(Bucket=b, Key=sys.argv[2], Body=bytes.fromhex(sys.argv[3]))"),
            bucket, key, data.hex()], AWS_ENV)

    def ssm_put(self, name: str, value: str) -> None:
        self.vm_run("hub", ["/opt/mesh/bin/python", "-c", (
            "import sys, boto3; boto3.client('ssm').put_parameter(Name=sys.argv[1], Value=sys.argv[2], "
            "Type='SecureString', Overwrite=True)"), name, value], AWS_ENV)

    def start(self) -> LabDaemons:
        self.start_coordinator()
        for role in ROLES[1:]:
            self.start_agent(role)
        return self

    def meshctl(self, *args: str, agent: str | None = None) -> subprocess.CompletedProcess:
        """meshctl from the host: at a VM's agent socket, or at meshd's admin socket on the main node."""
        env = {**os.environ, "MESHD_ADMIN_SOCKET": str(self.admin_socket)}
        env.pop("MESH_ADMIN", None)
        if agent:
            env["MESH_AGENT_SOCKET"] = str(self.agent_socket(agent))
        else:
            env["MESH_ADMIN"] = "1"
        return subprocess.run([str(Path(sys.executable).parent / "meshctl"), *args], env=env, capture_output=True,
                              text=True, check=True, timeout=60)

    def stop(self, role: str | None = None) -> None:
        """Stop the agent on one VM (`systemctl stop meshagent`), or everything."""
        vms = [role] if role else list(self.vms)
        for vm in vms:
            if self.vms[vm].root.exists():
                units = ["meshagent"] + (["meshd"] if vm == "hub" and role is None else [])
                self.vm_run(self._netns.get(vm, vm), ["systemctl", "stop", *units], timeout=60, vm=vm)


def query(lab: Lab, role: str, dns: str, name: str) -> list[str]:
    """Ask `role`'s agent DNS (inside its namespace) for an A record."""
    host, port = dns.rsplit(":", 1)
    code = ("import dnslib,sys; q=dnslib.DNSRecord.question(sys.argv[1]);"
            "r=dnslib.DNSRecord.parse(q.send(sys.argv[2], int(sys.argv[3]), timeout=1));"
            "print(' '.join(str(x.rdata) for x in r.rr))")
    r = lab.run(role, [sys.executable, "-c", code, name, host, port], check=False)
    return r.stdout.split()
