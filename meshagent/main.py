"""meshagent: the mesh daemon on every VM. `meshagent --help` lists the options."""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC core logs connection churn at INFO

import argparse
import logging
import sys
from pathlib import Path

from meshagent.agent import Agent
from meshagent.config import AgentConfig
from meshcore import daemon, logs
from meshcore.errors import InvalidArgument
from meshcore.jointoken import ARGV_REFUSED, read_token_file
from meshcore.names import parse_labels


def build_parser() -> argparse.ArgumentParser:
    """The command line (also the source of docs/configuration.md)."""
    d = AgentConfig()
    p = argparse.ArgumentParser(prog="meshagent", description="Mesh agent: identity, catalog copy, DNS.")
    p.add_argument("--state-dir", type=Path, default=d.state_dir, help=f"identity and state (default {d.state_dir})")
    p.add_argument("--coordinator", default=os.environ.get("MESH_COORDINATOR", d.coordinator),
                   help="meshd's API as host:port (env MESH_COORDINATOR)")
    p.add_argument("--join-address", default=d.join_address, help="meshd's join listener (default: coordinator port + 1)")
    p.add_argument("--token-file", default="",
                   help="file holding the join token, first start only (or env MESH_JOIN_TOKEN)")
    p.add_argument("--remove-token-file", action="store_true",
                   help="delete the --token-file once this node has joined (a missing file is then no error)")
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)  # refused: see jointoken.ARGV_REFUSED
    p.add_argument("--name", default=d.name, help=f"node name (default: host name, {d.name})")
    p.add_argument("--socket", default=d.socket, help=f"local API socket (default {d.socket})")
    p.add_argument("--dns", default=d.dns, help=f"DNS responder address (default {d.dns}; '' disables)")
    p.add_argument("--dns-upstream", action="append", default=None, help="upstream resolver (repeatable; default: resolv.conf)")
    p.add_argument("--metrics", default=d.metrics, help=f"Prometheus address (default {d.metrics}; '' disables)")
    p.add_argument("--gossip", default=d.gossip, help=f"gossip listener (default {d.gossip}; '' disables)")
    p.add_argument("--gossip-profile", default=d.gossip_profile, choices=["lan", "wan", "local"])
    p.add_argument("--wireguard", default="auto", metavar="IFACE",
                   help="WireGuard interface of the data plane (default: mesh0 where it can run, i.e. as root "
                        "with kernel WireGuard or wireguard-go; '' turns the data plane off)")
    p.add_argument("--wireguard-port", type=int, default=d.wireguard_port)
    p.add_argument("--hub", default=d.hub, help=f"name of the main node, which relays (default {d.hub})")
    p.add_argument("--mtu", type=int, default=None, help="tunnel MTU (default 1420 on a 1500 path)")
    p.add_argument("--k3s", action="store_true", help="join the main node's K3s cluster as an agent")
    p.add_argument("--k3s-binary", default=d.k3s_binary, help=f"k3s executable (default {d.k3s_binary})")
    p.add_argument("--no-spot-watch", action="store_true", help="do not watch EC2 metadata for spot interruptions")
    p.add_argument("--imds", default=d.imds,
                   help=f"cloud instance metadata endpoint, for facts and spot notices (default {d.imds}; '' skips)")
    p.add_argument("--no-gpus", action="store_true", help="do not look for GPUs (NVML, nvidia-smi)")
    o = p.add_argument_group("overrides", "facts are discovered (see `meshctl status`); a flag overrides its fact")
    o.add_argument("--cloud", default="", help="aws, gcp, azure, lambda, onprem, ...")
    o.add_argument("--region", default="")
    o.add_argument("--vpc-id", default="")
    o.add_argument("--vpc-cidr", default="")
    o.add_argument("--private-address", default="")
    o.add_argument("--public-address", default="")
    p.add_argument("--label", action="append", default=[], help="key=value (repeatable), e.g. gpu.model=L4")
    daemon.add_common_arguments(p, "meshagent")
    return p


def parse_args(argv: list[str]) -> AgentConfig:
    d = AgentConfig()
    p = build_parser()
    a = p.parse_args(argv)
    logs.setup(a.log_level, a.log_format, a.name)
    if a.token is not None:
        p.error(f"--token is refused: {ARGV_REFUSED}")
    try:
        labels = parse_labels(a.label)
        if a.token_file and a.remove_token_file and not os.path.exists(a.token_file):
            token = ""  # deleted after the join: the identity in the state directory is used
        else:
            token = read_token_file(a.token_file) if a.token_file else os.environ.get("MESH_JOIN_TOKEN", "")
    except InvalidArgument as e:
        p.error(str(e))
    return AgentConfig(state_dir=a.state_dir, coordinator=a.coordinator, join_address=a.join_address, token=token,
                       token_file=a.token_file, remove_token_file=a.remove_token_file,
                       name=a.name, socket=a.socket, dns=a.dns,
                       dns_upstreams=tuple(a.dns_upstream) if a.dns_upstream else None, metrics=a.metrics,
                       gossip=a.gossip, gossip_profile=a.gossip_profile, k3s=a.k3s, k3s_binary=a.k3s_binary,
                       spot=not a.no_spot_watch, imds=a.imds, gpus=not a.no_gpus,
                       wireguard=wireguard_interface(a.wireguard),
                       wireguard_port=a.wireguard_port, hub=a.hub, mtu=a.mtu,
                       cloud=a.cloud, region=a.region, vpc_id=a.vpc_id, vpc_cidr=a.vpc_cidr,
                       private_address=a.private_address, public_address=a.public_address, labels=labels)


def wireguard_interface(value: str, default: str = "mesh0") -> str:
    """'auto': the data plane runs where it can (root, and kernel WireGuard or wireguard-go)."""
    if value != "auto":
        return value
    from meshagent.wg.backend import probe
    if os.geteuid() != 0:
        logging.getLogger("meshagent").info("data plane off: WireGuard needs root (--wireguard '' says so quietly)")
        return ""
    found = probe()
    if not (found.kernel_module or found.wireguard_go):
        logging.getLogger("meshagent").warning(
            "data plane off: neither kernel WireGuard nor wireguard-go is here (install 'wireguard-go')")
        return ""
    return default


async def run(config: AgentConfig) -> None:
    agent = Agent(config)

    async def start() -> dict[str, object]:
        await agent.start()
        return {"node": agent.identity.name, "address": agent.identity.mesh_address,
                "dns": agent.dns_address or "-", "socket": config.socket}
    await daemon.serve("meshagent", start, agent.stop, health=agent.health_line)


def _few_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates (gRPC's pollers, the executor's workers) its own
    malloc arena, each holding freed memory of its own; an idle agent needs two."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def main(argv: list[str] | None = None) -> int:
    _few_malloc_arenas()
    config = parse_args(sys.argv[1:] if argv is None else argv)
    return daemon.run("meshagent", lambda: run(config))


if __name__ == "__main__":
    sys.exit(main())
