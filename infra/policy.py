"""The least-privilege IAM policies: the builder's (`meshctl infra policy`), the cross-account
cluster role's, and the instance roles' of each cluster.

The actions are exactly the operations `infra` calls (the policy test
records every boto3 operation during the moto tests and checks both ways:
each call is covered, and each action is called), plus the permissions AWS
checks implicitly for some of them (`IMPLIED`).

Every action that changes something is bound to what is ours:

- EC2 and load balancer creates only with our tags in the request
  (`aws:RequestTag/...`: every create carries them in the call itself),
  tags only added by those creates (`ec2:CreateAction`) or to what is
  already ours; every other change only on resources that carry our tags
  (`aws:ResourceTag/...`). The builder's policy is bound to one mesh's
  tags (`mesh:name=<mesh>`), the cluster role's to `managed-by=meshctl`
  (it builds every cluster of the account);
- SSM parameters by path (`/mesh/<mesh>/`, `/mesh/*` and `/mesh-clusters/*`);
- IAM roles by name and, for the per-cluster instance roles the cluster role
  makes, by a permissions boundary (`mesh-instance-boundary`, made by
  `meshctl infra role create`): whatever policy it puts on them, they can
  never do more than read mesh parameters and publish a join token.

Describes cannot be narrowed to resources (EC2 answers them per account),
so they apply to "*"; the AMI a VM boots from is AWS's or its publisher's
and cannot carry our tags (`ec2:RunInstances` only reads it).
"""

from __future__ import annotations

import json

READ = (
    "ec2:DescribeRegions", "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes",
    "ec2:DescribeAvailabilityZones", "ec2:DescribeVpcs", "ec2:DescribeSubnets",
    "ec2:DescribeInternetGateways", "ec2:DescribeRouteTables", "ec2:DescribeSecurityGroups",
    "ec2:DescribeVpcPeeringConnections", "ssm:DescribeParameters",
)
# Creates: the new resource carries our tags in the request (TagSpecifications).
NETWORK_CREATE = (
    "ec2:CreateVpc", "ec2:CreateSubnet", "ec2:CreateInternetGateway", "ec2:CreateRouteTable",
    "ec2:CreateSecurityGroup", "ec2:CreateVpcPeeringConnection",
)
NETWORK = NETWORK_CREATE + (
    "ec2:DeleteVpc", "ec2:ModifySubnetAttribute", "ec2:DeleteSubnet",
    "ec2:AttachInternetGateway", "ec2:DetachInternetGateway",
    "ec2:DeleteInternetGateway", "ec2:DeleteRouteTable",
    "ec2:AssociateRouteTable", "ec2:DisassociateRouteTable", "ec2:CreateRoute", "ec2:ReplaceRoute",
    "ec2:DeleteRoute", "ec2:DeleteSecurityGroup",
    "ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress",
    "ec2:AcceptVpcPeeringConnection", "ec2:DeleteVpcPeeringConnection",
    "ec2:CreateTags",
)
# The resource types those creates make (their ARNs, for the request-tag statement).
CREATED = ("vpc", "subnet", "internet-gateway", "route-table", "security-group", "vpc-peering-connection")
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
CLUSTER_READ = (
    "ec2:DescribeImages", "ec2:DescribeInstances", "ec2:DescribeAddresses",
    # a profile switch's results (infra.cluster.switch)
    "ssm:GetCommandInvocation",
    "elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetHealth",
    # what the cluster and its nodes cost (infra.prices)
    "pricing:GetProducts", "ec2:DescribeSpotPriceHistory",
    # the account, for the ARN of the instance roles' boundary (always allowed by AWS)
    "sts:GetCallerIdentity",
)
CLUSTER_CREATE = ("ec2:RunInstances", "ec2:AllocateAddress")
CLUSTER_CHANGE = ("ec2:TerminateInstances", "ec2:AssociateAddress", "ec2:DisassociateAddress",
                  "ec2:ReleaseAddress")
