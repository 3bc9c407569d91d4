"""The same version on the laptop and the VMs: a wheel of the running package, kept for one cluster.

When the spec names no package, `cluster create` builds a wheel of the mesh
this machine runs and puts it in a bucket of the user's account made for
the cluster (`mesh-<account>-<hash of the name>-pkg` in the main region):

- encrypted at rest (SSE-S3), every public access blocked;
- tagged with the cluster, like everything else it owns;
- readable only by the cluster's instance roles (the bucket policy grants
  them GetObject, and their own policies name this bucket alone);
- removed, objects and all, by `cluster delete`.

The spec then says `package: s3://<bucket>/<sha256>/<wheel>`, so every
instance, launched now or by a later edit, installs the very same file (the
user data fetches it with the instance role, then `pip install`s it).
`--package` (a wheel URL, a git URL, name==version) still overrides.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.aws import Aws, AwsError
from infra.cluster.instances import cluster_tags
from meshcore.errors import FailedPrecondition

SCHEME = "s3://"
MISSING = ("404", "NoSuchBucket", "NoSuchKey", "NotFound")  # what S3 answers for a bucket or key not there
WheelBuilder = Callable[[Path], Path]  # a directory to write into -> the wheel written there


def bucket_name(account: str, cluster: str) -> str:
    return f"mesh-{account}-{hashlib.sha256(cluster.encode()).hexdigest()[:8]}-pkg"


def object_key(wheel: Path) -> str:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]
    return f"{digest}/{wheel.name}"


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// package URL."""
    bucket, _, key = url.removeprefix(SCHEME).partition("/")
    return bucket, key


def source_root() -> Path | None:
    """The project directory of the running package, when it runs from a checkout."""
    import meshcore

    root = Path(meshcore.__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def build_running(out_dir: Path) -> Path:
    """A wheel of the mesh this process runs (from its checkout), written into `out_dir`."""
    root = source_root()
    if root is None:
        raise FailedPrecondition("this meshctl is not running from a source checkout, so there is no wheel of it "
                                 "to upload: pass --package (a wheel URL, git+https://…/mesh@<tag> or "
                                 "name==version) or set package: in the spec")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "-q", "-w", str(out_dir), str(root)],
                       capture_output=True, text=True, timeout=300)
    wheels = sorted(out_dir.glob("*.whl"))
    if r.returncode != 0 or len(wheels) != 1:
        raise FailedPrecondition(f"building a wheel of {root} failed: {(r.stderr or r.stdout).strip()[-400:]} "
                                 "(or pass --package)")
    return wheels[0]


def plan_url(account: str, cluster: str, wheel: Path) -> str:
    return f"{SCHEME}{bucket_name(account, cluster)}/{object_key(wheel)}"


def publish(aws: Aws, cluster: str, region: str, url: str, wheel: Callable[[], Path], readers: list[str]) -> None:
    """Make the bucket as described above (re-runnable) and upload `wheel()` unless the key is there."""
    bucket, key = parse_url(url)
    if not exists(aws, bucket, region):
        params: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        aws.call("s3", region, "CreateBucket", **params)
    aws.call("s3", region, "PutPublicAccessBlock", Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    aws.call("s3", region, "PutBucketEncryption", Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    aws.call("s3", region, "PutBucketTagging", Bucket=bucket, Tagging={"TagSet": cluster_tags(cluster)})
    aws.call("s3", region, "PutBucketPolicy", Bucket=bucket, Policy=json.dumps(bucket_policy(bucket, readers)))
    try:
        aws.call("s3", region, "HeadObject", Bucket=bucket, Key=key)
    except AwsError as e:
        if e.aws_code not in MISSING:
            raise
        aws.call("s3", region, "PutObject", Bucket=bucket, Key=key, Body=wheel().read_bytes(),
                 ServerSideEncryption="AES256", Tagging=f"mesh:cluster={cluster}")


def bucket_policy(bucket: str, readers: list[str]) -> dict:
    """The cluster's instance roles (`readers`, role ARNs) may get the objects; nobody else is
    granted anything here (the roles' own policies name this bucket alone, and public access is
    blocked), so a role of another cluster or any instance's other credentials cannot read it."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ThisClustersInstancesRead", "Effect": "Allow", "Principal": {"AWS": sorted(readers)},
         "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}]}


def exists(aws: Aws, bucket: str, region: str) -> bool:
    try:
        aws.call("s3", region, "HeadBucket", Bucket=bucket)
    except AwsError as e:
        if e.aws_code in MISSING:
            return False
        raise
    return True


def remove(aws: Aws, account: str, cluster: str, region: str) -> bool:
    """Empty and delete the cluster's package bucket; False when there was none."""
    bucket = bucket_name(account, cluster)
    if not exists(aws, bucket, region):
        return False
    for _ in range(100):  # bounded: a page of 1,000 keys per round
        page = aws.call("s3", region, "ListObjectsV2", Bucket=bucket)
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if not keys:
            break
        aws.call("s3", region, "DeleteObjects", Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    aws.call("s3", region, "DeleteBucket", Bucket=bucket)
    return True


def build_in_temp(builder: WheelBuilder) -> tuple[Path, tempfile.TemporaryDirectory]:
    """Build with `builder` into a fresh directory; the caller keeps the directory alive."""
    tmp = tempfile.TemporaryDirectory(prefix="mesh-wheel-")
    return builder(Path(tmp.name)), tmp


__all__ = ["bucket_name", "build_running", "plan_url", "publish", "remove", "exists", "parse_url", "bucket_policy", "SCHEME"]
