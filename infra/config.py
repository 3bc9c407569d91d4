"""The builder's configuration: one dataclass, read strictly from YAML.

`mesh-infra.yaml` is small and written by hand, so a typo must not be
silently ignored: an unknown key is refused with the key and the valid ones
named. Only shape is checked here (types, names, CIDRs); facts that need the
account (is this instance type real, is this region offered) are checked
when regions are selected.

    name: lmrun                      # tags every resource; RFC 1123 label
    main_region: us-east-1
    instance_types: [g6.xlarge, g6.2xlarge, g6.12xlarge]
    ssh_cidrs: [203.0.113.0/24]
    meshd_address: 10.4.0.4:7443
    ca_cert_file: ca.pem
    join_token_file: join-token
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshcore.defaults import WIREGUARD_PORT
from meshcore.errors import ConfigError, InvalidArgument
from meshcore.names import check_cluster_name

DEFAULT_CONFIG_PATH = "mesh-infra.yaml"

# LMRun's vmAws: one L4 (4 and 8 vCPU) and four L4 (48 vCPU).
DEFAULT_INSTANCE_TYPES = ("g6.xlarge", "g6.2xlarge", "g6.12xlarge")

# LMRun's ROGUE_REGIONS: GPUs offered, but an API the network needs was not
# yet there (ap-southeast-5: VPC gateway attachments, checked 2025-01-31).
ROGUE_REGIONS = ("ap-southeast-5",)

_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d+$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")


@dataclass(frozen=True)
class InfraConfig:
    """Everything `meshctl infra` and `meshctl quotas` need. Defaults are LMRun's."""

    # Mesh name: the value of the `mesh:name` tag on everything created, and
    # the SSM path prefix /mesh/<name>/. Two meshes in one account never mix.
    name: str = "mesh"
    # The hub: gets 10.4.0.0/16, peers with every other region, hosts meshd.
    main_region: str = "us-east-1"
    instance_types: tuple[str, ...] = DEFAULT_INSTANCE_TYPES
    excluded_regions: tuple[str, ...] = ROGUE_REGIONS
    # Opt-in regions are used only when listed here; apply asks AWS to enable
    # the listed ones that are not enabled yet (an account-wide change).
    opt_in_regions: tuple[str, ...] = ()
    # When not empty, only these regions (and the main region) are selected.
    only_regions: tuple[str, ...] = ()
    # SSH is closed to the world unless CIDRs are given.
    ssh_cidrs: tuple[str, ...] = ()
    # WireGuard is authenticated by keys, and NAT'd or other-cloud nodes
    # connect from anywhere, so it is open by default.
    wireguard_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    wireguard_port: int = WIREGUARD_PORT
    # What SkyPilot needs to launch into the network (sky/config.yaml): the
    # instance profiles mesh-<name>-main and mesh-<name>-node, and in the
    # main region a second group, mesh-<name>-main, for the main node only:
    # the mesh group's rules plus meshd's mTLS API and join ports (7443-7444,
    # TLS, token-gated) from `coordinator_cidrs`, so VMs outside AWS join.
    sky: bool = True
    # Nodes on other clouds join from addresses nobody knows in advance.
    coordinator_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    # Instances launched in mesh subnets get a public address (SkyPilot needs
    # one unless it is told to use internal IPs; WireGuard peers outside AWS
    # reach nodes directly through it).
    public_ips: bool = True
    # Regions applied at once: enough to hide latency, few enough to stay
    # under EC2's request-rate limits.
    max_parallel_regions: int = 4
    # Join parameters stored in every region's SSM Parameter Store. Absent
    # values are not stored (the plan says so).
    meshd_address: str | None = None
    ca_cert_file: str | None = None
    join_token_file: str | None = None
    # vCPUs wanted per region for the quotas of the chosen types; None means
    # "enough for one of the largest chosen type" (quotas count vCPUs).
    on_demand_vcpus: int | None = None
    spot_vcpus: int | None = None
    # Seconds between two quota increase requests: many at once get ignored.
    quota_request_interval_s: float = 30.0
    # Throttled calls: attempts and exponential backoff with full jitter.
    max_attempts: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0

    def regions_named(self) -> set[str]:
        return {self.main_region, *self.excluded_regions, *self.opt_in_regions, *self.only_regions}


FIELDS = {f.name: f for f in dataclasses.fields(InfraConfig)}
_TUPLES = {"instance_types", "excluded_regions", "opt_in_regions", "only_regions", "ssh_cidrs", "wireguard_cidrs",
           "coordinator_cidrs"}