ELB_CREATE = ("elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup")
ELB_CHANGE = ("elasticloadbalancing:CreateListener", "elasticloadbalancing:RegisterTargets",
              "elasticloadbalancing:ModifyLoadBalancerAttributes",
              "elasticloadbalancing:DeleteLoadBalancer", "elasticloadbalancing:DeleteTargetGroup")
# a profile switch's steps on the coordinators (infra.cluster.switch): only AWS's shell document, only on our instances
RUN_COMMAND = ("ssm:SendCommand",)
RUN_DOCUMENT = "arn:aws:ssm:*::document/AWS-RunShellScript"
CLUSTER = (CLUSTER_READ + CLUSTER_CREATE + CLUSTER_CHANGE + ELB_CREATE + ELB_CHANGE + RUN_COMMAND
           + ("elasticloadbalancing:AddTags",))
CLUSTER_CREATED = ("instance", "volume", "network-interface", "elastic-ip")
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
# The per-cluster instance roles and profiles (`cluster create` makes them, `cluster delete` removes them).
INSTANCE_ROLES_READ = ("iam:GetRole", "iam:GetRolePolicy", "iam:GetInstanceProfile")
INSTANCE_ROLES_CREATE = ("iam:CreateRole",)  # with the boundary and our tags
INSTANCE_ROLES_BOUNDED = ("iam:PutRolePolicy", "iam:DeleteRolePolicy")  # only on roles with the boundary
INSTANCE_ROLES_TAG = ("iam:CreateInstanceProfile", "iam:TagRole", "iam:TagInstanceProfile")  # with our tags
INSTANCE_ROLES_CHANGE = ("iam:DeleteRole", "iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile",
                         "iam:DeleteInstanceProfile")  # only what carries our tags
INSTANCE_ROLES = (INSTANCE_ROLES_READ + INSTANCE_ROLES_CREATE + INSTANCE_ROLES_BOUNDED + INSTANCE_ROLES_TAG
                  + INSTANCE_ROLES_CHANGE + ("iam:PassRole",))
INSTANCE_POLICY = "mesh-parameters"
#: the managed policy every per-cluster instance role is bounded by (made by `meshctl infra role create`)
INSTANCE_BOUNDARY = "mesh-instance-boundary"
# Checked by AWS on top of the call itself: tags given to PutParameter need
# AddTagsToResource; TagSpecifications on EC2 creates need CreateTags.
IMPLIED = {"ssm:PutParameter": ("ssm:AddTagsToResource",), "ec2:CreateVpc": ("ec2:CreateTags",),
           "iam:CreateRole": ("iam:TagRole",), "iam:CreateInstanceProfile": ("iam:TagInstanceProfile",),
           "elasticloadbalancing:CreateTargetGroup": ("elasticloadbalancing:AddTags",),
           "ec2:RunInstances": ("iam:PassRole",),
           "elasticloadbalancing:CreateLoadBalancer": ("elasticloadbalancing:AddTags",)}

TAG_MANAGED, MANAGED_BY, TAG_MESH, TAG_CLUSTER = "managed-by", "meshctl", "mesh:name", "mesh:cluster"


#: statements that change something yet carry no tag condition, and why that is still bound to what is ours
UNTAGGED = {
    "MeshLaunchFromImages": "an AMI is read, never changed, by RunInstances, and is AWS's or its publisher's: "
                            "it cannot carry our tags; the instance, volume, interface, subnet and groups of the "
                            "same call are all tag-bound",
    "MeshAcceptIntoOwnVpc": "a cross-region peering is untagged on the accepter's side until accepted (tags do not "
                            "cross regions); AWS also authorizes the accepter VPC, which must carry our tags",
    "MeshProfileSwitch": "the SSM agent's own channel on a coordinator (AWS's AmazonSSMManagedInstanceCore): it "
                         "registers the instance and receives its commands; Systems Manager names no resource for "
                         "it, and who may send commands is bound (MeshRunCommandOnOwnInstances)",
    "MeshRunCommandDocument": "AWS's own shell document, read by ssm:SendCommand; the instances of the same call "
                              "must carry our tags (MeshRunCommandOnOwnInstances)",
    # the SkyPilot jobs controller's profile (infra.profiles.jobs_controller_document)
    "SkyLaunchFromImages": "as MeshLaunchFromImages",
    "SkyLaunchInterfaces": "SkyPilot does not tag the network interface RunInstances makes; it is made in the same "
                           "call as the tag-bound instance, in a subnet and groups that must be the mesh's",
    "SkySpotServiceRole": "the spot service-linked role, once per account, made by AWS's spot service "
                          "(iam:AWSServiceName); it carries only AWS's own policy",
}


