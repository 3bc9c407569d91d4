"""The least-privilege IAM policy for the builder, printed by `meshctl infra policy`.

The actions are exactly the operations `infra` calls (the policy test
records every boto3 operation during the moto tests and checks both ways:
each call is covered, and each action is called), plus the permissions AWS
checks implicitly for some of them (`IMPLIED`). Join parameters are scoped
to the mesh's own SSM path; EC2 describes and creates cannot be narrowed to
resources that do not exist yet, so they apply to "*".
"""

from __future__ import annotations

import json

READ = (
    "ec2:DescribeRegions", "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes",
    "ec2:DescribeAvailabilityZones", "ec2:DescribeVpcs", "ec2:DescribeSubnets",
    "ec2:DescribeInternetGateways", "ec2:DescribeRouteTables", "ec2:DescribeSecurityGroups",
    "ec2:DescribeVpcPeeringConnections", "ssm:DescribeParameters",
)
NETWORK = (
    "ec2:CreateVpc", "ec2:DeleteVpc", "ec2:CreateSubnet", "ec2:ModifySubnetAttribute", "ec2:DeleteSubnet",
    "ec2:CreateInternetGateway", "ec2:AttachInternetGateway", "ec2:DetachInternetGateway",
    "ec2:DeleteInternetGateway", "ec2:CreateRouteTable", "ec2:DeleteRouteTable",
    "ec2:AssociateRouteTable", "ec2:DisassociateRouteTable", "ec2:CreateRoute", "ec2:ReplaceRoute",
    "ec2:DeleteRoute", "ec2:CreateSecurityGroup", "ec2:DeleteSecurityGroup",
    "ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress",
    "ec2:CreateVpcPeeringConnection", "ec2:AcceptVpcPeeringConnection", "ec2:DeleteVpcPeeringConnection",
    "ec2:CreateTags",
)
# Only when opt_in_regions lists regions to enable.
OPT_IN = ("account:GetRegionOptStatus", "account:EnableRegion")
PARAMETERS = ("ssm:PutParameter", "ssm:DeleteParameter", "ssm:AddTagsToResource")
# The instance profiles SkyPilot launches VMs with (infra.profiles), only
# those named for this mesh.
PROFILES = (
    "iam:GetRole", "iam:GetRolePolicy", "iam:GetInstanceProfile", "iam:CreateRole", "iam:TagRole",
    "iam:PutRolePolicy", "iam:CreateInstanceProfile", "iam:AddRoleToInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile", "iam:DeleteInstanceProfile", "iam:DeleteRolePolicy", "iam:DeleteRole",
)
QUOTAS = (
    "servicequotas:GetServiceQuota", "servicequotas:ListRequestedServiceQuotaChangeHistoryByQuota",
    "servicequotas:RequestServiceQuotaIncrease",
)
# `meshctl cluster …` on top of the network: instances, their stable address,
# the cluster documents, and handing the instance roles to EC2.
CLUSTER = (
    "ec2:DescribeImages", "ec2:DescribeInstances", "ec2:RunInstances", "ec2:TerminateInstances",
    "ec2:AllocateAddress", "ec2:AssociateAddress", "ec2:DescribeAddresses", "ec2:ReleaseAddress",
    "ec2:DisassociateAddress", "elasticloadbalancing:ModifyLoadBalancerAttributes",
    # a profile switch's steps on the coordinators (infra.cluster.switch)
    "ssm:SendCommand", "ssm:GetCommandInvocation",
    "elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup",
    "elasticloadbalancing:CreateListener", "elasticloadbalancing:RegisterTargets",
    "elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:DeleteLoadBalancer", "elasticloadbalancing:DeleteTargetGroup",
    "elasticloadbalancing:AddTags",
    # what the cluster and its nodes cost (infra.prices)
    "pricing:GetProducts", "ec2:DescribeSpotPriceHistory",
)
CLUSTER_PARAMETERS = ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParameterHistory")
# The bucket a cluster's wheel lives in (infra/cluster/package.py), named mesh-<account>-<hash>-pkg.
PACKAGE = (
    "s3:CreateBucket", "s3:DeleteBucket", "s3:ListBucket", "s3:PutBucketPublicAccessBlock",
    "s3:PutEncryptionConfiguration", "s3:PutBucketTagging", "s3:PutBucketPolicy", "s3:GetObject",
    "s3:PutObject", "s3:PutObjectTagging", "s3:DeleteObject",
)
PACKAGE_BUCKETS = ["arn:aws:s3:::mesh-*-pkg", "arn:aws:s3:::mesh-*-pkg/*"]
# S3 operations are authorised under other action names.
S3_ACTIONS = {"s3:HeadBucket": "s3:ListBucket", "s3:ListObjectsV2": "s3:ListBucket", "s3:HeadObject": "s3:GetObject",
              "s3:PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
              "s3:PutBucketEncryption": "s3:PutEncryptionConfiguration", "s3:DeleteObjects": "s3:DeleteObject"}
