"""The WireGuard backend this machine supports, made for one interface.

Its own module so that `backend.py` (the interface and the choice) does not
import the implementations that import it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from meshagent.wg.backend import Backend, BackendConfig, Probe, choose, probe
from meshagent.wg.kernel import KernelBackend
from meshagent.wg.userspace import UserspaceBackend


def make_backend(name: str, config: BackendConfig = BackendConfig(), found: Probe | None = None,
                 on_restart: Callable[[], Awaitable[None]] | None = None) -> Backend:
    """The backend this machine supports for interface `name` (see `backend.choose`)."""
    found = found or probe(config.wireguard_go)
    if choose(found, config.prefer) == "kernel":
        return KernelBackend(name, config, on_restart)
    return UserspaceBackend(name, config, on_restart, binary=found.wireguard_go)
