"""WireGuard devices as desired state: model, keys, backends (kernel, wireguard-go)."""

from meshagent.wg.backend import Backend, BackendConfig, Probe, choose, make_backend, probe
from meshagent.wg.model import Diff, InterfaceConfig, PeerConfig, diff

__all__ = ["Backend", "BackendConfig", "Diff", "InterfaceConfig", "PeerConfig", "Probe", "choose", "diff",
           "make_backend", "probe"]
