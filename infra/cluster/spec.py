"""A cluster's spec: what the user asked for, as one versioned document.

The spec is the part a user edits (`meshctl cluster create --edit-before-creation`,
`meshctl cluster edit`), shown as YAML with every field present:

    main_region: us-east-1
    regions: []                      # empty: wherever an instance type is offered
    profile: performance             # or cost-savings
    instance_types:
      - name: g6.xlarge
        overprovisioned_ondemand_count: 1
    coordinator_instance_type: m6i.large
    ssh_cidrs: []
    image_owner: '136693071363'      # Debian
    image_name: debian-12-amd64-*
    package: git+https://git.example.com/mesh@v0.1   # where instances pip install the mesh from

Reading is strict, as for mesh-infra.yaml: an unknown key names the valid
ones, and every rule is checked before any AWS call. `to_infra` maps a spec
to the network builder's `InfraConfig`, so a cluster's network is the same
network `meshctl infra apply` builds.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from typing import Any

from infra.config import ROGUE_REGIONS, InfraConfig
from infra.config import validate as validate_infra
from meshcore.errors import ConfigError, InvalidArgument
from meshcore.names import check_cluster_name

PERFORMANCE = "performance"
COST_SAVINGS = "cost-savings"
PROFILES = (PERFORMANCE, COST_SAVINGS)
REPLICAS = {PERFORMANCE: 3, COST_SAVINGS: 1}
# EC2 limits a run to one launch template; warm capacity above this is a typo, not a plan.
MAX_WARM = 64
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")


@dataclass(frozen=True)
class InstanceTypeSpec:
    name: str
    # Instances of this type kept running and joined, so work starts at once
    # (paid for while idle, as Grid warns).
    overprovisioned_ondemand_count: int = 0


@dataclass(frozen=True)
class ClusterSpec:
    main_region: str = "us-east-1"
    regions: tuple[str, ...] = ()
    profile: str = PERFORMANCE
    instance_types: tuple[InstanceTypeSpec, ...] = (InstanceTypeSpec("g6.xlarge"), InstanceTypeSpec("g6.2xlarge"),
                                                    InstanceTypeSpec("g6.12xlarge"))
    coordinator_instance_type: str = "m6i.large"
    ssh_cidrs: tuple[str, ...] = ()
    # The image every instance boots: the newest image of this owner whose
    # name matches (Debian's own account publishes Debian 12).
    image_owner: str = "136693071363"
    image_name: str = "debian-12-amd64-*"
    # What `pip install` gets on each instance: a wheel URL, a git URL of this
    # project, or name==version from your own index. Empty: `create` uploads a
    # wheel of the mesh it runs to a bucket only this cluster's instances read,
    # and stores its s3:// URL here (infra/cluster/package.py).
    package: str = ""

    @property
    def replicas(self) -> int:
        return REPLICAS[self.profile]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["regions"] = list(self.regions)
        d["ssh_cidrs"] = list(self.ssh_cidrs)
        d["instance_types"] = [dataclasses.asdict(t) for t in self.instance_types]
        return d

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def to_infra(self, name: str, **extra: Any) -> InfraConfig:
        """The network builder's config for this cluster (`extra`: join parameters)."""
        cfg = InfraConfig(name=name, main_region=self.main_region,
                          instance_types=tuple(dict.fromkeys(t.name for t in self.instance_types)),
                          excluded_regions=tuple(r for r in ROGUE_REGIONS if r != self.main_region),
                          only_regions=self.regions, ssh_cidrs=self.ssh_cidrs, sky=False, **extra)
        validate_infra(cfg)
        return cfg


FIELDS = [f.name for f in dataclasses.fields(ClusterSpec)]
TYPE_FIELDS = [f.name for f in dataclasses.fields(InstanceTypeSpec)]


