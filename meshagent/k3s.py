"""Joining a VM to the main node's K3s cluster as a K3s agent.

Model: meshd hands a node (over mTLS, `AdmissionService.K3sJoin`) the K3s
server URL, at the main node's mesh address, and the K3s *agent* token. From
those and the node's own facts we build one `k3s agent` invocation:

- `--node-ip <mesh address>`: the address every other node, DNS and the
  Kubernetes EndpointSlices already use for this node;
- `--flannel-iface <mesh interface>`: pod traffic rides the mesh, so it
  crosses VPCs and clouds the same way the node's own traffic does;
- `--server <url>`, `--node-name <mesh node name>`, one `--node-label k=v` per
  node label (checked against the Kubernetes label rules first, so a bad label
  is our clear error rather than a kubelet that never registers);
- the token goes in the environment (K3S_TOKEN), never in argv, where any
  local user could read it in /proc/<pid>/cmdline.

Nothing here writes or copies a kubeconfig: the agent token only lets K3s
register a node, it is not a cluster-admin credential.

Two launchers run the invocation. `exec` (outside systemd, and in tests) keeps
K3s as a child process, restarted with capped exponential backoff. `systemd`
(meshagent runs sandboxed under systemd, and K3s needs mounts, cgroups and all
capabilities) starts it as a transient unit with `systemd-run`; systemd then
restarts it, and the token reaches it through a 0600 EnvironmentFile, because
a transient unit's Environment= property is readable by every local user.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from meshcore.backoff import Backoff
from meshcore.clock import SYSTEM, Clock
from meshcore.errors import FailedPrecondition, InvalidArgument, Unavailable
from meshcore.names import check_label, check_name

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class K3sConfig:
    """How this node runs its K3s agent.

    binary: the k3s executable (found on PATH when not absolute).
    mesh_interface: the WireGuard interface of the mesh; flannel uses it.
    launcher: "exec" (child process) or "systemd" (transient unit via systemd-run);
        "auto" picks systemd when meshagent itself runs under systemd (INVOCATION_ID set).
    unit: name of the transient unit in systemd mode.
    env_file: where the token goes in systemd mode (0600, on tmpfs).
    extra_args: appended verbatim (e.g. "--kubelet-arg=max-pods=50").
    restart_min_s / restart_max_s: backoff between restarts in exec mode; it
        doubles after each quick exit and resets once K3s has run for restart_reset_s.
    stop_timeout_s: SIGTERM, then SIGKILL after this long.
    """

    binary: str = "k3s"
    mesh_interface: str = "mesh0"
    launcher: str = "auto"
    unit: str = "mesh-k3s-agent"
    env_file: Path = Path("/run/meshagent/k3s-agent.env")
    extra_args: tuple[str, ...] = ()
    restart_min_s: float = 1.0
    restart_max_s: float = 30.0
    restart_reset_s: float = 60.0
    stop_timeout_s: float = 10.0


@dataclass(frozen=True)
class K3sJoin:
    """What meshd's K3sJoin returned."""

    server_url: str
    token: str

    @classmethod
    def from_response(cls, response) -> K3sJoin:
        return cls(server_url=response.server_url, token=response.token)


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str] = field(repr=False)  # holds the token: never logged


def _check_server_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidArgument(f"invalid K3s server URL {url!r}: must be https://<main node mesh address>:<port>")
    return url


def build_invocation(node_name: str, mesh_address: str, labels: Mapping[str, str], join: K3sJoin,
                     config: K3sConfig | None = None, base_env: Mapping[str, str] | None = None) -> Invocation:
    """The `k3s agent` command line and environment for this node."""
    config = config or K3sConfig()
    check_name(node_name, "node name")
    try:
        ipaddress.ip_address(mesh_address)
    except ValueError:
        raise InvalidArgument(f"invalid mesh address {mesh_address!r}: must be an IP address") from None
    _check_server_url(join.server_url)
    if not join.token:
        raise FailedPrecondition("meshd returned an empty K3s agent token: is meshd configured with K3s?")
    argv = [config.binary, "agent",
            "--server", join.server_url,
            "--node-ip", mesh_address,
            "--node-name", node_name,
            "--flannel-iface", config.mesh_interface]
    for key in sorted(labels):
        check_label(key, labels[key], "node label")
        argv += ["--node-label", f"{key}={labels[key]}"]
    argv += list(config.extra_args)
    env = dict(os.environ if base_env is None else base_env)
    # K3S_URL and friends from the host environment would override our argv.
    for k in [k for k in env if k.startswith("K3S_")]:
        del env[k]
    env["K3S_TOKEN"] = join.token
    return Invocation(argv, env)


async def fetch_join(channel) -> K3sJoin:
    """Ask meshd for the K3s join facts over the node's mTLS channel."""
    import grpc

    from mesh.v1 import admission_pb2, admission_pb2_grpc

    stub = admission_pb2_grpc.AdmissionServiceStub(channel)
    try:
        response = await stub.K3sJoin(admission_pb2.K3sJoinRequest())
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
            raise FailedPrecondition(f"meshd cannot hand out K3s join facts: {e.details()}") from None
        raise Unavailable(f"K3sJoin failed: {e.code().name}: {e.details()}") from None
    return K3sJoin.from_response(response)


def resolve_launcher(config: K3sConfig, env: Mapping[str, str] | None = None) -> str:
    if config.launcher in ("exec", "systemd"):
        return config.launcher
    if config.launcher != "auto":
        raise InvalidArgument(f"invalid K3s launcher {config.launcher!r}: choose auto, exec or systemd")
    return "systemd" if (os.environ if env is None else env).get("INVOCATION_ID") else "exec"


