"""WireGuard devices as desired state: model, keys, backends (kernel, wireguard-go).

`factory.make_backend` picks and builds a backend; it is not imported here, so that
using the model does not load both implementations.
"""

from meshagent.wg.backend import Backend, BackendConfig, Probe, choose, probe
from meshagent.wg.model import Diff, InterfaceConfig, PeerConfig, diff

__all__ = ["Backend", "BackendConfig", "Diff", "InterfaceConfig", "PeerConfig", "Probe", "choose", "diff",
           "probe"]