def from_dict(raw: Any, where: str = "cluster spec", check: bool = True) -> ClusterSpec:
    """A validated spec from plain data; ConfigError naming the rule otherwise.

    `check=False` checks shape only (for a spec that is about to be edited)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values")
    unknown = sorted(str(k) for k in raw if k not in FIELDS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}: valid keys are {', '.join(FIELDS)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("regions", "ssh_cidrs"):
            if value is None:
                value = []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key} in {where} must be a list of strings")
            values[key] = tuple(value)
        elif key == "instance_types":
            values[key] = tuple(_instance_type(i, where) for i in (value or []))
        else:
            if not isinstance(value, str):
                raise ConfigError(f"{key} in {where} must be a string")
            values[key] = value
    spec = ClusterSpec(**values)
    if check:
        validate(spec)
    return spec


def _instance_type(raw: Any, where: str) -> InstanceTypeSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"each instance_types entry in {where} must be a type name or a mapping with 'name'")
    unknown = sorted(str(k) for k in raw if k not in TYPE_FIELDS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in an instance_types entry: valid keys are "
                          f"{', '.join(TYPE_FIELDS)}")
    name, count = raw.get("name"), raw.get("overprovisioned_ondemand_count", 0)
    if not isinstance(name, str):
        raise ConfigError("an instance_types entry needs a 'name' such as g6.xlarge")
    if isinstance(count, bool) or not isinstance(count, int):
        raise ConfigError(f"overprovisioned_ondemand_count of {name} must be a whole number")
    return InstanceTypeSpec(name, count)


def validate(spec: ClusterSpec) -> None:
    if spec.profile not in PROFILES:
        raise ConfigError(f"invalid profile {spec.profile!r}: one of {', '.join(PROFILES)}")
    if not spec.instance_types:
        raise ConfigError("instance_types must list at least one EC2 instance type")
    seen: set[str] = set()
    for t in spec.instance_types:
        if not _INSTANCE_TYPE.match(t.name):
            raise ConfigError(f"invalid instance type {t.name!r}: an EC2 instance type looks like 'g6.xlarge'")
        if t.name in seen:
            raise ConfigError(f"instance type {t.name} is listed twice")
        seen.add(t.name)
        if not 0 <= t.overprovisioned_ondemand_count <= MAX_WARM:
            raise ConfigError(f"overprovisioned_ondemand_count of {t.name} must be between 0 and {MAX_WARM}")
    if not _INSTANCE_TYPE.match(spec.coordinator_instance_type):
        raise ConfigError(f"invalid coordinator_instance_type {spec.coordinator_instance_type!r}: "
                          "an EC2 instance type looks like 'm6i.large'")
    if not re.match(r"^(\d{12}|self|amazon|aws-marketplace)$", spec.image_owner):
        raise ConfigError(f"invalid image_owner {spec.image_owner!r}: an AWS account id (12 digits), "
                          "'self', 'amazon' or 'aws-marketplace'")
    if not spec.image_name:
        raise ConfigError("image_name must not be empty")
    spec.to_infra("x")  # regions, CIDRs: the network builder's own rules
    if any(c.isspace() or c in "'\"" for c in spec.package):
        raise ConfigError(f"invalid package {spec.package!r}: one pip requirement, without spaces or quotes")


def from_yaml(text: str, where: str = "cluster spec", check: bool = True) -> ClusterSpec:
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"{where} is not valid YAML" + (f" at line {mark.line + 1}" if mark else "")) from None
    return from_dict(raw if raw is not None else {}, where, check)


def diff(old: ClusterSpec, new: ClusterSpec, old_label: str, new_label: str) -> str:
    """A unified diff of the two specs' YAML ('' when equal)."""
    return "".join(difflib.unified_diff(old.to_yaml().splitlines(True), new.to_yaml().splitlines(True),
                                        old_label, new_label))


def check_edit(old: ClusterSpec, new: ClusterSpec) -> None:
    """What cannot change in place: the hub region holds the coordinators and every peering."""
    if new.main_region != old.main_region:
        raise ConfigError(f"main_region cannot change in place ({old.main_region} → {new.main_region}): "
                          "create a new cluster in that region")


@dataclass(frozen=True)
class ClusterDoc:
    """The document stored for a cluster: its identity, its spec and its lifecycle phase."""

    id: str
    name: str
    spec: ClusterSpec
    phase: str = "active"  # active | deleting
    created_at: str = ""
    # The last create/edit/delete that failed, and why; cleared by the next one that succeeds.
    last_error: str = ""
    version: int = 0  # the stored version this was read at (not stored itself)

    def to_json(self) -> str:
        import json

        return json.dumps({"id": self.id, "name": self.name, "phase": self.phase, "created_at": self.created_at,
                           "last_error": self.last_error, "spec": self.spec.to_dict()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, version: int = 0) -> ClusterDoc:
        import json

        try:
            raw = json.loads(text)
            return cls(id=raw["id"], name=check_cluster_name(raw["name"]), spec=from_dict(raw["spec"]),
                       phase=raw.get("phase", "active"), created_at=raw.get("created_at", ""),
                       last_error=raw.get("last_error", ""), version=version)
        except (ValueError, KeyError, TypeError, InvalidArgument) as e:
            raise ConfigError(f"stored cluster document is damaged ({e}): fix or delete it") from None


__all__ = ["ClusterSpec", "InstanceTypeSpec", "ClusterDoc", "from_dict", "from_yaml", "validate", "diff",
           "check_edit", "PERFORMANCE", "COST_SAVINGS", "PROFILES"]