# The instance roles EC2 is given; created by `meshctl infra role create`.
NODE_ROLE = "mesh-node"
COORDINATOR_ROLE = "mesh-coordinator"
# Checked by AWS on top of the call itself: tags given to PutParameter need
# AddTagsToResource; TagSpecifications on EC2 creates need CreateTags.
IMPLIED = {"ssm:PutParameter": ("ssm:AddTagsToResource",), "ec2:CreateVpc": ("ec2:CreateTags",),
           "iam:CreateRole": ("iam:TagRole",),
           "ec2:RunInstances": ("iam:PassRole",),
           "elasticloadbalancing:CreateLoadBalancer": ("elasticloadbalancing:AddTags",)}


def actions(quotas: bool = False, opt_in: bool = False, sky: bool = True) -> set[str]:
    return (set(READ) | set(NETWORK) | set(PARAMETERS) | (set(QUOTAS) if quotas else set())
            | (set(OPT_IN) if opt_in else set()) | (set(PROFILES) if sky else set()))


def document(mesh: str, quotas: bool = False, opt_in: bool = False, sky: bool = True) -> dict:
    """The policy JSON for the mesh named `mesh`."""
    statements = [
        {"Sid": "MeshRead", "Effect": "Allow", "Action": sorted(READ), "Resource": "*"},
        {"Sid": "MeshNetwork", "Effect": "Allow", "Action": sorted(NETWORK), "Resource": "*"},
        {"Sid": "MeshJoinParameters", "Effect": "Allow", "Action": sorted(PARAMETERS),
         "Resource": f"arn:aws:ssm:*:*:parameter/mesh/{mesh}/*"},
    ]
    if sky:
        statements.append({"Sid": "MeshInstanceProfiles", "Effect": "Allow", "Action": sorted(PROFILES),
                           "Resource": [f"arn:aws:iam::*:role/mesh-{mesh}-*",
                                        f"arn:aws:iam::*:instance-profile/mesh-{mesh}-*"]})
    if quotas:
        statements.append({"Sid": "MeshQuotas", "Effect": "Allow", "Action": sorted(QUOTAS), "Resource": "*"})
    if opt_in:
        statements.append({"Sid": "MeshOptInRegions", "Effect": "Allow", "Action": sorted(OPT_IN), "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": statements}


def cluster_actions(quotas: bool = False) -> set[str]:
    return actions(quotas, sky=False) | set(CLUSTER) | set(CLUSTER_PARAMETERS) | set(PACKAGE) | {"iam:PassRole"}


def cluster_document(quotas: bool = False) -> dict:
    """The policy of the cross-account role `meshctl infra role create` makes: every cluster's network,
    instances and documents (paths /mesh/* and /mesh-clusters/*), and passing only the two mesh roles."""
    statements = [
        {"Sid": "MeshRead", "Effect": "Allow", "Action": sorted(READ), "Resource": "*"},
        {"Sid": "MeshNetwork", "Effect": "Allow", "Action": sorted(NETWORK), "Resource": "*"},
        {"Sid": "MeshInstances", "Effect": "Allow", "Action": sorted(CLUSTER), "Resource": "*"},
        {"Sid": "MeshParameters", "Effect": "Allow", "Action": sorted(set(PARAMETERS) | set(CLUSTER_PARAMETERS)),
         "Resource": ["arn:aws:ssm:*:*:parameter/mesh/*", "arn:aws:ssm:*:*:parameter/mesh-clusters/*"]},
        {"Sid": "MeshPackageBuckets", "Effect": "Allow", "Action": sorted(PACKAGE), "Resource": PACKAGE_BUCKETS},
        {"Sid": "MeshPassInstanceRoles", "Effect": "Allow", "Action": ["iam:PassRole"],
         "Resource": [f"arn:aws:iam::*:role/{NODE_ROLE}", f"arn:aws:iam::*:role/{COORDINATOR_ROLE}"],
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
    ]
    if quotas:
        statements.append({"Sid": "MeshQuotas", "Effect": "Allow", "Action": sorted(QUOTAS), "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": statements}


#: what the SSM agent on a coordinator needs to receive Run Command (as AWS's AmazonSSMManagedInstanceCore)
MANAGED_INSTANCE = (
    "ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel", "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage", "ec2messages:FailMessage", "ec2messages:GetEndpoint", "ec2messages:GetMessages",
    "ec2messages:SendReply",
)


def instance_document(coordinator: bool) -> dict:
    """What a VM's instance role may do: read the join parameters; coordinators also read their secrets
    and take Run Command (a profile switch's steps, infra.cluster.switch)."""
    paths = ["arn:aws:ssm:*:*:parameter/mesh/*"]
    statements = []
    if coordinator:
        paths.append("arn:aws:ssm:*:*:parameter/mesh-clusters/*/coordinator/*")
        statements.append({"Sid": "MeshProfileSwitch", "Effect": "Allow", "Action": sorted(MANAGED_INSTANCE),
                           "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "MeshJoinParameters", "Effect": "Allow", "Action": ["ssm:GetParameter"], "Resource": paths},
        *statements]}


def render(mesh: str, quotas: bool = False, opt_in: bool = False, sky: bool = True) -> str:
    return json.dumps(document(mesh, quotas, opt_in, sky), indent=2)
