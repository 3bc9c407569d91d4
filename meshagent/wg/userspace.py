"""WireGuard in user space: a supervised `wireguard-go` driven through its UAPI socket.

The agent starts `wireguard-go -f <iface>` in the device's namespace (it
creates the TUN interface there) and watches the process through a pidfd.
If it dies, the supervisor starts it again after `restart_delay_s`, re-applies
the last desired state, and calls `on_restart` so the owner can re-apply
routes (they vanish with the interface).

Recovery: a fresh device has no sessions while its peers still hold the old
ones (they would wait up to 15 s before handshaking again), so when the link
comes up we handshake with every peer we can reach at once. Endpoints learned
from NAT'd peers are remembered in `state_dir` and given to the new device, so
a restarted relay reaches them through their still-open NAT mappings.

Ownership: the UAPI socket directory is shared by every namespace, so an
interface name is unique machine-wide. We record the pid of each
wireguard-go we start in `state_dir`; a restarted agent adopts a live process
it finds there (no churn), and any other holder of the name is an
`AlreadyExists` error rather than something we would overwrite.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from meshcore.errors import AlreadyExists, FailedPrecondition, MeshError, Unavailable
from meshagent.wg import uapi
from meshagent.wg.backend import INSTALL_HINT, Backend
from meshagent.wg.command import Runner
from meshagent.wg.keys import to_hex
from meshagent.wg.link import apply_link, link_state
from meshagent.wg.model import Diff, InterfaceConfig, check_endpoint, check_ifname, diff

log = logging.getLogger(__name__)

_GET = "get=1\n\n"


class UserspaceBackend(Backend):
    kind = "userspace"

    def __init__(self, name, config, on_restart=None, binary: str | None = None) -> None:
        super().__init__(name, config, on_restart)
        self.binary = binary
        self.runner = Runner(config.netns)
        self.restarts = 0  # times the supervisor had to start wireguard-go again
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._pidfd: int | None = None
        self._stopping = False
        self._desired: InterfaceConfig | None = None
        self._restart_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        # Endpoints learned from NAT'd peers (desired endpoint None), kept across restarts.
        self._learned: dict[str, str] = {}

    @property
    def socket(self) -> Path:
        return uapi.socket_path(self.name, self.config.socket_dir)

    @property
    def pidfile(self) -> Path:
        return self.config.state_dir / f"{self.name}.pid"

    @property
    def learned_file(self) -> Path:
        return self.config.state_dir / f"{self.name}.endpoints.json"

    def _remember(self, peers, desired: InterfaceConfig) -> None:
        want = desired.peer_map()
        learned = {p.public_key: p.endpoint for p in peers
                   if p.endpoint and p.public_key in want and want[p.public_key].endpoint is None}
        merged = {k: v for k, v in {**self._learned, **learned}.items() if k in want}
        if merged != self._learned:
            self._learned = merged
            self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.learned_file.write_text(json.dumps(merged))

    async def refresh_learned(self) -> None:
        """Record the endpoints NAT'd peers currently use (also done by every apply and by stop)."""
        if self._desired is not None and await self._answers():
            self._remember(uapi.parse_get(await uapi.request(self.socket, _GET))[2], self._desired)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        check_ifname(self.name)
        self.binary = self.binary or shutil.which(self.config.wireguard_go)
        if not self.binary:
            raise FailedPrecondition(f"cannot start WireGuard: '{self.config.wireguard_go}' is not on PATH; {INSTALL_HINT}")
        self._stopping = False
        try:
            self._learned = {k: check_endpoint(v) for k, v in json.loads(self.learned_file.read_text()).items()}
        except (OSError, ValueError, AttributeError, MeshError):
            self._learned = {}
        pid = self._our_live_pid()
        if pid is not None and await self._answers():
            self.pid = pid
            self._watch()
            return
        if await self._answers():
            raise AlreadyExists(f"interface name '{self.name}' is in use by another WireGuard device: interface "
                                f"names must be unique on the machine ({self.config.socket_dir} is shared by all namespaces)")
        if (await link_state(self.runner, self.name)).exists:
            raise AlreadyExists(f"interface name '{self.name}' is in use by another interface in this namespace: "
                                "choose a name no other interface has")
        await self._spawn()

    async def stop(self) -> None:
        """Stop wireguard-go (its interface goes with it) and forget the pid file."""
        self._stopping = True
        if self._restart_task is not None:
            self._restart_task.cancel()
            self._restart_task = None
        self._unwatch()
        try:
            await self.refresh_learned()
        except Exception:  # stopping must not fail on bookkeeping
            pass
        pid = self.pid
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 3.0
            while _alive(pid, self._proc) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if _alive(pid, self._proc):
                os.kill(pid, signal.SIGKILL)
                while _alive(pid, self._proc) and time.monotonic() < deadline + 2.0:
                    await asyncio.sleep(0.02)
        self.pid, self._proc = None, None
        self.pidfile.unlink(missing_ok=True)
        if not await self._answers():
            self.socket.unlink(missing_ok=True)

    def detach(self) -> None:
        """Stop supervising but leave wireguard-go running, as an agent that exits does.
        A new backend for the same name adopts it."""
        self._stopping = True
        if self._restart_task is not None:
            self._restart_task.cancel()
        self._unwatch()

    async def _spawn(self) -> None:
        if self.socket.exists() and not await self._answers():
            self.socket.unlink(missing_ok=True)  # left by a wireguard-go killed with SIGKILL
        self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        logpath = self.config.state_dir / f"{self.name}.log"
        env = dict(os.environ, LOG_LEVEL="error", WG_PROCESS_FOREGROUND="1")
        with open(logpath, "ab") as logf:
            self._proc = subprocess.Popen(self.runner.argv([self.binary, "-f", self.name]), stdin=subprocess.DEVNULL,
                                          stdout=logf, stderr=logf, env=env, start_new_session=True)
        self.pid = self._proc.pid
        self.pidfile.write_text(f"{self.pid}\n")
        deadline = time.monotonic() + self.config.start_timeout_s
        while not await self._answers():
            if self._proc.poll() is not None:
                tail = logpath.read_text(errors="replace")[-300:].strip()
                raise Unavailable(f"wireguard-go for '{self.name}' exited with {self._proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise Unavailable(f"wireguard-go for '{self.name}' did not open {self.socket} "
                                  f"within {self.config.start_timeout_s} s")
            await asyncio.sleep(0.005)
        self._watch()

    def _our_live_pid(self) -> int | None:
        """The pid in our pid file if that process is still wireguard-go for this name."""
        try:
            pid = int(self.pidfile.read_text().strip())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if self.name.encode() in argv and any(a.endswith(b"wireguard-go") for a in argv):
            return pid
        return None

    async def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            uapi.check_errno(await uapi.request(self.socket, _GET, timeout_s=2.0))
            return True
        except (Unavailable, OSError, asyncio.TimeoutError):
            return False

    def _watch(self) -> None:
        self._unwatch()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._schedule_restart()
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self._exited)

    def _unwatch(self) -> None:
        if self._pidfd is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._pidfd)
            except RuntimeError:
                pass
            os.close(self._pidfd)
            self._pidfd = None

    def _exited(self) -> None:
        self._unwatch()
        if self._proc is not None:
            self._proc.poll()  # reap our child
        if not self._stopping:
            log.warning("wireguard-go for %s exited; restarting", self.name)
            self._schedule_restart()

    def _schedule_restart(self) -> None:
        if self._restart_task is None or self._restart_task.done():
            self._restart_task = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        delay = self.config.restart_delay_s
        while not self._stopping:
            await asyncio.sleep(delay)
            try:
                async with self._lock:
                    await self._spawn()
                    self.restarts += 1
                    if self._desired is not None:
                        await self._apply_locked(self._desired)
                if self.on_restart is not None:
                    await self.on_restart()
                return
            except Exception as e:  # keep supervising: the next attempt may succeed
                log.error("restarting wireguard-go for %s failed: %s", self.name, e)
                delay = min(delay * 2, 5.0)

    # -- state -------------------------------------------------------------

    async def current(self) -> InterfaceConfig | None:
        state = await link_state(self.runner, self.name)
        if not state.exists:
            return None
        private_key, port, peers, _ = uapi.parse_get(await uapi.request(self.socket, _GET))
        return InterfaceConfig(self.name, private_key or "", state.address, port, state.mtu,
                               tuple(sorted(peers, key=lambda p: p.public_key)))

    async def stats(self) -> list[uapi.PeerStats]:
        return uapi.parse_get(await uapi.request(self.socket, _GET))[3]

    async def apply(self, desired: InterfaceConfig) -> Diff:
        desired = desired.validated()
        self._check_name(desired)
        async with self._lock:
            self._desired = desired
            return await self._apply_locked(desired)

    async def _apply_locked(self, desired: InterfaceConfig) -> Diff:
        state = await link_state(self.runner, self.name)
        if not state.exists:
            raise Unavailable(f"interface '{self.name}' does not exist (wireguard-go is not running): start the backend first")
        private_key, port, peers, _ = uapi.parse_get(await uapi.request(self.socket, _GET))
        cur = InterfaceConfig(self.name, private_key or "", state.address, port, state.mtu, tuple(peers))
        d = diff(cur, desired)
        self._remember(peers, desired)
        if {"private_key", "listen_port"} & set(d.interface) or d.added or d.removed or d.changed:
            uapi.check_errno(await uapi.request(self.socket, uapi.encode_set(desired, d, self._learned)))
        link_changed = await apply_link(self.runner, self.name, state, desired.address, desired.mtu)
        if "up" in link_changed:
            await self._kick(desired)
        d.interface = sorted(set(d.interface) | set(link_changed))
        return d

    async def _kick(self, desired: InterfaceConfig) -> None:
        """Handshake now with every peer we can reach, after the device came up.

        A fresh device has no sessions while its peers still hold the old ones;
        they would keep sending on those for up to 15 s before handshaking
        again. wireguard-go sends a keepalive (and so a handshake) to peers
        with persistent keepalive on when the link goes up; for the others,
        switching keepalive on and back off does the same.
        """
        kick = [p for p in desired.peers
                if p.persistent_keepalive == 0 and (p.endpoint or p.public_key in self._learned)]
        if not kick:
            return
        for interval in (1, 0):
            body = "set=1\n" + "".join(f"public_key={to_hex(p.public_key)}\nupdate_only=true\n"
                                       f"persistent_keepalive_interval={interval}\n" for p in kick) + "\n"
            uapi.check_errno(await uapi.request(self.socket, body))


def _alive(pid: int, proc: subprocess.Popen | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of someone else's is dead for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
