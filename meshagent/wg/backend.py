"""One interface over two WireGuard implementations, and the choice between them.

`Backend` takes the whole desired state (`apply(desired) -> Diff`) and reports
what is there (`current()`); it applies only the difference, so re-applying is
free and a crash mid-apply is repaired by the next apply.

Choice (`choose`): kernel WireGuard when the module is loaded or loadable
(faster, no process to supervise), else `wireguard-go`; neither is a
`FailedPrecondition` naming what to install. `probe()` gathers the facts and
takes PATH and the module directories as arguments so the choice is testable.
`factory.make_backend` builds the backend chosen.
"""

from __future__ import annotations

import abc
import os
import platform
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from meshcore.errors import FailedPrecondition, InvalidArgument
from meshagent.wg.model import Diff, InterfaceConfig
from meshagent.wg.uapi import SOCKET_DIR, PeerStats

INSTALL_HINT = ("install the Debian package 'wireguard-go' (apt-get install wireguard-go wireguard-tools) "
                "or load the kernel module (modprobe wireguard)")


@dataclass(frozen=True)
class BackendConfig:
    """How the agent runs its WireGuard device."""

    # Namespace the device lives in (None: the agent's own). The lab runs one agent per namespace.
    netns: str | None = None
    # "auto" (kernel if available, else wireguard-go), "kernel" or "userspace".
    prefer: str = "auto"
    # wireguard-go binary: a name looked up on PATH, or a path.
    wireguard_go: str = "wireguard-go"
    # Where we keep the pid file of each wireguard-go we run, to adopt it after an agent restart.
    state_dir: Path = Path("/run/meshagent/wg")
    # The UAPI socket directory; fixed by wireguard-go, shared by all namespaces.
    socket_dir: Path = SOCKET_DIR
    # Wait before restarting a dead wireguard-go: long enough not to spin on a
    # crash loop, short enough that tunnels come back within a second.
    restart_delay_s: float = 0.2
    # How long a fresh wireguard-go may take to open its UAPI socket.
    start_timeout_s: float = 5.0


@dataclass(frozen=True)
class Probe:
    """What this machine offers. `wireguard_go` is the resolved path or None."""

    kernel_module: bool
    wireguard_go: str | None


def probe(wireguard_go: str = "wireguard-go", path: str | None = None,
          module_dir: Path = Path("/sys/module/wireguard"), modules_root: Path = Path("/lib/modules"),
          release: str | None = None) -> Probe:
    """Look for the kernel module (loaded, or listed in modules.dep/modules.builtin) and wireguard-go."""
    kernel = module_dir.exists()
    if not kernel:
        base = modules_root / (release or platform.release())
        for index in ("modules.dep", "modules.builtin"):
            try:
                if "/wireguard.ko" in (base / index).read_text():
                    kernel = True
                    break
            except OSError:
                continue
    found = shutil.which(wireguard_go, path=path if path is not None else os.environ.get("PATH", os.defpath))
    return Probe(kernel_module=kernel, wireguard_go=found)


def choose(p: Probe, prefer: str = "auto") -> str:
    """'kernel' or 'userspace' for this probe, or FailedPrecondition saying what to install."""
    if prefer not in ("auto", "kernel", "userspace"):
        raise InvalidArgument(f"invalid WireGuard backend {prefer!r}: choose auto, kernel or userspace")
    if prefer == "kernel":
        if not p.kernel_module:
            raise FailedPrecondition("kernel WireGuard requested but this kernel has no wireguard module: "
                                     "load it (modprobe wireguard) or use the userspace backend")
        return "kernel"
    if prefer == "userspace":
        if not p.wireguard_go:
            raise FailedPrecondition("userspace WireGuard requested but 'wireguard-go' is not on PATH: "
                                     "install the Debian package 'wireguard-go'")
        return "userspace"
    if p.kernel_module:
        return "kernel"
    if p.wireguard_go:
        return "userspace"
    raise FailedPrecondition(f"no WireGuard available: the kernel has no wireguard module and 'wireguard-go' "
                             f"is not on PATH; {INSTALL_HINT}")


class Backend(abc.ABC):
    """A WireGuard device for one interface name, driven by whole desired states."""

    kind: str = ""

    def __init__(self, name: str, config: BackendConfig,
                 on_restart: Callable[[], Awaitable[None]] | None = None) -> None:
        self.name = name
        self.config = config
        # Called after the device had to be recreated, so the owner can re-apply routes
        # (they die with the interface).
        self.on_restart = on_restart

    @abc.abstractmethod
    async def start(self) -> None:
        """Create the device, or adopt the one this agent left running."""

    @abc.abstractmethod
    async def apply(self, desired: InterfaceConfig) -> Diff:
        """Make the device match `desired`; change only the difference; return it."""

    @abc.abstractmethod
    async def current(self) -> InterfaceConfig | None:
        """The device as it is (None: it does not exist)."""

    @abc.abstractmethod
    async def stats(self) -> list[PeerStats]:
        """Per-peer endpoint, handshake and byte counters."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Remove the device."""

    def _check_name(self, desired: InterfaceConfig) -> None:
        if desired.name != self.name:
            raise InvalidArgument(f"desired state is for interface '{desired.name}' but this backend drives "
                                  f"'{self.name}': one backend per interface")