_INTS = {"wireguard_port", "max_parallel_regions", "on_demand_vcpus", "spot_vcpus", "max_attempts"}
_BOOLS = {"public_ips", "sky"}
_FLOATS = {"quota_request_interval_s", "backoff_base_s", "backoff_max_s"}


def load_config(path: str | Path) -> InfraConfig:
    """Read and validate a YAML file. A missing file, bad YAML or any broken rule is a ConfigError."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {p} not found: write one (see infra/README.md) or pass --config") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must be a mapping of keys to values")
    cfg = config_from_dict(raw, base_dir=p.parent)
    return cfg


def config_from_dict(raw: dict[str, Any], base_dir: Path | None = None) -> InfraConfig:
    """Build an InfraConfig from plain data, refusing unknown keys and wrong types."""
    unknown = sorted(str(k) for k in raw if k not in FIELDS)
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}: valid keys are {', '.join(FIELDS)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        values[key] = _coerce(key, value)
    for key in ("ca_cert_file", "join_token_file"):
        if values.get(key) and base_dir is not None and not Path(values[key]).is_absolute():
            values[key] = str(base_dir / values[key])
    cfg = InfraConfig(**values)
    validate(cfg)
    return cfg


def _coerce(key: str, value: Any) -> Any:
    if key in _TUPLES:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key {key!r} must be a list of strings")
        return tuple(value)
    if key in _INTS:
        if value is None and FIELDS[key].default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer")
        return value
    if key in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number of seconds")
        return float(value)
    if key in _BOOLS:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false")
        return value
    if value is None and FIELDS[key].default is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"config key {key!r} must be a string")
    return value


def validate(cfg: InfraConfig) -> None:
    """Check the rules that need no AWS call. Raises ConfigError naming the rule."""
    try:
        check_cluster_name(cfg.name, "mesh name")
    except InvalidArgument as e:
        raise ConfigError(str(e).replace("\n", "\\n")) from None
    for r in sorted(cfg.regions_named()):
        if not _REGION.match(r):
            raise ConfigError(f"invalid region {r!r}: a region looks like 'us-east-1'")
    if cfg.main_region in cfg.excluded_regions:
        raise ConfigError(f"main region {cfg.main_region!r} is excluded (excluded_regions): "
                          "the main region needs every API the network uses")
    if not cfg.instance_types:
        raise ConfigError("instance_types must list at least one EC2 instance type")
    for t in cfg.instance_types:
        if not _INSTANCE_TYPE.match(t):
            raise ConfigError(f"invalid instance type {t!r}: an EC2 instance type looks like 'g6.xlarge'")
    for key in ("ssh_cidrs", "wireguard_cidrs", "coordinator_cidrs"):
        for c in getattr(cfg, key):
            try:
                net = ipaddress.ip_network(c, strict=True)
            except ValueError:
                raise ConfigError(f"invalid CIDR {c!r} in {key}: write an IPv4 network like 203.0.113.0/24") from None
            if net.version != 4:
                raise ConfigError(f"invalid CIDR {c!r} in {key}: only IPv4 networks are supported")
    if not 1 <= cfg.wireguard_port <= 65535:
        raise ConfigError(f"invalid wireguard_port {cfg.wireguard_port}: a port must be between 1 and 65535")
    if not 1 <= cfg.max_parallel_regions <= 32:
        raise ConfigError("max_parallel_regions must be between 1 and 32")
    for key in ("on_demand_vcpus", "spot_vcpus"):
        v = getattr(cfg, key)
        if v is not None and v < 0:
            raise ConfigError(f"{key} must be zero or more vCPUs")
    if cfg.max_attempts < 1:
        raise ConfigError("max_attempts must be at least 1")
    if cfg.quota_request_interval_s < 0 or cfg.backoff_base_s < 0 or cfg.backoff_max_s < 0:
        raise ConfigError("durations (quota_request_interval_s, backoff_base_s, backoff_max_s) must not be negative")


def with_changes(cfg: InfraConfig, **changes: Any) -> InfraConfig:
    """A validated copy with some fields replaced (for callers building configs in code)."""
    new = dataclasses.replace(cfg, **changes)
    validate(new)
    return new


__all__ = ["InfraConfig", "load_config", "config_from_dict", "validate", "with_changes",
           "DEFAULT_CONFIG_PATH", "DEFAULT_INSTANCE_TYPES", "ROGUE_REGIONS"]