def node_role(cluster: str) -> str:
    """The instance role and profile of a cluster's plain nodes (warm instances, agents)."""
    return f"mesh-{cluster}-node"


def coordinator_role(cluster: str) -> str:
    """The instance role and profile of a cluster's coordinators (meshd, and its replicas)."""
    return f"mesh-{cluster}-coordinator"


# IAM names are at most 64 characters: `mesh-` + cluster + `-coordinator`
MAX_CLUSTER_NAME = 64 - len(coordinator_role(""))


def actions(quotas: bool = False, opt_in: bool = False, sky: bool = True) -> set[str]:
    return (set(READ) | set(NETWORK) | set(PARAMETERS) | (set(QUOTAS) if quotas else set())
            | (set(OPT_IN) if opt_in else set()) | (set(PROFILES) if sky else set()))


def _arns(service: str, types: tuple[str, ...]) -> list[str]:
    return [f"arn:aws:{service}:*:*:{t}/*" for t in types]


def _network(request: dict[str, str], resource: dict[str, str], created: tuple[str, ...] = CREATED,
             changes: tuple[str, ...] = NETWORK) -> list[dict]:
    """The tag-bound EC2 statements: create with our tags, tag only at create (or what is ours),
    change only what carries our tags."""
    creates = tuple(a for a in changes if a in NETWORK_CREATE + CLUSTER_CREATE)
    return [
        {"Sid": "MeshCreateTagged", "Effect": "Allow", "Action": sorted(creates), "Resource": _arns("ec2", created),
         "Condition": {"StringEquals": {f"aws:RequestTag/{k}": v for k, v in request.items()}}},
        {"Sid": "MeshTagOnCreate", "Effect": "Allow", "Action": ["ec2:CreateTags"], "Resource": "*",
         "Condition": {"StringEquals": {"ec2:CreateAction": sorted(a.split(":")[1] for a in creates),
                                        **{f"aws:RequestTag/{k}": v for k, v in request.items()}}}},
        # the accepter's side of a cross-region peering: tags do not cross regions, so it is tagged there
        {"Sid": "MeshTagPeeringAccepter", "Effect": "Allow", "Action": ["ec2:CreateTags"],
         "Resource": "arn:aws:ec2:*:*:vpc-peering-connection/*",
         "Condition": {"StringEquals": {f"aws:RequestTag/{k}": v for k, v in request.items()}}},
        # the accepter's side is untagged until accepted; AWS authorizes the accepter VPC too,
        # and that one must be ours (MeshChangeOwn)
        {"Sid": "MeshAcceptIntoOwnVpc", "Effect": "Allow", "Action": ["ec2:AcceptVpcPeeringConnection"],
         "Resource": "arn:aws:ec2:*:*:vpc-peering-connection/*"},
        {"Sid": "MeshChangeOwn", "Effect": "Allow", "Action": sorted(set(changes)),
         "Resource": "*", "Condition": {"StringEquals": {f"aws:ResourceTag/{k}": v for k, v in resource.items()}}},
    ]


