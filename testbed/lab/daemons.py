"""The mesh in the lab, booted the way users boot it (used by the lab tests, `make demo-lab` and the bench).

Nothing about a VM is typed here. Each VM gets what a real one has: an
instance metadata service on 169.254.169.254 inside its namespace (AWS
IMDSv2 for the VPC VMs with the lab's own VPC ids, CIDRs and addresses;
GCP's metadata server for the VM on another cloud; nothing for the VM behind
NAT), `nvidia-smi` on the two VMs with GPUs, and a file system of its own
(testbed/lab/vm.py). Then the shipped scripts run unchanged:

- the main node (lab role "hub"): `bash sky/mesh-setup.sh coordinator`, as
  sky/main.yaml runs it: meshd through `meshctl install coordinator` and the
  unit in systemd/, a fleet token, the join parameters into SSM Parameter
  Store (a moto server inside the hub's namespace stands in for AWS), and
  the main node's own agent;
- every other VM: `bash sky/mesh-setup.sh agent NAME` with MESH_COORDINATOR
  and MESH_JOIN_TOKEN in the environment, as a VM outside the SSM region
  gets them: `meshctl install agent` writes the unit and its environment
  file, and `systemctl` (the stand-in) runs the unit's own ExecStart.

Each agent discovers its cloud, VPC, addresses and GPUs, and runs WireGuard
on mesh0 by default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from testbed.doubles.imds import aws_instance
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

    def start_coordinator(self) -> None:
        self.vms["hub"].prepare(k3s=True)  # K3s cannot run here: a k3s that is "installed" is enough for the script
        self._metadata("hub")
        self._moto()
        self.vm_run("hub", ["bash", "sky/mesh-setup.sh", "coordinator"], {**AWS_ENV, "MESHD_ARGS": MESHD_ARGS})
        self.token = self.vm_run("hub", ["/opt/mesh/bin/python", "-c", (
            "import boto3; print(boto3.client('ssm').get_parameter(Name='/mesh/lab/join-token', "
            "WithDecryption=True)['Parameter']['Value'])")], AWS_ENV).stdout.strip()
        self.ready["hub"] = self._read_ready("hub")

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
        pip.write_text("#!/bin/sh\nexit 0\n")
        pip.chmod(0o755)
        self._metadata(role)
        path = root.root / "user-data.sh"
        path.write_text(script)
        self.vm_run(role, ["bash", str(path)],
                    {**AWS_ENV, "AWS_ENDPOINT_URL": f"http://10.4.0.10:{MOTO_PORT}"}, vm=vm)
        self.ready[vm] = self._read_ready(vm)

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
