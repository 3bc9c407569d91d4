"""The same version on the laptop and the VMs (infra/cluster/package.py), on the moto server.

A spec without `package`: `create` builds a wheel of the running checkout, puts it in a bucket of
the account made for the cluster (encrypted, tagged, public access blocked, readable only by the
cluster's instance roles), and the instances' user data fetches that very file; `delete` removes the
bucket. Every S3 call is one the cluster policy allows, and each S3 action it allows is used.
"""

from __future__ import annotations

import hashlib
import json
import zipfile

import boto3
import pytest
from botocore.exceptions import ClientError

from infra.cluster import instances, package
from infra.cluster.lifecycle import create, delete
from infra.cluster.spec import ClusterSpec, InstanceTypeSpec
from infra.policy import PACKAGE, S3_ACTIONS, cluster_actions
from tests.infra.conftest import TEST_IMAGE, moto_post
from tests.infra.helpers import FEW
from tests.infra.test_policy import Recorder


def test_create_uploads_the_running_wheel_for_this_cluster_only_and_delete_removes_it(cluster_ops, moto, mesh,
                                                                                       tmp_path, iam_enforced) -> None:
    rec = Recorder()
    ops = cluster_ops(on_client=rec)
    built: list = []

    def wheel(out):  # the real builder, watched
        built.append(package.build_running(out))
        return built[-1]
    ops.wheel = wheel
    image = {k: v for k, v in TEST_IMAGE.items() if k != "package"}
    res = create(ops, mesh, ClusterSpec(profile="cost-savings", instance_types=(InstanceTypeSpec(FEW[0], 0),), **image))
    url = res.doc.spec.package
    account = boto3.client("sts", region_name="us-east-1", endpoint_url=moto).get_caller_identity()["Account"]
    bucket, key = package.parse_url(url)
    assert url.startswith("s3://") and bucket == package.bucket_name(account, mesh), url
    assert len(built) == 1 and key.endswith("/" + built[0].name) and built[0].name.startswith("mesh-")

    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto)
    body = ops.aws.call("s3", "us-east-1", "GetObject", Bucket=bucket, Key=key)  # as the cluster role
    data = body["Body"].read()
    assert hashlib.sha256(data).hexdigest()[:16] == key.split("/")[0]
    assert body["ServerSideEncryption"] == "AES256"
    wheel_path = tmp_path / built[0].name
    wheel_path.write_bytes(data)
    with zipfile.ZipFile(wheel_path) as z:  # the checkout this process runs, not some other build
        from pathlib import Path
        import meshcore.jointoken as mine
        assert z.read("meshcore/jointoken.py") == Path(mine.__file__).read_bytes()
    assert s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0][
        "ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    assert tags["mesh:cluster"] == mesh
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    readers = {f"arn:aws:iam::{account}:role/{instances.profile_name(res.doc, r)}" for r in ("agent", "replica")}
    grant = next(st for st in policy["Statement"] if st["Sid"] == "ThisClustersInstancesRead")
    assert (grant["Effect"], grant["Action"], set(grant["Principal"]["AWS"])) == ("Allow", "s3:GetObject", readers)
    assert len(policy["Statement"]) == 1, "the policy grants nothing else"

    # the instance installs that file: its user data fetches the URL with the instance role
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto)
    inst = instances.find(ops.aws, mesh, "us-east-1")[0]
    import base64
    data = ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")["UserData"]["Value"]
    script = base64.b64decode(data).decode()
    assert f"PACKAGE='{url}'" in script and "download_file" in script

    # moto's IAM enforcement: this cluster's node role reads the wheel, another cluster's node role does not
    def session_of(role_name: str, document: dict | None = None):
        iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto)
        if document is not None:
            trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                             "Principal": {"AWS": f"arn:aws:iam::{account}:root"}}]}
            iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(trust))
            iam.put_role_policy(RoleName=role_name, PolicyName="p", PolicyDocument=json.dumps(document))
        creds = boto3.client("sts", region_name="us-east-1", endpoint_url=moto).assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/{role_name}", RoleSessionName="i-0123")["Credentials"]
        return boto3.client("s3", region_name="us-east-1", endpoint_url=moto, aws_access_key_id=creds["AccessKeyId"],
                            aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
    from infra.policy import instance_document, node_role
    mine = session_of(node_role(mesh))
    other = session_of(f"{mesh}-other-node", instance_document(f"{mesh}-other", False))
    iam_enforced()
    try:
        assert mine.get_object(Bucket=bucket, Key=key)["Body"].read() == wheel_path.read_bytes()
        with pytest.raises(ClientError) as e:
            other.get_object(Bucket=bucket, Key=key)
        assert e.value.response["Error"]["Code"] in ("AccessDenied", "403")
    finally:
        moto_post(moto, "/moto-api/reset-auth", b"inf")
    boto3.client("iam", region_name="us-east-1", endpoint_url=moto).delete_role_policy(
        RoleName=f"{mesh}-other-node", PolicyName="p")
    boto3.client("iam", region_name="us-east-1", endpoint_url=moto).delete_role(RoleName=f"{mesh}-other-node")

    # a re-run keeps the package (nothing new built), an edit without one keeps it too
    again = create(ops, mesh, ClusterSpec(profile="cost-savings", instance_types=(InstanceTypeSpec(FEW[0], 0),),
                                          **image), known_id=res.doc.id)
    assert again.doc.spec.package == url and len(built) == 1

    assert delete(ops, mesh).leftovers == []
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    called = {S3_ACTIONS.get(a, a) for a in rec.actions if a.startswith("s3:")}
    assert called <= cluster_actions(), f"S3 calls outside the cluster policy: {sorted(called - cluster_actions())}"
    assert set(PACKAGE) - called <= {"s3:PutObjectTagging", "s3:GetObject"}, sorted(set(PACKAGE) - called)