def document(mesh: str, quotas: bool = False, opt_in: bool = False, sky: bool = True) -> dict:
    """The policy JSON for the mesh named `mesh`."""
    ours = {TAG_MESH: mesh, TAG_MANAGED: MANAGED_BY}
    statements = [
        {"Sid": "MeshRead", "Effect": "Allow", "Action": sorted(READ), "Resource": "*"},
        *_network(ours, ours),
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
    return actions(quotas, sky=False) | set(CLUSTER) | set(CLUSTER_PARAMETERS) | set(PACKAGE) | set(INSTANCE_ROLES)


def boundary_arn(account: str = "*") -> str:
    return f"arn:aws:iam::{account}:policy/{INSTANCE_BOUNDARY}"


def instance_role_arns() -> list[str]:
    return [f"arn:aws:iam::*:role/{node_role('*')}", f"arn:aws:iam::*:role/{coordinator_role('*')}"]


def instance_profile_arns() -> list[str]:
    return [f"arn:aws:iam::*:instance-profile/{node_role('*')}",
            f"arn:aws:iam::*:instance-profile/{coordinator_role('*')}"]


def cluster_document(quotas: bool = False, account: str = "*") -> dict:
    """The policy of the cross-account role `meshctl infra role create` makes: every cluster's network,
    instances and documents (paths /mesh/* and /mesh-clusters/*), each cluster's own instance roles
    (bounded by `mesh-instance-boundary` of `account`; "*" when the account is not known yet, as
    `meshctl infra policy --clusters` prints it), and passing only those to EC2."""
    ours = {TAG_MANAGED: MANAGED_BY}
    changes = NETWORK + CLUSTER_CREATE + CLUSTER_CHANGE
    statements = [
        {"Sid": "MeshRead", "Effect": "Allow", "Action": sorted(set(READ) | set(CLUSTER_READ)), "Resource": "*"},
        *_network(ours, ours, CREATED + CLUSTER_CREATED, changes),
        {"Sid": "MeshLaunchFromImages", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": "arn:aws:ec2:*::image/*"},
        {"Sid": "MeshLoadBalancerCreateTagged", "Effect": "Allow", "Action": sorted(ELB_CREATE), "Resource": "*",
         "Condition": {"StringEquals": {f"aws:RequestTag/{TAG_MANAGED}": MANAGED_BY}}},
        {"Sid": "MeshLoadBalancerTagOnCreate", "Effect": "Allow", "Action": ["elasticloadbalancing:AddTags"],
         "Resource": "*", "Condition": {"StringEquals": {
             "elasticloadbalancing:CreateAction": ["CreateLoadBalancer", "CreateTargetGroup"],
             f"aws:RequestTag/{TAG_MANAGED}": MANAGED_BY}}},
        {"Sid": "MeshLoadBalancerChangeOwn", "Effect": "Allow", "Action": sorted(ELB_CHANGE), "Resource": "*",
         "Condition": {"StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": MANAGED_BY}}},
        {"Sid": "MeshParameters", "Effect": "Allow", "Action": sorted(set(PARAMETERS) | set(CLUSTER_PARAMETERS)),
         "Resource": ["arn:aws:ssm:*:*:parameter/mesh/*", "arn:aws:ssm:*:*:parameter/mesh-clusters/*"]},
        {"Sid": "MeshPackageBuckets", "Effect": "Allow", "Action": sorted(PACKAGE), "Resource": PACKAGE_BUCKETS},
        {"Sid": "MeshRunCommandDocument", "Effect": "Allow", "Action": sorted(RUN_COMMAND), "Resource": RUN_DOCUMENT},
        {"Sid": "MeshRunCommandOnOwnInstances", "Effect": "Allow", "Action": sorted(RUN_COMMAND),
         "Resource": "arn:aws:ec2:*:*:instance/*",
         "Condition": {"StringEquals": {f"ssm:resourceTag/{TAG_MANAGED}": MANAGED_BY}}},
        {"Sid": "MeshInstanceRolesRead", "Effect": "Allow", "Action": sorted(INSTANCE_ROLES_READ),
         "Resource": instance_role_arns() + instance_profile_arns()},
        {"Sid": "MeshInstanceRolesCreateBounded", "Effect": "Allow", "Action": sorted(INSTANCE_ROLES_CREATE),
         "Resource": instance_role_arns(),
         "Condition": {"StringLike": {"iam:PermissionsBoundary": boundary_arn(account)},
                       "StringEquals": {f"aws:RequestTag/{TAG_MANAGED}": MANAGED_BY}}},
        {"Sid": "MeshInstanceRolesPolicyBounded", "Effect": "Allow", "Action": sorted(INSTANCE_ROLES_BOUNDED),
         "Resource": instance_role_arns(),
         "Condition": {"StringLike": {"iam:PermissionsBoundary": boundary_arn(account)},
                       "StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": MANAGED_BY}}},
        {"Sid": "MeshInstanceRolesCreateTagged", "Effect": "Allow", "Action": sorted(INSTANCE_ROLES_TAG),
         "Resource": instance_role_arns() + instance_profile_arns(),
         "Condition": {"StringEquals": {f"aws:RequestTag/{TAG_MANAGED}": MANAGED_BY}}},
        {"Sid": "MeshInstanceRolesChangeOwn", "Effect": "Allow", "Action": sorted(INSTANCE_ROLES_CHANGE),
         "Resource": instance_role_arns() + instance_profile_arns(),
         "Condition": {"StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": MANAGED_BY}}},
        # only a cluster's own roles (a mesh built by `infra apply` has roles named alike, without mesh:cluster),
        # only to EC2 (AddRoleToInstanceProfile checks PassRole too, without naming a service)
        {"Sid": "MeshPassInstanceRoles", "Effect": "Allow", "Action": ["iam:PassRole"],
         "Resource": instance_role_arns(),
         "Condition": {"StringEqualsIfExists": {"iam:PassedToService": "ec2.amazonaws.com"},
                       "StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": MANAGED_BY},
                       "Null": {f"aws:ResourceTag/{TAG_CLUSTER}": "false"}}},
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


def instance_document(cluster: str, coordinator: bool) -> dict:
    """What a VM of `cluster` may do: read its cluster's join parameters; coordinators also read their
    secrets, publish the join token meshd rotates (`meshd --publish-join-token`) and take Run Command (a
    profile switch's steps, infra.cluster.switch)."""
    read = [f"arn:aws:ssm:*:*:parameter/mesh/{cluster}/*"]
    if coordinator:
        read.append(f"arn:aws:ssm:*:*:parameter/mesh-clusters/{cluster}/coordinator/*")
    from infra.cluster.package import bucket_name

    statements = [{"Sid": "MeshJoinParameters", "Effect": "Allow", "Action": ["ssm:GetParameter"], "Resource": read},
                  # the cluster's package bucket (infra.cluster.package: mesh-<account>-<hash of the name>-pkg)
                  {"Sid": "MeshPackage", "Effect": "Allow", "Action": ["s3:GetObject"],
                   "Resource": f"arn:aws:s3:::{bucket_name('*', cluster)}/*"}]
    if coordinator:
        statements.append({"Sid": "MeshPublishJoinToken", "Effect": "Allow", "Action": ["ssm:PutParameter"],
                           "Resource": f"arn:aws:ssm:*:*:parameter/mesh/{cluster}/join-token"})
        statements.append({"Sid": "MeshProfileSwitch", "Effect": "Allow", "Action": sorted(MANAGED_INSTANCE),
                           "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": statements}


def boundary_document() -> dict:
    """The most any per-cluster instance role may do, whatever its own policy says."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "MeshReadParameters", "Effect": "Allow", "Action": ["ssm:GetParameter"],
         "Resource": ["arn:aws:ssm:*:*:parameter/mesh/*", "arn:aws:ssm:*:*:parameter/mesh-clusters/*/coordinator/*"]},
        {"Sid": "MeshPublishJoinToken", "Effect": "Allow", "Action": ["ssm:PutParameter"],
         "Resource": "arn:aws:ssm:*:*:parameter/mesh/*/join-token"},
        {"Sid": "MeshPackage", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::mesh-*-pkg/*"},
        {"Sid": "MeshProfileSwitch", "Effect": "Allow", "Action": sorted(MANAGED_INSTANCE), "Resource": "*"}]}


def render(mesh: str, quotas: bool = False, opt_in: bool = False, sky: bool = True) -> str:
    return json.dumps(document(mesh, quotas, opt_in, sky), indent=2)