def systemd_run_argv(inv: Invocation, config: K3sConfig) -> list[str]:
    """systemd-run for a transient K3s agent unit; the token stays in config.env_file."""
    return ["systemd-run", f"--unit={config.unit}", "--collect",
            "--property=Type=notify",  # k3s speaks sd_notify
            "--property=Restart=always", "--property=RestartSec=5s",
            "--property=Delegate=yes", "--property=KillMode=process",
            "--property=LimitNOFILE=1048576",
            f"--property=EnvironmentFile={config.env_file}",
            "--", *inv.argv]


def write_env_file(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"K3S_TOKEN={token}\n")
    os.chmod(path, 0o600)


Runner = Callable[[list[str]], int]


def _run(argv: list[str]) -> int:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and r.stderr.strip():
        log.info("%s: %s", " ".join(argv[:2]), r.stderr.strip())
    return r.returncode


class SystemdK3s:
    """Runs the K3s agent as a transient systemd unit (systemd launcher).

    The unit outlives a restart of meshagent on purpose: restarting the agent
    (an upgrade, a crash) must not bounce every pod on the node. So `start`
    leaves an active unit alone and only refreshes the token file.
    """

    def __init__(self, invocation: Invocation, config: K3sConfig | None = None, run: Runner = _run) -> None:
        self.invocation = invocation
        self.config = config or K3sConfig()
        self._run = run
        self._unit = f"{self.config.unit}.service"

    def start(self) -> bool:
        """Start the unit; False if it was already running."""
        write_env_file(self.config.env_file, self.invocation.env["K3S_TOKEN"])
        if self._run(["systemctl", "is-active", "--quiet", self._unit]) == 0:
            return False
        self._run(["systemctl", "reset-failed", self._unit])  # a failed leftover would block the name
        if self._run(systemd_run_argv(self.invocation, self.config)) != 0:
            raise FailedPrecondition(f"systemd-run could not start {self._unit}; see 'journalctl -u {self._unit}'")
        return True

    def stop(self) -> None:
        self._run(["systemctl", "stop", self._unit])


Sleep = Callable[[float], Awaitable[None]]


class K3sSupervisor:
    """Runs one K3s agent invocation until stopped (exec launcher).

    A K3s agent that exits is restarted after a backoff that doubles from
    restart_min_s up to restart_max_s, and resets after a run of
    restart_reset_s: a crash loop does not spin, a rare crash restarts fast.
    """

    def __init__(self, invocation: Invocation, config: K3sConfig | None = None,
                 sleep: Sleep = asyncio.sleep, clock: Clock = SYSTEM,
                 max_starts: int | None = None) -> None:
        self.invocation = invocation
        self.config = config or K3sConfig()
        self._sleep = sleep
        self._clock = clock
        self._max_starts = max_starts
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self.starts = 0
        self.exit_codes: list[int] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    async def run(self) -> None:
        # No jitter: one K3s per node, nothing to spread out.
        backoff = Backoff(self.config.restart_min_s, self.config.restart_max_s, jitter=0)
        while not self._stopping and (self._max_starts is None or self.starts < self._max_starts):
            started = self._clock.monotonic()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.invocation.argv, env=self.invocation.env,
                    stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
            except OSError as e:
                raise FailedPrecondition(f"cannot start {self.invocation.argv[0]!r}: {e.strerror}; "
                                         "is K3s installed on this node?") from None
            self.starts += 1
            log.info("k3s agent started (pid %d, server %s)", self._proc.pid, self.invocation.argv[3])
            code = await self._proc.wait()
            self.exit_codes.append(code)
            if self._stopping:
                break
            if self._clock.monotonic() - started >= self.config.restart_reset_s:
                backoff.reset()
            delay = backoff.next()
            log.warning("k3s agent exited with code %d; restarting in %.1fs", code, delay)
            await self._sleep(delay)

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(proc.wait(), self.config.stop_timeout_s)
        except asyncio.TimeoutError:
            log.warning("k3s agent ignored SIGTERM for %.0fs: killing it", self.config.stop_timeout_s)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()


class K3sAgent:
    """What `meshagent --k3s` runs: fetch the join facts, build the invocation,
    start it with the launcher that fits, and stop it on shutdown.

    The agent calls `await start(channel)` once it has joined the mesh (it
    needs its mTLS channel and its mesh address) and `await stop()` on exit.
    In systemd mode stop() leaves K3s running: it is its own unit and outlives
    an agent restart; `meshctl k3s leave` stops it.
    """

    def __init__(self, node_name: str, mesh_address: str, labels: Mapping[str, str],
                 config: K3sConfig | None = None, env: Mapping[str, str] | None = None,
                 run: Runner = _run) -> None:
        self.node_name = node_name
        self.mesh_address = mesh_address
        self.labels = dict(labels)
        self.config = config or K3sConfig()
        self._env = env
        self._run = run
        self.launcher = resolve_launcher(self.config, env)
        self._supervisor: K3sSupervisor | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, channel) -> None:
        join = await fetch_join(channel)
        inv = build_invocation(self.node_name, self.mesh_address, self.labels, join, self.config, self._env)
        if self.launcher == "systemd":
            await asyncio.to_thread(SystemdK3s(inv, self.config, self._run).start)
            return
        self._supervisor = K3sSupervisor(inv, self.config)
        self._task = asyncio.get_running_loop().create_task(self._supervisor.run(), name="k3s-agent")

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.stop()
        if self._task is not None:
            try:
                await self._task
            except FailedPrecondition as e:
                log.error("%s", e)
