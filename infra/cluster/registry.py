"""Where clusters are recorded: SSM Parameter Store in the account's home region.

One parameter per cluster, `/mesh-clusters/<name>/spec`, holds the cluster
document (id, name, phase, spec) as JSON. Parameter Store keeps every
version of a parameter, so the spec is a versioned document for free:
`edit` diffs against the stored version and writes the next one, and the
history stays readable.

- Names are unique because the first write is `PutParameter` without
  Overwrite: of two creates racing for a name, exactly one succeeds.
- Updates check the version read before writing (Parameter Store has no
  compare-and-swap; the window is one round trip and the write reports the
  version it made, so a lost race is detected and reported).
- Secrets the coordinators read at boot (the CA key, the bootstrap join
  token) live beside it, under `/mesh-clusters/<name>/coordinator/`, in the
  cluster's main region, readable only with the coordinator instance role.
"""

from __future__ import annotations

from infra.aws import Aws, AwsError
from infra.cluster.spec import ClusterDoc
from infra.state import tags
from meshcore.errors import AlreadyExists, Conflict

ROOT = "/mesh-clusters"
DEFAULT_HOME_REGION = "us-east-1"


def spec_key(name: str) -> str:
    return f"{ROOT}/{name}/spec"


def secret_prefix(name: str) -> str:
    return f"{ROOT}/{name}/coordinator/"


class Registry:
    def __init__(self, aws: Aws, region: str = DEFAULT_HOME_REGION) -> None:
        self.aws = aws
        self.region = region

    def get(self, name: str) -> ClusterDoc | None:
        try:
            p = self.aws.call("ssm", self.region, "GetParameter", Name=spec_key(name))["Parameter"]
        except AwsError as e:
            if e.aws_code == "ParameterNotFound":
                return None
            raise
        return ClusterDoc.from_json(p["Value"], int(p.get("Version", 1)))

    def create(self, doc: ClusterDoc) -> ClusterDoc:
        """Record a new cluster; AlreadyExists (naming the holder) if the name is taken."""
        try:
            out = self.aws.call("ssm", self.region, "PutParameter", Name=spec_key(doc.name), Type="String",
                                Value=doc.to_json(), Description=f"mesh cluster {doc.name} ({doc.id})",
                                Tags=tags(doc.name, **{"cluster-id": doc.id}))
        except AwsError as e:
            if e.aws_code != "ParameterAlreadyExists":
                raise
            held = self.get(doc.name)
            if held is not None and held.id == doc.id:
                return held  # our own write, whose answer was lost and retried
            holder = f"cluster {held.id}" if held else "another cluster"
            raise AlreadyExists(f"cluster name {doc.name!r} is taken by {holder} in this account: "
                                "choose another name, or delete that cluster first") from None
        return _with_version(doc, int(out.get("Version", 1)))

    def update(self, doc: ClusterDoc) -> ClusterDoc:
        """Write the next version; Conflict if someone else wrote since `doc.version` was read."""
        current = self.get(doc.name)
        if current is None or current.id != doc.id:
            raise Conflict(f"cluster {doc.name} was deleted or replaced meanwhile; nothing was changed")
        if current.version != doc.version:
            raise Conflict(f"cluster {doc.name} changed meanwhile (version {doc.version} → {current.version}): "
                           "run the command again")
        out = self.aws.call("ssm", self.region, "PutParameter", Name=spec_key(doc.name), Type="String",
                            Value=doc.to_json(), Overwrite=True)
        version = int(out.get("Version", doc.version + 1))
        if version != doc.version + 1:
            raise Conflict(f"cluster {doc.name} was written by someone else at the same time (now version "
                           f"{version}): check `meshctl cluster edit {doc.name}` and run the command again")
        return _with_version(doc, version)

    def history(self, name: str) -> list[ClusterDoc]:
        items = self.aws.paginate("ssm", self.region, "GetParameterHistory", "Parameters", Name=spec_key(name))
        return [ClusterDoc.from_json(p["Value"], int(p["Version"])) for p in items]

    def list(self) -> list[ClusterDoc]:
        params = self.aws.paginate("ssm", self.region, "DescribeParameters", "Parameters",
                                   ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": [ROOT]}])
        names = sorted(p["Name"] for p in params if p["Name"].endswith("/spec"))
        docs = []
        for i in range(0, len(names), 10):  # GetParameters takes ten names at a time
            out = self.aws.call("ssm", self.region, "GetParameters", Names=names[i:i + 10])
            docs += [ClusterDoc.from_json(p["Value"], int(p.get("Version", 1))) for p in out.get("Parameters", [])]
        return sorted(docs, key=lambda d: d.name)

    def delete(self, name: str) -> None:
        try:
            self.aws.call("ssm", self.region, "DeleteParameter", Name=spec_key(name))
        except AwsError as e:
            if e.aws_code != "ParameterNotFound":
                raise


def _with_version(doc: ClusterDoc, version: int) -> ClusterDoc:
    from dataclasses import replace

    return replace(doc, version=version)
