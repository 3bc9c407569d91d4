"""meshagent's configuration: one dataclass, defaults documented."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from meshcore.defaults import DNS_ADDRESS, DNS_PORT, MESHD_PORT, WIREGUARD_PORT
from meshcore.errors import ConfigError
from meshcore.metrics import split_hostport


@dataclass
class AgentConfig:
    #: identity (key, certificate, node id) and the services this node exposes
    state_dir: Path = Path("/var/lib/meshagent")
    #: meshd's mTLS API, host:port
    coordinator: str = f"127.0.0.1:{MESHD_PORT}"
    #: meshd's join listener; "" means the coordinator's host and port + 1
    join_address: str = ""
    #: join token, needed only on the first start
    token: str = ""
    #: the file the token came from ("" if none), and whether to delete it once the node has joined
    token_file: str = ""
    remove_token_file: bool = False
    #: the local API for meshctl on this VM
    socket: str = "/run/meshagent/agent.sock"
    #: DNS responder address ("" disables); 127.0.0.77 leaves 127.0.0.53 to systemd-resolved
    dns: str = f"{DNS_ADDRESS}:{DNS_PORT}"
    #: upstream resolvers for other names (None: from /etc/resolv.conf)
    dns_upstreams: tuple[str, ...] | None = None
    #: Prometheus metrics ("" disables)
    metrics: str = "127.0.0.1:9465"
    #: gossip (SWIM) listener, UDP and TCP on one port ("" disables); peers reach it at the mesh address
    gossip: str = "0.0.0.0:7946"
    #: gossip timing profile: lan, wan or local (see meshcore/gossip/profiles.py)
    gossip_profile: str = "lan"
    #: WireGuard interface of the mesh ("" disables the data plane: names only, e.g. on loopback)
    wireguard: str = ""
    #: UDP port WireGuard listens on
    wireguard_port: int = WIREGUARD_PORT
    #: name of the main node, which relays for pairs that cannot reach each other
    hub: str = "main"
    #: tunnel MTU (default: 1420 on a 1500 path; 1280 is the safe choice)
    mtu: int | None = None
    #: join the main node's K3s cluster as a K3s agent (token fetched from meshd over mTLS)
    k3s: bool = False
    #: the k3s executable
    k3s_binary: str = "k3s"
    #: watch EC2 instance metadata for a spot interruption and leave gracefully before it
    spot: bool = True
    #: the clouds' instance metadata endpoint (link-local on AWS, GCP and Azure); "" skips it
    imds: str = "http://169.254.169.254"
    #: bound on each metadata request while discovering facts, seconds
    facts_timeout_s: float = 1.0
    #: how often facts that can change (public address, life cycle) are looked at again, seconds
    facts_refresh_s: float = 60.0
    #: look for GPUs (NVML, else this nvidia-smi)
    gpus: bool = True
    nvidia_smi: str = "nvidia-smi"
    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0].lower())
    #: overrides of discovered facts ("" keeps what was discovered; see meshagent/facts)
    cloud: str = ""
    region: str = ""
    vpc_id: str = ""
    vpc_cidr: str = ""
    private_address: str = ""
    public_address: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    #: reconnect backoff bounds, seconds
    backoff_min_s: float = 0.2
    backoff_max_s: float = 5.0

    def join_target(self) -> tuple[str, int]:
        if self.join_address:
            return split_hostport(self.join_address, "join address")
        host, port = split_hostport(self.coordinator, "coordinator address")
        return host, port + 1

    def validate(self) -> AgentConfig:
        split_hostport(self.coordinator, "coordinator address")
        self.join_target()
        if self.dns:
            split_hostport(self.dns, "DNS address")
        if self.metrics:
            split_hostport(self.metrics, "metrics address")
        if self.gossip:
            split_hostport(self.gossip, "gossip address")
        if self.gossip_profile not in ("lan", "wan", "local"):
            raise ConfigError(f"invalid gossip profile {self.gossip_profile!r}: must be lan, wan or local")
        if not 0 < self.facts_timeout_s <= 10 or self.facts_refresh_s <= 0:
            raise ConfigError("facts timeouts must satisfy 0 < timeout <= 10 s and a positive refresh interval")
        if self.backoff_min_s <= 0 or self.backoff_max_s < self.backoff_min_s:
            raise ConfigError("backoff bounds must satisfy 0 < min <= max")
        return self
