"""meshctl's contexts: the clusters this user works with, and which one is current.

Kept in `$MESHCTL_CONFIG_DIR` (default `$XDG_CONFIG_HOME/meshctl`, else
`~/.config/meshctl`), as kubectl keeps kubeconfig contexts:

    contexts.json             {"current": "prod", "clusters": {"prod": {...}}}   0600
    clusters/<name>/          the cluster's CA, admin certificate, join string   0700

A cluster entry holds how to reach its account (role ARN, external id, the
region its document lives in) and its meshd address. `meshctl cluster use`
sets `current`; later commands take the cluster from there, and admin
commands (tokens, nodes) go to that cluster's meshd with its admin
certificate unless MESH_COORDINATOR / MESH_ADMIN_CERT_DIR say otherwise.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from meshcore.errors import ConfigError, FailedPrecondition


def config_dir() -> Path:
    if os.environ.get("MESHCTL_CONFIG_DIR"):
        return Path(os.environ["MESHCTL_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "meshctl"


@dataclass
class ClusterContext:
    id: str
    role_arn: str
    external_id: str
    home_region: str
    coordinator: str = ""


@dataclass
class Contexts:
    current: str | None = None
    clusters: dict[str, ClusterContext] = field(default_factory=dict)

    @staticmethod
    def path() -> Path:
        return config_dir() / "contexts.json"

    @classmethod
    def load(cls) -> Contexts:
        p = cls.path()
        try:
            raw = json.loads(p.read_text())
            clusters = {k: ClusterContext(**v) for k, v in raw.get("clusters", {}).items()}
            return cls(raw.get("current"), clusters)
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise ConfigError(f"{p} is damaged ({e}): fix it or remove it (it only lists known clusters)") from None

    def save(self) -> None:
        from meshcore.pki import write_file  # cryptography: only when writing, not on every meshctl start

        data = {"current": self.current, "clusters": {k: asdict(v) for k, v in sorted(self.clusters.items())}}
        p = self.path()
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_file(p, (json.dumps(data, indent=2) + "\n").encode(), private=True)

    def get(self, name: str | None) -> tuple[str, ClusterContext]:
        """The named cluster, or the current one when `name` is None."""
        name = name or self.current
        if not name:
            raise FailedPrecondition("no cluster given and no current cluster: pass a NAME or run "
                                     "`meshctl cluster use NAME`")
        ctx = self.clusters.get(name)
        if ctx is None:
            known = ", ".join(sorted(self.clusters)) or "none"
            raise FailedPrecondition(f"cluster {name!r} is not known on this machine (known: {known}); "
                                     f"`meshctl cluster use {name} --role-arn … --external-id …` adds one "
                                     "created elsewhere")
        return name, ctx


def cluster_dir(name: str) -> Path:
    return config_dir() / "clusters" / name
