"""A lab VM's own file system, so the shipped scripts and units run unchanged.

Every lab VM is a network namespace; on its own that shares /etc, /var/lib
and /run with the host and every other VM. A VM here also gets a private
mount namespace (`unshare -m`) in which a directory of its own is bound over
each path the mesh's scripts and units touch: /etc/mesh and
/etc/systemd/system (what `meshctl install` writes), /etc/rancher (K3s'
kubeconfig on the main node), /var/lib/mesh* and /run/mesh* (state and
sockets), /run/wireguard (wireguard-go's UAPI sockets, so every VM can call
its interface mesh0), /usr/local/bin and /opt/mesh (where the `package` step
puts the programs), /home/ubuntu (the home of SkyPilot's user, where
templates clone things) and /var/log/mesh-lab (the stand-in journal). /etc
itself is an overlay whose changes stay the VM's own (`meshctl dns install`
rewrites resolv.conf), starting from copies of the host's resolv.conf, hosts
and hostname and a new machine-id (job nodes are named after it). Each VM's
directories live under one root on the host, so a test reads a VM's state
and reaches its sockets through `host_path`.

Stand-ins (the only ones): `systemctl` (testbed/lab/systemctl.py runs a
unit's ExecStart the way systemd would), `sudo` (runs its command, VAR=value words as its environment), the
`package` step (links to this checkout's virtualenv instead of pip), and,
on VMs that have GPUs, `nvidia-smi` (a driver that answers).

    python -m testbed.lab.vm ROOT -- COMMAND...   (run inside `unshare -m`)
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
BINDS = ("/etc/mesh", "/etc/systemd/system", "/var/lib/meshagent", "/var/lib/meshd", "/run/meshagent",
         "/run/meshd", "/run/wireguard", "/usr/local/bin", "/opt/mesh", "/var/log/mesh-lab", "/etc/rancher", "/home/ubuntu",
         "/var/cache/mesh")
#: files of the host's /etc the VM starts with a copy of (machine-id: a new one); the rest of /etc shows through
ETC_COPIES = ("resolv.conf", "hosts", "hostname")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _flat(path: str) -> str:
    return path.strip("/").replace("/", "-")


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)


class VmRoot:
    def __init__(self, base: Path, role: str) -> None:
        self.role = role
        self.root = base / f"vm-{role}"

    def host_path(self, path: str) -> Path:
        """Where a path inside the VM (under one of BINDS) is on the host."""
        for b in BINDS:
            if path == b or path.startswith(b + "/"):
                return self.root / _flat(b) / path[len(b):].lstrip("/")
        raise ValueError(f"{path} is not private to the VM")

    def prepare(self, gpus: str = "", k3s: bool = False) -> VmRoot:
        for b in BINDS:
            (self.root / _flat(b)).mkdir(parents=True, exist_ok=True)
        upper = self.root / "etc-upper"
        if not upper.exists():
            upper.mkdir()
            (self.root / "etc-work").mkdir(exist_ok=True)
            for f in ETC_COPIES:
                if Path("/etc", f).exists():
                    (upper / f).write_text(Path("/etc", f).read_text())
            (upper / "machine-id").write_text(secrets.token_hex(16) + "\n")
        bin_dir = self.host_path("/usr/local/bin")
        opt = self.host_path("/opt/mesh/bin")
        opt.mkdir(parents=True, exist_ok=True)
        # The `package` step's result: the programs, linked from this checkout's virtualenv.
        for prog in ("meshd", "meshagent", "meshctl", "python", "pip"):
            for d in ((bin_dir, opt) if prog in ("meshd", "meshagent", "meshctl") else (opt,)):
                link = d / prog
                if not link.exists():
                    link.symlink_to(VENV_BIN / prog)
        env = f'export PYTHONPATH="{ROOT}"\n'
        _script(bin_dir / "systemctl", f"#!/bin/sh\n{env}exec {sys.executable} -m testbed.lab.systemctl \"$@\"\n")
        _script(bin_dir / "sudo", '#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done\n'
                                  'exec env "$@"\n')  # env: sudo VAR=value COMMAND sets VAR, as sudo does
        if gpus:
            _script(bin_dir / "nvidia-smi", f"#!/bin/sh\ncat <<'OUT'\n{gpus}\nOUT\n")
        if k3s:
            _script(bin_dir / "k3s", "#!/bin/sh\nexit 0\n")
        return self

    def argv(self, command: list[str]) -> list[str]:
        return ["unshare", "-m", "--propagation", "private", sys.executable, "-m", "testbed.lab.vm", str(self.root),
                "--", *command]


def main(argv: list[str]) -> None:
    root, sep, command = argv[0], argv[1], argv[2:]
    assert sep == "--" and command, "usage: python -m testbed.lab.vm ROOT -- COMMAND..."
    # /etc writable and the VM's own (what it changes lands in ROOT/etc-upper), then the directories above.
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/etc,upperdir={root}/etc-upper,"
                    f"workdir={root}/etc-work", "/etc"], check=True)
    for b in BINDS:
        os.makedirs(b, exist_ok=True)
        subprocess.run(["mount", "--bind", os.path.join(root, _flat(b)), b], check=True)
    os.environ["PATH"] = SYSTEM_PATH
    os.environ["PYTHONPATH"] = str(ROOT)
    os.chdir(ROOT)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
